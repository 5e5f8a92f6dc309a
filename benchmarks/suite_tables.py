"""The result tables of ``docs/results.md`` (and the README's sample), rebuilt from a suite's
``summary.md`` / ``summary.csv``.

Two kinds of table, each between a pair of markers in a document, so that rerunning this
script after the suite refreshes every number and nothing is copied by hand::

    <!-- suite-table headline model=WMF task=interaction ratio=0.2 methods=original,retrain,l2unrank -->
    ... (rows of summary.md's headline section for that model, task and ratio) ...
    <!-- /suite-table -->

    <!-- suite-table tasks task=item ratio=0.02 methods=retrain,l2unrank,scif -->
    ... (the models side by side for one task and ratio, from summary.csv) ...
    <!-- /suite-table -->

``tasks`` columns: NDCG@10 as a share of the original's, the request users' NDCG@10 and
forget_hit@10 (retrain's row is the reference for both), the MIA gap to retrain, the speed-up
over retraining and how many of the requests' solves converged (each a mean over the
evaluation seeds finished; ``n`` says how many).

    python benchmarks/suite_tables.py benchmarks/results/suite/ml100k   # docs/results.md and README.md
    python benchmarks/suite_tables.py benchmarks/results/suite/ml100k --doc docs/results.md
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re

from recbole_unrank.tables import fmt, md_table

_TASK = {"interaction": "interaction task", "item": "item task", "user": "user task"}
_VARY = {"interaction": "inter_ratio", "item": "item_ratio", "user": "user_ratio"}
_BLOCK = re.compile(r"(<!-- suite-table (\w+)((?: [\w.]+=[^ ]+)*) -->\n)(.*?)(<!-- /suite-table -->)", re.S)
_ORDER = {"WMF": 0, "NeuMF": 1, "LightGCN": 2}


# ------------------------------------------------------------------ summary.md headline tables
def headline_tables(summary_md: str) -> dict[tuple, tuple[list[str], dict[str, str]]]:
    """(model, task, ratio) -> (the table's two header lines, {method: row line}) from the
    first ("Headline measures") section of summary.md."""
    text = summary_md.split("\n# All measures", 1)[0]
    out = {}
    for m in re.finditer(r"^## (\w+): (\w+) task, \w+ ([\d.]+), \w+ users\n\n((?:\|.*\n)+)", text, re.M):
        lines = m.group(4).rstrip("\n").split("\n")
        rows = {ln.split("|")[1].strip(): ln for ln in lines[2:]}
        out[(m.group(1), m.group(2), float(m.group(3)))] = (lines[:2], rows)
    return out


def headline(tables: dict, model: str, task: str, ratio: float, methods: list[str]) -> str:
    key = (model, task, ratio)
    if key not in tables:
        return f"(no finished cell of {model} on the {task} task at {ratio:g} yet)\n"
    head, rows = tables[key]
    return "\n".join(head + [rows[m] for m in methods if m in rows]) + "\n"


# ------------------------------------------------------------------ summary.csv cross-model tables
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




def _times(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}x" if v >= 10 else f"{v:.1f}x"


def _solved(row: dict) -> str:
    c, n = _num(row, "solve.converged"), row.get("solve.n")
    if c is None or not n:
        return "-"
    n = int(float(n))
    return f"{round(c * n)}/{n}"


HEAD = ["model", "method", "n", "NDCG@10 (% orig.)", "req. users NDCG@10",
        "forget_hit@10", "MIA gap", "speed-up", "solved"]


def task_table(rows: list[dict], task: str, ratio: float, methods: list[str], users: str = "random") -> str:
    per: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["task"] == task and float(r["ratio"]) == ratio and r["users"] == users:
            per.setdefault(r["model"], {})[r["method"]] = r
    if not per:
        return f"(no finished cell on the {task} task at {ratio:g} yet)\n"
    table = []
    for model in sorted(per, key=lambda m: _ORDER.get(m, 9)):
        got, orig = per[model], per[model].get("original")
        for meth in methods:
            r = got.get(meth)
            if r is None:
                continue
            cells = [model, meth, r.get("n", ""),
                     _share(_num(r, "test.ndcg@10"), _num(orig, "test.ndcg@10")),
                     fmt(_num(r, "request_users.ndcg@10"), 3),
                     fmt(_num(r, "forget.forget_hit@10"), 3),
                     "-" if meth == "retrain" else fmt(_num(r, "audit.mia_gap"), 3),
                     "-" if meth == "retrain" else _times(_num(r, "speedup")),
                     _solved(r)]
            table.append(cells)
    return "\n".join(md_table(HEAD, table)) + "\n"


# ------------------------------------------------------------------ the documents
def refresh(readme: str, suite_dir: str) -> tuple[str, int]:
    """The document's text with every marked block rebuilt; and how many blocks there were."""
    with open(os.path.join(suite_dir, "summary.md"), encoding="utf-8") as f:
        tables = headline_tables(f.read())
    with open(os.path.join(suite_dir, "summary.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    count = 0

    def one(m: re.Match) -> str:
        nonlocal count
        count += 1
        kind = m.group(2)
        args = dict(a.split("=", 1) for a in m.group(3).split())
        methods = args.get("methods", "").split(",")
        ratio = float(args["ratio"])
        if kind == "headline":
            body = headline(tables, args["model"], args["task"], ratio, methods)
        elif kind == "tasks":
            body = task_table(rows, args["task"], ratio, methods, args.get("users", "random"))
        else:
            raise SystemExit(f"suite_tables: unknown table kind '{kind}' in the document (use headline or tasks)")
        return m.group(1) + body + m.group(5)

    return _BLOCK.sub(one, readme), count


#: The documents holding marked tables, refreshed by default (from the repository root).
DOCS = ("docs/results.md", "README.md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Rebuild the suite tables of docs/results.md (and the README's "
                                             "sample) from summary.md / summary.csv.")
    ap.add_argument("suite_dir", help="the suite's output folder (holds summary.md and summary.csv)")
    ap.add_argument("--doc", "--readme", dest="docs", action="append",
                    help=f"a document to refresh (repeatable; default: {', '.join(DOCS)})")
    ap.add_argument("--check", action="store_true", help="exit 1 if a document is not up to date; write nothing")
    a = ap.parse_args(argv)
    stale = []
    for doc in a.docs or DOCS:
        with open(doc, encoding="utf-8") as f:
            old = f.read()
        new, n = refresh(old, a.suite_dir)
        if a.check:
            print(f"{doc}: {n} tables, {'up to date' if new == old else 'out of date'}")
            stale += [doc] if new != old else []
            continue
        if new != old:
            from recbole_unrank.report import write_text

            write_text(doc, new)
        print(f"{n} tables refreshed in {doc}")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
