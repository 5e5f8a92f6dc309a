"""Plots of a run (matplotlib, Agg backend; PNG files in the run folder).

* ``ranks.png``: the request's ranks before (original) and after each method, log axis;
* ``tradeoff.png``: effectiveness (forget_hit@10, lower is better) against utility (test
  NDCG@10), marker area growing with the method's time;
* ``time.png``: unlearning time per method, log axis.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_run", "plot_ranks", "plot_tradeoff", "plot_times"]


def _save(fig, path: str) -> str:
    from recbole_unrank.checkpoints import atomic_write

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def plot_ranks(rows: list[dict], path: str, title: str = "") -> str:
    """Box plot of the request's ranks per model (``row['ranks']['ranks']``)."""
    data = [(r["method"], np.asarray(r["ranks"]["ranks"])) for r in rows if r.get("ranks")]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(data) + 2), 4))
    ax.boxplot([d for _, d in data], showfliers=False)
    ax.set_xticks(range(1, len(data) + 1), [m for m, _ in data], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.axhline(10, color="grey", ls="--", lw=0.8)
    ax.text(0.55, 10, "top-10", va="bottom", fontsize=8, color="grey")
    ax.set_ylabel("rank of a forgotten pair (log)")
    ax.set_title(title or "Request ranks before (original) and after unlearning")
    return _save(fig, path)


def plot_tradeoff(record: dict, path: str) -> str:
    rows = [r for r in record["rows"] if "test" in r]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    times = np.array([max(r.get("time_s") or 0.0, 1e-3) for r in rows])
    sizes = 30 + 120 * (np.log10(times) - np.log10(times).min() + 0.1)
    for r, size in zip(rows, sizes):
        x, y = r["test"].get("ndcg@10"), r["forget"].get("forget_hit@10")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=size, alpha=0.7)
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("test NDCG@10 (utility, higher is better)")
    ax.set_ylabel("forget_hit@10 (lower is better)")
    ax.set_title(f"{record['model']} on {record['dataset']}: effectiveness vs utility (size ~ log time)")
    return _save(fig, path)


def plot_times(record: dict, path: str) -> str:
    rows = [r for r in record["rows"] if r["method"] != "original" and r.get("time_s")]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
    ax.bar([r["method"] for r in rows], [r["time_s"] for r in rows], color="tab:blue")
    ax.set_yscale("log")
    ax.set_ylabel("unlearning time (s, log)")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(f"{record['model']} on {record['dataset']}: time per method")
    return _save(fig, path)


def plot_run(run, record: dict) -> list[str]:
    d = run.run_dir
    out = [plot_ranks(run.rows, os.path.join(d, "ranks.png"),
                      f"{record['model']} on {record['dataset']}: request ranks")]
    if len(record["rows"]) > 1:
        out.append(plot_tradeoff(record, os.path.join(d, "tradeoff.png")))
        out.append(plot_times(record, os.path.join(d, "time.png")))
    return out
