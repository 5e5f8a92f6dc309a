"""l2unrank_twosided against l2unrank and retraining: forget_hit@10 and test NDCG@10 per task.

    python benchmarks/twosided_check.py                                  # ml-100k, WMF + NeuMF, 3 tasks
    python benchmarks/twosided_check.py --models WMF --tasks item --seed 101
    python benchmarks/twosided_check.py --dataset tiny --epochs 2       # a smoke test

Each model's original is trained once with the project's config (config/ml-100k.yaml +
config/<model>.yaml; the tiny dataset uses the package presets) and shared by its tasks; each
(model, task) draws the request with the
suite's default task settings (config/suite/ml100k.yaml: interaction 10% of users x 20% of
their rows, item 2% of items, user 5% of users; random users) or issue 22's other tasks
(interaction-0.1 / interaction-0.4: 10% or 40% of the rows; user-core / user-edge: the most / least
active users), then runs retrain, l2unrank and l2unrank_twosided (or --methods) on it
(run_unrank's Run.run_method, as the suite does; a method that fails is a row saying so) and
audits every row (the logistic membership attack fitted on retrain's model; over_unlearned from
the ranks). The report ends with issue 22's targets table (benchmarks/twosided_targets.py). Resumable: one record per finished
cell under --work (benchmarks/out/twosided_check), written atomically. The request seed
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

from twosided_targets import targets_report  # noqa: E402 (benchmarks/, beside this script)

from recbole_unrank import pipeline  # noqa: E402 (after the sys.path line)
from recbole_unrank.checkpoints import save_checkpoint  # noqa: E402 (after the sys.path line)
from recbole_unrank.data import load_data, make_loaders  # noqa: E402 (after the sys.path line)
from recbole_unrank.report import write_text  # noqa: E402 (after the sys.path line)
from recbole_unrank.tables import fmt, md_table  # noqa: E402 (after the sys.path line)
from recbole_unrank.training import train_model  # noqa: E402 (after the sys.path line)

#: The suite's default ratio of each task (config/suite/ml100k.yaml).
#: The old names keep their meaning (results files use them): ``interaction`` is the 0.2 ratio,
#: ``user`` the random users; issue 22's other ratios and user selections are named beside them.
TASKS = {
    "interaction": {"unrank_request": "interaction", "unrank_user_ratio": 0.1, "unrank_inter_ratio": 0.2},
    "interaction-0.1": {"unrank_request": "interaction", "unrank_user_ratio": 0.1, "unrank_inter_ratio": 0.1},
    "interaction-0.4": {"unrank_request": "interaction", "unrank_user_ratio": 0.1, "unrank_inter_ratio": 0.4},
    "item": {"unrank_request": "item", "unrank_item_ratio": 0.02},
    "user": {"unrank_request": "user", "unrank_user_ratio": 0.05},
    "user-core": {"unrank_request": "user", "unrank_user_ratio": 0.05, "unrank_request_users": "core"},
    "user-edge": {"unrank_request": "user", "unrank_user_ratio": 0.05, "unrank_request_users": "edge"},
}
METHODS = ["retrain", "l2unrank", "l2unrank_twosided"]


def _config(dataset: str, model: str, task: str | None, seed: int, overrides: dict, work: str):
    settings = {"checkpoint_dir": os.path.join(work, "saved"), **overrides}
    if task is not None:
        settings.update({"unrank_request_users": "random", **TASKS[task], "unrank_request_seed": seed})
    if dataset == "ml-100k":
        files = [os.path.join(ROOT, "config", "ml-100k.yaml"), os.path.join(ROOT, "config", f"{model}.yaml")]
    else:  # a dataset under dataset/ (tiny): the package presets
        files = None
        settings.setdefault("data_path", os.path.join(ROOT, "dataset"))
    return pipeline.build_config(model, dataset, files, settings, argv=[])


def original_of(dataset: str, model: str, overrides: dict, work: str) -> tuple[str, dict]:
    """The original of ``model`` (the config without a request: every task of a model shares
    it), trained once and kept under ``work`` with its training record."""
    path = os.path.join(work, f"original-{model}-{dataset}.pth")
    info_path = path[:-4] + ".json"
    if os.path.isfile(path) and os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            return path, json.load(f)
    config = _config(dataset, model, None, 0, overrides, work)
    data = load_data(config)
    train, valid, _ = make_loaders(config, data)
    m, info = train_model(config, train, valid, None, tag=f"original {model}")
    save_checkpoint(m, config, path, {"benchmark": "twosided_check original"})
    rec = {"time_s": float(info["time_s"]), "epochs": info.get("epochs")}
    write_text(info_path, json.dumps(rec) + "\n")
    return path, rec


def _measures(row: dict) -> dict:
    audit = row.get("audit") or {}
    return {"time_s": row["time_s"], "forget_hit@10": row["forget"]["forget_hit@10"],
            "ndcg@10": row["test"]["ndcg@10"], "req_ndcg@10": (row.get("request_users") or {}).get("ndcg@10"),
            "mia_auc": audit.get("mia_auc"), "over_unlearned": audit.get("over_unlearned"),
            "under_unlearned": audit.get("under_unlearned"), "solve": row.get("solve")}


def run_cell(dataset: str, model: str, task: str, seed: int, overrides: dict, methods: list[str],
             work: str, variants: list[tuple[str, str, dict]] = ()) -> dict:
    """Load (or train once) the original, draw the request, run every method (retrain first:
    its model fits the membership audit), audit every row: one record per method."""
    path, orig_info = original_of(dataset, model, overrides, work)
    config = _config(dataset, model, task, seed, overrides, work)
    run, ckpt = pipeline.prepare_run(config, path, methods=methods)
    run.prepare_original(ckpt, path)
    failed = {}  # a method that fails is a row that says so; the other methods go on
    for label, name, settings in [(m, m, None) for m in methods] + list(variants):
        try:
            row = run.run_method(name, overrides=settings, save=False, label=label)
        except Exception as e:  # noqa: BLE001 (any failure of one method is reported, not fatal)
            if label == "retrain":
                raise  # retrain's model fits the audit: without it the cell has no reference
            logging.getLogger(__name__).exception("[%s] failed", label)
            failed[label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        row.pop("_model", None)
    run.finish()  # the audit, now that retrain's model has fitted the attack
    res = {"model": model, "task": task, "seed": seed, "request": run.request.summary(),
           "original": {**_measures(run.rows[0]), "time_s": orig_info["time_s"]}, "methods": {}}
    for row in run.rows[1:]:
        res["methods"][row["method"]] = _measures(row)
    res["methods"].update(failed)
    return res


def report(results: list[dict]) -> str:
    rows = []
    for res in results:
        ret = res["methods"].get("retrain")
        for name, r in [("original", res["original"])] + list(res["methods"].items()):
            if "error" in r:
                rows.append([res["model"], res["task"], name, "failed: " + r["error"]] + [""] * 9)
                continue
            vs = (fmt(r["forget_hit@10"] - ret["forget_hit@10"], 3) if ret else "")
            ratio = (fmt(r["ndcg@10"] / max(ret["ndcg@10"], 1e-12), 3) if ret else "")
            req = r.get("req_ndcg@10")
            req_ratio = (fmt(req / max(ret["req_ndcg@10"], 1e-12), 3)
                         if ret and req is not None and ret.get("req_ndcg@10") else "")
            mia = r.get("mia_auc")
            mia_gap = (fmt(mia - ret["mia_auc"], 3) if ret and mia is not None and ret.get("mia_auc") is not None
                       else "")
            speed = (fmt(ret["time_s"] / max(r["time_s"], 1e-9), 0) + "x" if ret and name != "original" else "")
            over = r.get("over_unlearned")
            rows.append([res["model"], res["task"], name, fmt(r["forget_hit@10"], 3), vs, fmt(r["ndcg@10"], 4),
                         ratio, req_ratio, "" if mia is None else fmt(mia, 3), mia_gap,
                         "" if over is None else fmt(over, 3), fmt(r["time_s"], 3), speed])
    head = ["model", "task", "method", "forget_hit@10", "- retrain's", "test NDCG@10", "/ retrain's",
            "req. users NDCG@10 / retrain's", "MIA AUC", "- retrain's", "over-unlearned", "time (s)", "speed-up"]
    return "\n".join(md_table(head, rows)) + "\n\n" + targets_report(results)


def _check_names(methods: list[str], variants: list[tuple[str, str, dict]], tasks: list[str]) -> str | None:
    """Why the run is refused before anything runs (an unknown task, method or variant setting), or None."""
    from recbole_unrank.methods import METHODS as KNOWN

    bad_tasks = [t for t in tasks if t not in TASKS]
    if bad_tasks:
        return f"unknown task(s) {bad_tasks}: choose from {', '.join(TASKS)}"
    unknown = [m for m in methods + [name for _, name, _ in variants] if m not in KNOWN]
    if unknown:
        return f"unknown method(s) {unknown}: choose from {', '.join(sorted(KNOWN))}"
    for label, name, settings in variants:
        extra = sorted(set(settings) - set(KNOWN[name].settings.values()))
        if extra:
            return f"variant {label}: {name} does not take {extra}"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--models", default="WMF,NeuMF")
    p.add_argument("--tasks", default="interaction,item,user")
    p.add_argument("--seed", type=int, default=101, help="request seed (default: design seed 101)")
    p.add_argument("--epochs", type=int, default=None, help="override the training epochs (smoke tests)")
    p.add_argument("--set", action="append", default=[], help="extra key=value config overrides (JSON values)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"methods to run, retrain first (default {','.join(METHODS)})")
    p.add_argument("--variant", action="append", default=[],
                   help="LABEL=METHOD:key=value,key=value (JSON values): one more row, METHOD with these "
                        "settings, on the same request and retrain (repeatable)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "twosided_check"))
    p.add_argument("--work", default=os.path.join(HERE, "out", "twosided_check"),
                   help="originals and one record per finished cell (a rerun skips those cells)")
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
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if methods[:1] != ["retrain"]:
        raise SystemExit("--methods must start with retrain (its model fits the membership audit)")
    variants = []
    for spec in a.variant:
        label, rest = spec.split("=", 1)
        name, _, kvs = rest.partition(":")
        settings = {}
        for kv in filter(None, kvs.split(",")):
            k, v = kv.split("=", 1)
            try:
                settings[k] = json.loads(v)
            except json.JSONDecodeError:
                settings[k] = v
        variants.append((label, name, settings))
    refusal = _check_names(methods, variants, [t.strip() for t in a.tasks.split(",") if t.strip()])
    if refusal:  # one line, exit 2, nothing written
        print(f"twosided_check: {refusal}", file=sys.stderr)
        raise SystemExit(2)
    tag = "" if methods == METHODS else "-" + "+".join(methods[1:])
    if variants:
        tag += "-" + "+".join(label for label, _, _ in variants)
    results = []
    for model in [m.strip() for m in a.models.split(",") if m.strip()]:
        for task in [t.strip() for t in a.tasks.split(",") if t.strip()]:
            if task not in TASKS:
                raise SystemExit(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
            cell = os.path.join(a.work, f"{a.dataset}-{model}-{task}-{a.seed}{tag}.json")
            if os.path.isfile(cell):  # resumable: a finished cell is kept
                with open(cell, encoding="utf-8") as f:
                    results.append(json.load(f))
                continue
            res = run_cell(a.dataset, model, task, a.seed, overrides, methods, a.work, variants)
            write_text(cell, json.dumps(res, indent=1, default=float) + "\n")
            results.append(res)
    md = (f"# {' vs '.join(reversed(methods))} ({a.dataset}, request seed {a.seed})\n\n"
          f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs). Seed {a.seed} is "
          f"{'a design seed: in-sample' if a.seed < 1000 else 'an evaluation seed'}.\n\n{report(results)}\n")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    write_text(a.out + ".json", json.dumps({"command": command, "results": results}, indent=2, default=float) + "\n")
    write_text(a.out + ".md", md)
    print(md)


if __name__ == "__main__":
    main()
