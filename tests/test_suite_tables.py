"""The README's suite tables: rebuilt from the committed summary, never copied by hand."""

from __future__ import annotations

import csv
import importlib.util
import io

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("suite_tables", REPO_ROOT / "benchmarks" / "suite_tables.py")
suite_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite_tables)

SUITE = REPO_ROOT / "benchmarks" / "results" / "suite" / "ml100k"


def test_results_doc_tables_match_the_committed_summary():
    doc = (REPO_ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    new, n = suite_tables.refresh(doc, str(SUITE))
    assert n >= 10
    assert new == doc, "docs/results.md tables are out of date: python benchmarks/suite_tables.py " \
                       "benchmarks/results/suite/ml100k --doc docs/results.md"


def test_readme_tables_match_the_committed_summary():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    new, n = suite_tables.refresh(readme, str(SUITE))
    assert new == readme, "README tables are out of date: python benchmarks/suite_tables.py " \
                          "benchmarks/results/suite/ml100k --doc README.md"


def test_headline_rows_are_summary_rows_in_the_asked_order():
    md = ("# Headline measures\n\n## WMF: interaction task, inter_ratio 0.2, random users\n\n"
          "| method | n | x |\n|---|---|---|\n| retrain | 3 | 1 |\n| l2unrank | 3 | 2 |\n| scif | 2 | 3 |\n\n"
          "# All measures\n\n## WMF: interaction task, inter_ratio 0.2, random users\n\n"
          "| method | n | y |\n|---|---|---|\n| retrain | 3 | 9 |\n")
    tables = suite_tables.headline_tables(md)
    assert list(tables) == [("WMF", "interaction", 0.2)]  # the headline section only
    got = suite_tables.headline(tables, "WMF", "interaction", 0.2, ["scif", "retrain", "absent"])
    assert got.splitlines() == ["| method | n | x |", "|---|---|---|", "| scif | 2 | 3 |", "| retrain | 3 | 1 |"]
    assert "no finished cell" in suite_tables.headline(tables, "NeuMF", "item", 0.02, ["retrain"])


def test_task_table_shares_and_solves():
    fields = ["model", "task", "ratio", "users", "method", "n", "test.ndcg@10.mean",
              "request_users.ndcg@10.mean", "forget.forget_hit@10.mean", "audit.mia_gap.mean",
              "speedup.mean", "solve.converged.mean", "solve.n"]
    rows = [dict(zip(fields, r)) for r in [
        ["WMF", "item", "0.02", "random", "original", "3", "0.2", "0.3", "0.4", "", "", "", "0"],
        ["WMF", "item", "0.02", "random", "retrain", "3", "0.21", "0.31", "0.0", "", "", "", "0"],
        ["WMF", "item", "0.02", "random", "l2unrank", "2", "0.19", "0.25", "0.1", "0.05", "40.2", "0.5", "2"],
    ]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    lines = suite_tables.task_table(rows, "item", 0.02, ["retrain", "l2unrank"]).splitlines()
    assert lines[2] == "| WMF | retrain | 3 | 105.0% | 0.310 | 0.000 | - | - | - |"
    assert lines[3] == "| WMF | l2unrank | 2 | 95.0% | 0.250 | 0.100 | 0.050 | 40x | 1/2 |"
