"""How every report writes a number and a table: ``results.md``, ``trials.md``, the suite's
``summary.md`` and the benchmarks' reports all go through :func:`fmt` and :func:`md_table`.

No RecBole or torch import here: the benchmarks' ``--report-only`` paths use it on a bare
interpreter.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["fmt", "md_table"]


def fmt(value, digits: int = 4, signed: bool = False) -> str:
    """One value as a table cell.

    ``None`` and NaN are ``-``; a bool is ``yes`` / ``no``; an int is written whole. A float
    has ``digits`` decimals below 10, at most 2 below 100 and at most 1 from 100 on (the
    decimals that carry information at that size); a nonzero float below ``10**-digits``,
    which those decimals would show as zero, is written with ``digits - 1`` significant
    figures (``3.2e-05``). ``signed``: a leading ``+`` on positive values (differences)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "-"
    sign = "+" if signed else ""
    if math.isinf(value):
        return f"{value:{sign}}"
    size = abs(value)
    if 0 < size < 10.0 ** -digits:
        return f"{value:{sign}.{max(1, digits - 1)}g}"
    decimals = digits if size < 10 else min(digits, 2) if size < 100 else min(digits, 1)
    return f"{value:{sign}.{decimals}f}"


def _cell(value) -> str:
    text = value if isinstance(value, str) else fmt(value)
    return " ".join(text.split()).replace("|", "\\|")  # one line, and a '|' does not end the cell


def md_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a markdown table: ``header`` cells, then one line per row. A cell that is
    not a string goes through :func:`fmt` (format it first for other digits)."""
    header = list(header)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {row!r}")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines
