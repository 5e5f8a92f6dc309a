"""Plots of a run (matplotlib, Agg backend; PNG files in the run folder).

* ``ranks.png``: the request's ranks before (original) and after each method, log axis;
* ``tradeoff.png``: effectiveness (forget_hit@10, lower is better) against utility (test
  NDCG@10), marker area growing with the method's time;
* ``time.png``: unlearning time per method, log axis.
"""

from __future__ import annotations

import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_run", "plot_ranks", "plot_tradeoff", "plot_times", "plot_suite", "suite_figures",
           "method_styles", "HEADLINE"]


def _save(fig, path: str) -> str:
    from recbole_unrank.atomic import atomic_write

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
    styles = method_styles([r["method"] for r in rows])
    for r, size in zip(rows, sizes):
        x, y = r["test"].get("ndcg@10"), r["forget"].get("forget_hit@10")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=size, alpha=0.7, **styles[r["method"]])
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("test NDCG@10 (utility, higher is better)")
    ax.set_ylabel("forget_hit@10 (lower is better)")
    ax.set_title(f"{record['model']} on {record['dataset']}: effectiveness vs utility (size ~ log time)")
    return _save(fig, path)


def plot_times(record: dict, path: str) -> str:
    rows = [r for r in record["rows"] if r["method"] != "original" and r.get("time_s") and "forget" in r]
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


# --------------------------------------------------------------------------- suites
_SUITE_MEASURES = [("test.ndcg@10", "test NDCG@10"), ("forget.forget_hit@10", "forget_hit@10"),
                   ("audit.mia_auc", "MIA AUC"), ("request_users.ndcg@10", "request users' NDCG@10")]

#: The methods compared in the headline figures (the paper's comparison); every other method (the
#: ablations ``l2unrank_no*``, ``l2unrank_ctx``, the calibrated baselines ``*+calib``) goes to a
#: figure of its own, drawn beside the references ``retrain`` and ``l2unrank``.
HEADLINE = ("original", "retrain", "l2unrank", "l2unrank_paper", "user_refit", "scif", "if", "finetune")
_REFERENCES = ("retrain", "l2unrank")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 markers, 10 colours: coprime, so (colour, marker)
#                                               pairs repeat only after 70 methods


def method_styles(methods: list[str]) -> dict[str, dict]:
    """``{method: {"color", "marker"}}``: the k-th method takes colour ``C{k % 10}`` and marker
    ``_MARKERS[k % 7]``, so no two of up to 70 methods share both, and neighbours differ in both."""
    return {m: {"color": f"C{k % 10}", "marker": _MARKERS[k % len(_MARKERS)]}
            for k, m in enumerate(dict.fromkeys(methods))}


def _methods_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows if "[" not in r["method"]))


def _split_methods(methods: list[str]) -> tuple[list[str], list[str]]:
    """(headline, ablation figure's methods): the ablations keep the references beside them."""
    head = [m for m in methods if m in HEADLINE]
    rest = [m for m in methods if m not in HEADLINE]
    return head, ([m for m in _REFERENCES if m in methods] + rest) if rest else []


def _legend_outside(fig, axes) -> None:
    """One legend for the figure, right of every panel (never over the data)."""
    handles: dict[str, object] = {}
    for ax in np.ravel(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=8, frameon=False)


def _ratio_figure(rows: list[dict], task: str, models: list[str], methods: list[str], note: str, styles: dict):
    fig, axes = plt.subplots(len(models), len(_SUITE_MEASURES), figsize=(4 * len(_SUITE_MEASURES), 3.2 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        mrows = [r for r in rows if r["model"] == model]
        for j, (key, title) in enumerate(_SUITE_MEASURES):
            ax = axes[i][j]
            for method in methods:
                pts = sorted((r["ratio"], r[f"{key}.mean"], r[f"{key}.std"] or 0.0) for r in mrows
                             if r["method"] == method and r[f"{key}.mean"] is not None)
                if pts:
                    x, y, e = zip(*pts)
                    ax.errorbar(x, y, yerr=e, ms=4, capsize=2, label=method, **styles[method])
            ax.set_title(f"{model}: {title}", fontsize=9)
            ax.set_xlabel(f"{mrows[0]['vary'].replace('unrank_', '') if mrows else 'ratio'}")
    fig.suptitle(f"{task} task{note}: measures against the unlearning ratio (evaluation seeds, mean ± std)")
    fig.tight_layout()
    _legend_outside(fig, axes)
    return fig


def _mia_figure(rows: list[dict], models: list[str], methods: list[str], note: str, styles: dict):
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for i, model in enumerate(models):
        ax = axes[0][i]
        mrows = [r for r in rows if r["model"] == model and "[" not in r["method"]]
        for method in methods:
            pts = [(r["audit.mia_gap.mean"], r["test.ndcg@10.mean"], r["time_s.mean"]) for r in mrows
                   if r["method"] == method and r["audit.mia_gap.mean"] is not None and r["test.ndcg@10.mean"] is not None]
            if method == "retrain":
                pts = [(0.0, r["test.ndcg@10.mean"], r["time_s.mean"]) for r in mrows
                       if r["method"] == method and r["test.ndcg@10.mean"] is not None]
            if not pts:
                continue
            x, y, t = zip(*pts)
            sizes = [20 + 30 * np.log10(1 + 100 * (tt or 0.0)) for tt in t]
            ax.scatter(x, y, s=sizes, alpha=0.7, label=method, edgecolors="black", linewidths=0.4,
                       **styles[method])
        ax.set_xlabel("MIA gap |AUC - retrain's| (lower is better)")
        ax.set_ylabel("test NDCG@10")
        ax.set_title(f"{model}{note} (marker size: time)", fontsize=9)
    fig.tight_layout()
    _legend_outside(fig, axes)
    return fig


_HOPS = re.compile(r"hops=(\d+),?")


def _hop_series(label: str) -> tuple[str, int]:
    """A sweep cell's label -> (its series: the label without the hops, its hops):
    ``l2unrank_twosided[hops=1,sides=both]`` -> (``l2unrank_twosided[sides=both]``, 1)."""
    hops = int(_HOPS.search(label).group(1))
    return _HOPS.sub("", label).replace("[]", "").replace(",]", "]"), hops


def _hop_figure(sweep: list[dict], models: list[str]):
    series = [(model, method) for model in models
              for method in dict.fromkeys(_hop_series(r["method"])[0] for r in sweep if r["model"] == model)]
    styles = method_styles([f"{model} {method}" for model, method in series])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    for j, (key, title) in enumerate([("forget.forget_hit@10", "forget_hit@10"), ("test.ndcg@10", "test NDCG@10")]):
        ax = axes[0][j]
        for model, method in series:
            pts = sorted((_hop_series(r["method"])[1], r[f"{key}.mean"], r[f"{key}.std"] or 0.0)
                         for r in sweep if r["model"] == model and _hop_series(r["method"])[0] == method
                         and r[f"{key}.mean"] is not None)
            if pts:
                x, y, e = zip(*pts)
                label = f"{model} {method}"
                ax.errorbar(x, y, yerr=e, capsize=2, label=label, **styles[label])
        ax.set_xlabel("hops p")
        ax.set_title(f"hop sweep: {title}", fontsize=9)
    fig.tight_layout()
    _legend_outside(fig, axes)
    return fig


def suite_figures(rows: list[dict]) -> dict[str, object]:
    """The suite's figures by file name (evaluation rows of the summary): per task with several
    ratios, each measure against the ratio (``ratio-<task>.png``, headline methods;
    ``ratio-<task>-ablations.png``); utility against the MIA gap, time as marker size
    (``utility-vs-mia.png``, ``utility-vs-mia-ablations.png``); the hop sweep (``hop-sweep.png``).
    Every method keeps one (colour, marker) in every figure; the legend lies right of the panels."""
    figures: dict[str, object] = {}
    models = list(dict.fromkeys(r["model"] for r in rows))
    # one style per method across the figures: headline methods first, in HEADLINE's order
    methods = _methods_of(rows)
    styles = method_styles([m for m in HEADLINE if m in methods] + [m for m in methods if m not in HEADLINE])
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task and "[" not in r["method"]]
        if len({r["ratio"] for r in trows}) < 2:
            continue
        head, ablations = _split_methods(_methods_of(trows))
        figures[f"ratio-{task}.png"] = _ratio_figure(trows, task, models, head, "", styles)
        swept = {m for m in ablations if m not in _REFERENCES
                 and len({r["ratio"] for r in trows if r["method"] == m}) > 1}
        if swept:
            figures[f"ratio-{task}-ablations.png"] = _ratio_figure(trows, task, models, ablations, " (ablations)", styles)
    head, ablations = _split_methods(_methods_of(rows))
    figures["utility-vs-mia.png"] = _mia_figure(rows, models, head, "", styles)
    if ablations:
        figures["utility-vs-mia-ablations.png"] = _mia_figure(rows, models, ablations, ", ablations", styles)
    sweep = [r for r in rows if "[hops=" in r["method"]]
    if sweep:
        figures["hop-sweep.png"] = _hop_figure(sweep, models)
    return figures


def plot_suite(rows: list[dict], record: dict, folder: str) -> list[str]:
    """Write :func:`suite_figures` as PNG files in ``folder``; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    return [_save(fig, os.path.join(folder, name)) for name, fig in suite_figures(rows).items()]
