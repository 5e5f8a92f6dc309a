"""Cross-task tables for the README from a suite's ``summary.csv``.

``summary.md`` has one table per (model, task, ratio); this prints, for each task and ratio, one
table of chosen methods with the models side by side, so a reader sees how a method fares as
the request changes. Every number is read from ``summary.csv`` (mean over the evaluation seeds
finished; ``n`` says how many)::

    python benchmarks/suite_tables.py benchmarks/results/suite/ml100k/summary.csv \
        --methods retrain,l2unrank,l2unrank_nocalib,l2unrank_paper,user_refit,scif,if,finetune

Columns: NDCG@10 as a share of the original's, the request users' NDCG@10 as a share
of retrain's, forget_hit@10 (retrain's is the reference), the MIA gap to retrain and the
speed-up over retraining.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict

_TASK = {"interaction": "interaction task", "item": "item task", "user": "user task"}
_VARY = {"interaction": "inter_ratio", "item": "item_ratio", "user": "user_ratio"}


def _num(row: dict | None, key: str) -> float | None:
    if row is None:
        return None
    try:
        v = float(row.get(f"{key}.mean", ""))
    except ValueError:
        return None
    return None if math.isnan(v) else v


def _share(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{100 * a / b:.1f}%"


def _plain(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _times(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}x" if v >= 10 else f"{v:.1f}x"


def cell(rows: dict, method: str) -> list[str] | None:
    """The columns of one method under one model (``rows``: method -> csv row)."""
    r, orig, ret = rows.get(method), rows.get("original"), rows.get("retrain")
    if r is None:
        return None
    return [
        r.get("n", ""),
        _share(_num(r, "test.ndcg@10"), _num(orig, "test.ndcg@10")),
        _share(_num(r, "request_users.ndcg@10"), _num(ret, "request_users.ndcg@10")),
        _plain(_num(r, "forget.forget_hit@10")),
        "-" if method == "retrain" else _plain(_num(r, "audit.mia_gap")),
        "-" if method == "retrain" else _times(_num(r, "speedup")),
    ]


HEAD = ["model", "method", "n", "NDCG@10 (% orig.)", "req. users NDCG@10 (% retrain)",
        "forget_hit@10", "MIA gap", "speed-up"]


def tables(path: str, methods: list[str], users: str = "random") -> str:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["users"] == users]
    by = defaultdict(dict)  # (task, ratio) -> model -> method -> row
    for r in rows:
        by[(r["task"], float(r["ratio"]))].setdefault(r["model"], {})[r["method"]] = r
    order = {"WMF": 0, "NeuMF": 1, "LightGCN": 2}
    out = []
    for (task, ratio) in sorted(by, key=lambda k: (list(_TASK).index(k[0]) if k[0] in _TASK else 9, k[1])):
        per = by[(task, ratio)]
        out.append(f"**{_TASK.get(task, task)}, {_VARY.get(task, 'ratio')} {ratio:g}**\n")
        out.append("| " + " | ".join(HEAD) + " |")
        out.append("|" + "---|" * len(HEAD))
        for model in sorted(per, key=lambda m: order.get(m, 9)):
            for meth in methods:
                c = cell(per[model], meth)
                if c is not None:
                    out.append("| " + " | ".join([model, meth] + c) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summary_csv")
    ap.add_argument("--methods", default="retrain,l2unrank,l2unrank_nocalib,l2unrank_paper,user_refit,scif,if,finetune")
    ap.add_argument("--users", default="random")
    a = ap.parse_args(argv)
    sys.stdout.write(tables(a.summary_csv, [m for m in a.methods.split(",") if m], a.users))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
