"""recbole_unrank.tables: the one number formatter and the one markdown-table helper that every
report uses (results.md, trials.md, summary.md, the benchmarks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recbole_unrank.tables import fmt, md_table


@pytest.mark.parametrize("value, digits, expected", [
    (None, 4, "-"),
    (float("nan"), 4, "-"),
    (True, 4, "yes"),
    (False, 4, "no"),
    (12, 4, "12"),
    (0.0, 4, "0.0000"),
    (0.12345, 4, "0.1235"),
    (-0.5, 4, "-0.5000"),
    (12.3456, 4, "12.35"),
    (123.456, 4, "123.5"),
    (1000.03, 4, "1000.0"),        # the infeasible loss stays readable (not 1e+03)
    (3.2e-05, 4, "3.2e-05"),       # not 0.0000
    (1.23456, 3, "1.235"),
    (12.3456, 1, "12.3"),          # fewer digits asked: never more decimals for a larger value
    (0.25, 3, "0.250"),
    (np.float32(0.5), 4, "0.5000"),
    (np.int64(7), 4, "7"),
    (math.inf, 4, "inf"),
    ("text", 4, "text"),
])
def test_fmt(value, digits, expected):
    assert fmt(value, digits) == expected


def test_fmt_signed():
    assert fmt(0.01234, signed=True) == "+0.0123"
    assert fmt(-0.01234, signed=True) == "-0.0123"
    assert fmt(3, signed=True) == "+3"
    assert fmt(None, signed=True) == "-"


def test_md_table_formats_and_escapes_cells():
    lines = md_table(["method", "NDCG@10", "note"], [["l2unrank", 0.31234, "a | b\nc"], ["retrain", None, ""]])
    assert lines == ["| method | NDCG@10 | note |", "|---|---|---|",
                     "| l2unrank | 0.3123 | a \\| b c |", "| retrain | - |  |"]


def test_md_table_refuses_a_short_row():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        md_table(["a", "b", "c"], [[1, 2]])
