"""Issue 22's targets table from a suite's cells (evaluation seeds only).

    python benchmarks/suite_targets.py benchmarks/results/suite/ml100k-targets [--out FILE.md] [--doc DOC.md]

Reads ``<suite>/cells/*.json``, turns each evaluation request into the record
``benchmarks/twosided_targets.py`` judges (retrain's row of the same request and sitting is the
reference) and writes the targets table (the original first: what doing nothing scores), where each baseline wins or loses against the project's
variant (``l2unrank_twosided``; ``l2unrank`` where the two-sided update is refused), and the
second audit's gaps (LiRA, where the suite ran shadows). Task labels: ``interaction-<ratio>``,
``item``, ``user`` (random users), ``user-core``, ``user-edge``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twosided_targets import methods_of, targets_report  # noqa: E402 (benchmarks/, beside this script)

from recbole_unrank.tables import fmt, md_table  # noqa: E402


def task_label(req: dict) -> str:
    if req["task"] == "interaction":
        return f"interaction-{req['ratio']:g}"
    if req["task"] == "user":
        return "user" if req["users"] == "random" else f"user-{req['users']}"
    return req["task"]


def row_values(row: dict) -> dict:
    audit = row.get("audit") or {}
    return {"forget_hit@10": row["forget"]["forget_hit@10"], "ndcg@10": row["test"]["ndcg@10"],
            "req_ndcg@10": (row.get("request_users") or {}).get("ndcg@10"), "mia_auc": audit.get("mia_auc"),
            "lira_auc": audit.get("lira_auc"), "over_unlearned": audit.get("over_unlearned"),
            "time_s": row.get("time_s")}


#: rows in this order (the project's variant, its ablation, the released procedure, the baselines), then the rest
METHOD_ORDER = ["retrain", "retrain_reseeded", "l2unrank_twosided", "l2unrank", "l2unrank_nocalib", "l2unrank_paper", "l2unrank_released",
                "finetune", "user_refit", "scif", "if"]


def _method_order(name: str) -> tuple:
    base = name.split("[")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), name)


def load_records(folder: str) -> list[dict]:
    """One record per (model, task, seed) of the evaluation split that has a finished retrain."""
    groups: dict = defaultdict(dict)
    originals: dict = {}
    for path in sorted(glob.glob(os.path.join(folder, "cells", "*.json"))):
        with open(path, encoding="utf-8") as f:
            cell = json.load(f)
        req = cell["request"]
        if req.get("split") != "eval":
            continue
        key = (req["model"], task_label(req), req["seed"])
        if cell["status"] == "ok":
            groups[key][cell["label"]] = row_values(cell["row"])
            originals[key] = row_values(cell["original"])
        else:
            groups[key][cell["label"]] = {"error": cell.get("error", "failed").splitlines()[0][:160]}
    records = []
    for (model, task, seed), methods in groups.items():
        if "error" in methods.get("retrain", {"error": 1}):
            continue
        ordered = {k: methods[k] for k in sorted(methods, key=_method_order)}
        records.append({"model": model, "task": task, "seed": seed, "original": originals[(model, task, seed)],
                        "methods": ordered})
    order = {"interaction-0.2": 0, "interaction-0.1": 1, "interaction-0.4": 2, "item": 3, "user": 4,
             "user-core": 5, "user-edge": 6}
    models = {"WMF": 0, "NeuMF": 1, "LightGCN": 2}
    records.sort(key=lambda r: (models.get(r["model"], 9), order.get(r["task"], 9), r["task"], r["seed"]))
    return records


def lira_table(records: list[dict]) -> str | None:
    """Mean |LiRA AUC - retrain's| per model x task x method, where shadows ran."""
    cells = defaultdict(list)
    power = defaultdict(list)
    for res in records:
        ret = res["methods"]["retrain"].get("lira_auc")
        if ret is None:
            continue
        if res["original"].get("lira_auc") is not None:
            power[(res["model"], res["task"])].append(res["original"]["lira_auc"] - ret)
        for name, m in res["methods"].items():
            if name != "retrain" and m.get("lira_auc") is not None:
                cells[(res["model"], res["task"], name)].append(abs(m["lira_auc"] - ret))
    if not cells:
        return None
    rows = [[model, task, name, len(v), fmt(sum(power[(model, task)]) / len(power[(model, task)]), 3, signed=True)
             if power[(model, task)] else "", fmt(sum(v) / len(v), 3)] for (model, task, name), v in cells.items()]
    return "\n".join(md_table(["model", "task", "method", "seeds", "LiRA power (original - retrain)",
                               "abs(LiRA AUC - retrain's)"], rows))


def report(folder: str) -> str:
    records = load_records(folder)
    if not records:
        raise SystemExit(f"{folder}: no finished evaluation request (retrain included) yet")
    parts = [f"Suite: `{folder}`; {len(records)} evaluation requests with a finished retrain.", "",
             targets_report(records, ["original"] + methods_of(records))]
    lira = lira_table(records)
    if lira:
        parts += ["", "The second audit (LiRA, 8 shadows per request; not a target: shown beside the logistic "
                  "audit's MIA):", "", lira, ""]
    return "\n".join(parts)


_BLOCK = re.compile(r"(<!-- suite-targets (\S+) -->\n)(.*?)(<!-- /suite-targets -->)", re.S)
_BLOCK_FOLDERS = re.compile(r"<!-- suite-targets (\S+) -->")


def fill_doc(doc: str, folder: str) -> str:
    """``doc`` with the block ``<!-- suite-targets FOLDER -->`` ... ``<!-- /suite-targets -->``
    naming ``folder`` refilled with its report (so no number in the document is copied by hand)."""
    hits = [m for m in _BLOCK.finditer(doc) if os.path.normpath(m.group(2)) == os.path.normpath(folder)]
    if not hits:
        raise SystemExit(f"no block '<!-- suite-targets {folder} -->' ... '<!-- /suite-targets -->' in the document")
    text = report(folder)
    for m in reversed(hits):
        doc = doc[:m.start(3)] + text.rstrip("\n") + "\n" + doc[m.end(3):]
    return doc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("folder", help="a suite's output folder (with cells/)")
    ap.add_argument("--out", default=None, help="write the markdown here (default: print it)")
    ap.add_argument("--doc", default=None, help="refill this document's '<!-- suite-targets FOLDER -->' block")
    args = ap.parse_args(argv)
    from recbole_unrank.atomic import atomic_text

    if args.doc:
        with open(args.doc, encoding="utf-8") as f:
            doc = f.read()
        atomic_text(args.doc, fill_doc(doc, args.folder))
    if args.out:
        atomic_text(args.out, report(args.folder))
    elif not args.doc:
        print(report(args.folder))


if __name__ == "__main__":
    main()
