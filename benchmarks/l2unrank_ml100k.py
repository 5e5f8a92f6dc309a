"""L2UnRank against retraining on ml-100k, per model, measured in one run.

    python benchmarks/l2unrank_ml100k.py                       # WMF, NeuMF, LightGCN
    python benchmarks/l2unrank_ml100k.py --models LightGCN --ablations

For each model: train the original with the project's default config (config/ml-100k.yaml +
config/<model>.yaml: RecBole's learning rate, early stopping on validation), draw the paper's
interaction request (10% of users, 20% of their train interactions, seed 2020), then run
L2UnRank (project defaults), the paper's preset, optional ablations, and retraining, all on the
same request. The project's defaults were chosen on this request, so it is a *design* request
and these numbers are in-sample: held-out numbers (evaluation request seeds, mean +- std) come
from the suite (python run_unrank_suite.py --config_files config/suite/ml100k.yaml). Writes
benchmarks/results/l2unrank_ml100k.{md,json} with the three checks of the first L2UnRank issue: forget_hit@10 <= retrain's, test NDCG@10 >= 97% of the original's, time <= 1/50
of retrain's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import recbole_unrank  # noqa: E402,F401
from recbole_unrank import pipeline  # noqa: E402
from recbole_unrank.methods.l2unrank import VARIANTS  # noqa: E402
from recbole_unrank.report import write_text  # noqa: E402
from recbole_unrank.tables import fmt, md_table  # noqa: E402

ABLATIONS = [name for name in VARIANTS if name not in ("l2unrank", "l2unrank_paper")]


def run_model(model: str, methods: list[str], overrides: dict, save_original: str | None = None,
              originals: str | None = None) -> dict:
    files = [os.path.join(ROOT, "config", "ml-100k.yaml"), os.path.join(ROOT, "config", f"{model}.yaml")]
    config = pipeline.build_config(model, "ml-100k", files, {"checkpoint_dir": os.path.join(HERE, "out", "ckpt"), **overrides})
    ckpt_path = os.path.join(originals, f"{model}-ml-100k.pth") if originals else None
    if ckpt_path and not os.path.isfile(ckpt_path):
        ckpt_path = None
    run, ckpt = pipeline.prepare_run(config, ckpt_path)
    run.prepare_original(ckpt, ckpt_path)
    if ckpt is not None:  # training facts of the run that trained it
        run.original_info.update(ckpt.get("unrank", {}).get("original", {}))
    if save_original:  # reusable by run_unrank.py --checkpoint (same config, same split)
        os.makedirs(save_original, exist_ok=True)
        info = {k: v for k, v in run.original_info.items() if k in ("epochs", "time_s")}
        pipeline.save_checkpoint(run.original, config, os.path.join(save_original, f"{model}-ml-100k.pth"),
                                 {"original": info})
    rows = {}
    for name in methods:
        row = run.run_method(name, save=False)
        rows[name] = {k: v for k, v in row.items() if k not in ("ranks", "_model")}
    orig = {k: v for k, v in run.rows[0].items() if k not in ("ranks", "_model")}
    return {"model": model, "request": run.request.summary(), "original": orig,
            "original_epochs": run.original_info["epochs"], "original_train_s": run.original_info["time_s"],
            "rows": rows}


def checks(result: dict) -> dict:
    rows, orig = result["rows"], result["original"]
    ret, l2 = rows.get("retrain"), rows.get("l2unrank")
    if not (ret and l2):
        return {}
    return {
        "forget_hit@10 <= retrain": l2["forget"]["forget_hit@10"] <= ret["forget"]["forget_hit@10"],
        "ndcg@10 >= 97% original": l2["test"]["ndcg@10"] >= 0.97 * orig["test"]["ndcg@10"],
        "time <= retrain/50": l2["time_s"] <= ret["time_s"] / 50,
        "speed-up": ret["time_s"] / max(l2["time_s"], 1e-9),
        "ndcg ratio": l2["test"]["ndcg@10"] / max(orig["test"]["ndcg@10"], 1e-12),
    }


def table(result: dict) -> str:
    def row(name, r):
        t, f = r["test"], r["forget"]
        return [name, fmt(r["time_s"], 3), t["ndcg@10"], t["recall@10"], t["ndcg@20"], f["forget_hit@10"],
                f["forget_hit@20"], fmt(f["mean_rank"], 1), fmt(f.get("rdr"), 1), fmt(f.get("urr"), 3)]

    rows = [row("original", result["original"])] + [row(name, r) for name, r in result["rows"].items()]
    return "\n".join(md_table(["method", "time (s)", "NDCG@10", "Recall@10", "NDCG@20", "forget_hit@10",
                               "forget_hit@20", "mean rank", "RDR", "URR"], rows))


def write_report(out: str) -> str:
    """Merge every per-model result present into one Markdown report."""
    import glob

    results = []
    for path in sorted(glob.glob(out + "_*.json")):
        with open(path, encoding="utf-8") as f:
            results.append(json.load(f))
    md = ["# L2UnRank vs retraining on ml-100k\n",
          "Produced by `python benchmarks/l2unrank_ml100k.py --models <model> [--ablations]`, one model per run "
          "(each section names its command, machine load and date). Interaction request: 10% of users, 20% of "
          "their train interactions, seed 2020. **In-sample**: the project's defaults were chosen on this request, so "
          "it is a design request; held-out numbers (evaluation request seeds) are in "
          "`benchmarks/results/suite/ml100k/summary.md`. Times are wall-clock seconds measured in the same process.\n"]
    for res in results:
        req = res["request"]
        md.append(f"## {res['model']}\n")
        md.append(f"Command: `{res['command']}` ({res['when']}, load average {res['load']:.1f} on {res['cpus']} CPUs, "
                  f"{res.get('threads', '?')} torch thread(s)).  ")
        trained = (f"{res['original_epochs']} epochs, {res['original_train_s']:.1f} s" if res["original_epochs"]
                   else "loaded from a checkpoint saved by an earlier run (--originals)")
        md.append(f"Request: {req['pairs']} pairs of {req['users']} users. Original: {trained}. "
                  f"Retrain: {res['rows']['retrain'].get('epochs')} epochs, {res['rows']['retrain']['time_s']:.1f} s.\n")
        md.append(table(res) + "\n")
        c = res["checks"]
        if c:
            md.append(f"Checks: forget_hit@10 <= retrain: **{c['forget_hit@10 <= retrain']}**; "
                      f"NDCG@10 >= 97% of original: **{c['ndcg@10 >= 97% original']}** ({100 * c['ndcg ratio']:.1f}%); "
                      f"time <= retrain/50: **{c['time <= retrain/50']}** (speed-up {c['speed-up']:.0f}x).\n")
    write_text(out + ".md", "\n".join(md) + "\n")
    return "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="WMF,NeuMF,LightGCN")
    p.add_argument("--ablations", action="store_true", help="also run the ablation variants")
    p.add_argument("--out", default=os.path.join(HERE, "results", "l2unrank_ml100k"))
    p.add_argument("--set", action="append", default=[], help="extra key=value config overrides")
    p.add_argument("--report_only", action="store_true", help="only merge existing per-model results")
    p.add_argument("--save_original", default=None, help="folder to save each original model's checkpoint in")
    p.add_argument("--originals", default=None,
                   help="folder of <model>-ml-100k.pth originals to start from (as saved by --save_original)")
    a = p.parse_args()
    command = "python benchmarks/l2unrank_ml100k.py " + " ".join(sys.argv[1:])
    sys.argv = sys.argv[:1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    overrides = dict(kv.split("=", 1) for kv in a.set)
    overrides = {k: json.loads(v) if v[:1] in "[{0123456789-tfn" else v for k, v in overrides.items()}
    methods = ["l2unrank", "l2unrank_paper"] + (ABLATIONS if a.ablations else []) + ["retrain"]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    if not a.report_only:
        for model in a.models.split(","):
            res = run_model(model.strip(), methods, overrides, a.save_original, a.originals)
            res["checks"] = checks(res)
            res.update(command=command, when=time.strftime("%Y-%m-%d %H:%M"), load=os.getloadavg()[0],
                       cpus=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads())
            write_text(f"{a.out}_{model.strip()}.json", json.dumps(res, indent=2, default=float) + "\n")
    print(write_report(a.out))
    print(a.out + ".md")


if __name__ == "__main__":
    main()
