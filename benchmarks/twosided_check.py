"""l2unrank_twosided against l2unrank and retraining: forget_hit@10 and test NDCG@10 per task.

    python benchmarks/twosided_check.py                                  # ml-100k, WMF + NeuMF, 3 tasks
    python benchmarks/twosided_check.py --models WMF --tasks item --seed 101
    python benchmarks/twosided_check.py --dataset tiny --epochs 2       # a smoke test

Each (model, task) trains the original once with the project's config (config/ml-100k.yaml +
config/<model>.yaml; the tiny dataset uses the package presets), draws the request with the
suite's default task settings (config/suite/ml100k.yaml: interaction 10% of users x 20% of
their rows, item 2% of items, user 5% of users; random users), then runs retrain, l2unrank and
l2unrank_twosided on it (run_unrank's Run.run_method, as the suite does). The request seed
defaults to a design seed (101): settings may be chosen on these numbers, never reported as
held out. Writes <out>.json and <out>.md (default benchmarks/results/twosided_check.*).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from recbole_unrank import pipeline  # noqa: E402 (after the sys.path line)
from recbole_unrank.report import write_text  # noqa: E402 (after the sys.path line)
from recbole_unrank.tables import fmt, md_table  # noqa: E402 (after the sys.path line)

#: The suite's default ratio of each task (config/suite/ml100k.yaml).
TASKS = {
    "interaction": {"unrank_request": "interaction", "unrank_user_ratio": 0.1, "unrank_inter_ratio": 0.2},
    "item": {"unrank_request": "item", "unrank_item_ratio": 0.02},
    "user": {"unrank_request": "user", "unrank_user_ratio": 0.05},
}
METHODS = ["retrain", "l2unrank", "l2unrank_twosided"]


def run_cell(dataset: str, model: str, task: str, seed: int, overrides: dict, methods: list[str]) -> dict:
    """Train the original, draw the request, run every method: one result per method."""
    settings = {**TASKS[task], "unrank_request_users": "random", "unrank_request_seed": seed,
                "checkpoint_dir": os.path.join(HERE, "out", "twosided_check", "ckpt"), **overrides}
    if dataset == "ml-100k":
        files = [os.path.join(ROOT, "config", "ml-100k.yaml"), os.path.join(ROOT, "config", f"{model}.yaml")]
    else:  # a dataset under dataset/ (tiny): the package presets
        files = None
        settings.setdefault("data_path", os.path.join(ROOT, "dataset"))
    config = pipeline.build_config(model, dataset, files, settings, argv=[])
    run, _ = pipeline.prepare_run(config)
    run.prepare_original()
    orig = run.rows[0]
    out = {"model": model, "task": task, "seed": seed, "request": run.request.summary(),
           "original": {"time_s": run.original_info["time_s"], "forget_hit@10": orig["forget"]["forget_hit@10"],
                        "ndcg@10": orig["test"]["ndcg@10"]}, "methods": {}}
    for name in methods:
        row = run.run_method(name, save=False)
        out["methods"][name] = {"time_s": row["time_s"], "forget_hit@10": row["forget"]["forget_hit@10"],
                                "ndcg@10": row["test"]["ndcg@10"], "solve": row.get("solve")}
    return out


def report(results: list[dict]) -> str:
    rows = []
    for res in results:
        ret = res["methods"].get("retrain")
        for name, r in [("original", res["original"])] + list(res["methods"].items()):
            vs = (fmt(r["forget_hit@10"] - ret["forget_hit@10"], 3) if ret else "")
            ratio = (fmt(r["ndcg@10"] / max(ret["ndcg@10"], 1e-12), 3) if ret else "")
            speed = (fmt(ret["time_s"] / max(r["time_s"], 1e-9), 0) + "x" if ret and name != "original" else "")
            rows.append([res["model"], res["task"], name, fmt(r["forget_hit@10"], 3), vs, fmt(r["ndcg@10"], 4),
                         ratio, fmt(r["time_s"], 3), speed])
    head = ["model", "task", "method", "forget_hit@10", "- retrain's", "test NDCG@10", "/ retrain's", "time (s)",
            "speed-up"]
    return "\n".join(md_table(head, rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--models", default="WMF,NeuMF")
    p.add_argument("--tasks", default="interaction,item,user")
    p.add_argument("--seed", type=int, default=101, help="request seed (default: design seed 101)")
    p.add_argument("--epochs", type=int, default=None, help="override the training epochs (smoke tests)")
    p.add_argument("--set", action="append", default=[], help="extra key=value config overrides (JSON values)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "twosided_check"))
    a = p.parse_args()
    command = "python benchmarks/twosided_check.py " + " ".join(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    overrides = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    if a.epochs is not None:
        overrides["epochs"] = a.epochs
    results = []
    for model in [m.strip() for m in a.models.split(",") if m.strip()]:
        for task in [t.strip() for t in a.tasks.split(",") if t.strip()]:
            if task not in TASKS:
                raise SystemExit(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
            results.append(run_cell(a.dataset, model, task, a.seed, overrides, METHODS))
    md = (f"# l2unrank_twosided vs l2unrank vs retrain ({a.dataset}, request seed {a.seed})\n\n"
          f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs). Seed {a.seed} is "
          f"{'a design seed: in-sample' if a.seed < 1000 else 'an evaluation seed'}.\n\n{report(results)}\n")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    write_text(a.out + ".json", json.dumps({"command": command, "results": results}, indent=2, default=float) + "\n")
    write_text(a.out + ".md", md)
    print(md)


if __name__ == "__main__":
    main()
