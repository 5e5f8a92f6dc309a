"""The suite's figures are readable: within a figure no two plotted series share (colour,
marker), the legend lies outside every panel, and the ablations are a figure of their own."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.markers import MarkerStyle  # noqa: E402

from recbole_unrank import plots  # noqa: E402

# every method of the committed ml-100k suite summary, hop sweep included
METHODS = ["original", "retrain", "l2unrank", "l2unrank_paper", "user_refit", "scif", "scif+calib", "if",
           "if+calib", "finetune", "l2unrank_noscope", "l2unrank_nostruct", "l2unrank_nosem",
           "l2unrank_noweights", "l2unrank_ctx", "l2unrank_nocurv", "l2unrank_nocalib"]
SWEEP = [f"l2unrank_paper[hops={h}]" for h in (0, 1, 2)]
KEYS = ["test.ndcg@10", "forget.forget_hit@10", "audit.mia_auc", "request_users.ndcg@10", "audit.mia_gap",
        "time_s"]


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for model in ("WMF", "LightGCN"):
        for ratio in (0.1, 0.2, 0.4):
            # as the suite: the ablations run at the default ratio only, l2unrank_nocalib at all
            methods = METHODS + SWEEP if ratio == 0.2 else METHODS[:5] + ["scif", "if", "finetune", "l2unrank_nocalib"]
            for method in dict.fromkeys(methods):
                row = {"model": model, "task": "interaction", "vary": "unrank_inter_ratio", "ratio": ratio,
                       "method": method}
                for key in KEYS:
                    row[f"{key}.mean"], row[f"{key}.std"] = float(rng.uniform(0.01, 1)), 0.01
                rows.append(row)
    return rows


def _marker_of(path) -> str:
    """The marker a scatter drew, recognised by its path (scatter keeps only the path)."""
    for m in set(plots._MARKERS) | {"o"}:
        style = MarkerStyle(m)
        ref = style.get_path().transformed(style.get_transform())
        if ref.vertices.shape == path.vertices.shape and np.allclose(ref.vertices, path.vertices):
            return m
    return "?"


def _series(fig) -> list[tuple[str, tuple, str]]:
    """(label, colour, marker) of every labelled series drawn in the figure's panels."""
    out = []
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.append((line.get_label(), to_rgba(line.get_color()), line.get_marker()))
        for container in ax.containers:  # errorbar: the label is the container's
            line = container.lines[0]
            if line is not None and not container.get_label().startswith("_"):
                out.append((container.get_label(), to_rgba(line.get_color()), line.get_marker()))
        for coll in ax.collections:
            if isinstance(coll, PathCollection) and not coll.get_label().startswith("_"):
                marker = _marker_of(coll.get_paths()[0])
                out.append((coll.get_label(), tuple(coll.get_facecolor()[0][:3]), marker))
    return out


@pytest.fixture(scope="module")
def figures():
    figs = plots.suite_figures(_rows())
    yield figs
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def test_suite_figures_are_the_headline_ablation_and_sweep_figures(figures):
    assert set(figures) == {"ratio-interaction.png", "ratio-interaction-ablations.png", "utility-vs-mia.png",
                            "utility-vs-mia-ablations.png", "hop-sweep.png"}
    head = {label for label, *_ in _series(figures["utility-vs-mia.png"])}
    assert head == set(plots.HEADLINE) - {"original"} | ({"original"} & head)
    ablation = {label for label, *_ in _series(figures["utility-vs-mia-ablations.png"])}
    assert {"retrain", "l2unrank", "l2unrank_noweights", "scif+calib"} <= ablation
    assert not ablation & (set(plots.HEADLINE) - {"retrain", "l2unrank"})


@pytest.mark.parametrize("name", ["ratio-interaction.png", "ratio-interaction-ablations.png", "utility-vs-mia.png",
                                  "utility-vs-mia-ablations.png", "hop-sweep.png"])
def test_no_two_series_share_colour_and_marker(figures, name):
    styles: dict[str, tuple] = {}
    for label, colour, marker in _series(figures[name]):
        style = (tuple(np.round(colour[:3], 3)), marker)
        assert styles.setdefault(label, style) == style, f"{label} drawn in two styles in {name}"
    pairs = list(styles.items())
    assert len(pairs) >= 2
    for (a, sa), (b, sb) in itertools.combinations(pairs, 2):
        assert sa != sb, f"{a} and {b} share colour and marker in {name}"


@pytest.mark.parametrize("name", ["ratio-interaction.png", "utility-vs-mia.png", "utility-vs-mia-ablations.png",
                                  "hop-sweep.png"])
def test_legend_lies_outside_every_panel(figures, name):
    fig = figures[name]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and legends[0] in fig.legends
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), f"legend over a panel of {name}"


def test_method_styles_are_distinct_for_many_methods():
    styles = plots.method_styles([f"m{k}" for k in range(70)])
    assert len({(s["color"], s["marker"]) for s in styles.values()}) == 70


def test_a_method_keeps_its_style_across_figures(figures):
    seen: dict[str, tuple] = {}
    for name in ("ratio-interaction.png", "ratio-interaction-ablations.png", "utility-vs-mia.png",
                 "utility-vs-mia-ablations.png"):
        for label, colour, marker in _series(figures[name]):
            style = (tuple(np.round(colour[:3], 3)), marker)
            assert seen.setdefault(label, style) == style, f"{label} changes style in {name}"


def test_a_sweep_label_with_more_settings_is_one_series_by_hops():
    from recbole_unrank.plots import _hop_series

    assert _hop_series("l2unrank_twosided[hops=1,sides=both]") == ("l2unrank_twosided[sides=both]", 1)
    assert _hop_series("l2unrank_paper[hops=2]") == ("l2unrank_paper", 2)
