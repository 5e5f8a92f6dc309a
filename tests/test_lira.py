"""The LiRA audit (recbole_unrank/evaluation/lira.py): the statistic on hand-made arrays, the
shadows' data on tiny (OUT of every judged pair, halves that vary), ``lira_auc`` in every row
of a run, and the refusal of settings it cannot use."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from conftest import DATA_PATH, REPO_ROOT, base_config_dict

from recbole_unrank.errors import UnrankError
from recbole_unrank.evaluation import lira
from recbole_unrank.pipeline import build_config, prepare_run, run_pipeline


# --------------------------------------------------------------------------- the statistic
def test_statistic_is_one_half_at_the_shadow_mean_and_near_one_far_above():
    shadows = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.5], [1.0, 2.0, 4.5]])  # K=3, 3 pairs
    mean = shadows.mean(axis=0)
    stat = lira.lira_statistic(mean, shadows)
    assert stat == pytest.approx([0.5, 0.5, 0.5], abs=1e-12)  # z = 0 exactly, up to rounding
    far = lira.lira_statistic(mean + 100.0, shadows)
    assert np.all(far > 1 - 1e-9)
    below = lira.lira_statistic(mean - 100.0, shadows)
    assert np.all(below < 1e-9)


def test_per_pair_and_global_variance():
    # pair 0: shadows 0, 2 (variance 2, ddof 1); pair 1: 0, 4 (variance 8); global: mean 5
    shadows = np.array([[0.0, 0.0], [2.0, 4.0]])
    target = np.array([1.0 + math.sqrt(2.0), 2.0 + math.sqrt(8.0)])
    assert lira.lira_z(target, shadows, global_variance=False) == pytest.approx([1.0, 1.0], rel=1e-12)
    assert lira.lira_z(target, shadows, global_variance=True) == pytest.approx(
        [math.sqrt(2.0 / 5.0), math.sqrt(8.0 / 5.0)], rel=1e-12)
    # few shadows (K < 64, the paper's advice): the global variance by default
    assert lira.lira_z(target, shadows) == pytest.approx(lira.lira_z(target, shadows, True), rel=1e-12)
    many = np.tile(shadows, (lira.GLOBAL_VARIANCE_BELOW // 2, 1))  # K = 64: per pair
    assert lira.lira_z(target, many) == pytest.approx(lira.lira_z(target, many, False), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        lira.lira_z(target, shadows[:1])


def test_rank_logit_orders_ranks_and_is_zero_mid_row():
    n = np.full(3, 101)
    vals = lira.rank_logit(np.log([1.0, 51.0, 101.0]), n)
    assert vals[0] > 4 and vals[2] < -4  # top and bottom of the row
    assert vals[1] == pytest.approx(0.0, abs=1e-12)  # percentile (51 - 1/2) / 101 = 1/2
    assert np.all(np.diff(vals) < 0)


def test_shadow_half_is_seeded_varies_and_leaves_out_judged_pairs():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 400), rng.integers(1, 50, 400)
    judged = [(users[:5], items[:5]), (np.array([3]), np.array([7]))]
    a = lira.shadow_half(users, items, 50, judged, seed=1001, k=0)
    assert np.array_equal(a, lira.shadow_half(users, items, 50, judged, seed=1001, k=0))
    b = lira.shadow_half(users, items, 50, judged, seed=1001, k=1)
    assert not np.array_equal(a, b)
    keys = users * 50 + items
    bad = set((users[:5] * 50 + items[:5]).tolist()) | {3 * 50 + 7}
    pool = int((~np.isin(keys, list(bad))).sum())
    assert a.size == pool // 2
    assert not set(keys[a].tolist()) & bad


# --------------------------------------------------------------------------- on tiny
K = 4


@pytest.fixture(scope="module")
def lira_run(tmp_path_factory):
    """A run on tiny WMF (retrain, l2unrank) with 4 shadows of 2 epochs; every shadow training
    is recorded (its rows and whether the global random state was left as found)."""
    work = tmp_path_factory.mktemp("lira")
    calls = []
    real = lira.train_shadow

    def spy(config, data, retain_ds, rows, seed, epochs, tag):
        before = torch.get_rng_state().clone()
        model = real(config, data, retain_ds, rows, seed, epochs, tag)
        calls.append({"rows": np.asarray(rows), "seed": seed, "epochs": epochs,
                      "rng_kept": bool(torch.equal(before, torch.get_rng_state())),
                      "config_kept": (config["epochs"], config["seed"]) == (3, 2020)})
        return model

    mp = pytest.MonkeyPatch()
    mp.setattr(lira, "train_shadow", spy)
    try:
        cfg = build_config("WMF", "tiny", config_dict=base_config_dict(
            work, epochs=3, unrank_methods=["retrain", "l2unrank"], unrank_audit_shadows=K,
            unrank_audit_shadow_epochs=2), argv=[])
        run = run_pipeline(cfg)
    finally:
        mp.undo()
    return run, calls


def test_every_row_has_a_lira_auc_from_the_same_shadows(lira_run):
    run, calls = lira_run
    rows = {r["method"]: r for r in run.rows}
    assert set(rows) == {"original", "retrain", "l2unrank"}
    for row in rows.values():
        value = row["audit"]["lira_auc"]
        assert value is not None and 0.0 <= value <= 1.0, row["method"]
    assert rows["original"]["audit"]["shadows"] == K and rows["original"]["audit"]["shadows_s"] > 0
    assert "shadows_s" not in rows["retrain"]["audit"]  # the cost is reported once
    assert len(calls) == K  # trained once for the run, not per row
    assert all(c["epochs"] == 2 and c["rng_kept"] and c["config_kept"] for c in calls)
    assert len({c["seed"] for c in calls}) == K
    assert run.shadow_audit.k == K


def test_shadows_train_on_retained_halves_without_any_judged_pair(lira_run):
    run, calls = lira_run
    auditor = run.auditor
    ru, ri = auditor.retained
    n = auditor.n_items
    keys = ru * n + ri
    judged = set((auditor.forget_pairs[0] * n + auditor.forget_pairs[1]).tolist())
    judged |= set((auditor.test_pairs[0] * n + auditor.test_pairs[1]).tolist())
    assert judged, "tiny's request has pairs to judge"
    halves = [c["rows"] for c in calls]
    for rows in halves:
        assert rows.size > 0 and rows.max() < ru.size
        assert not set(keys[rows].tolist()) & judged
        assert abs(rows.size - ru.size / 2) <= len(judged) / 2 + 1
    assert len({r.tobytes() for r in halves}) == K  # each shadow its own half
    # the retained split itself holds none of the forgotten rows
    fu, fi = auditor.forget_pairs
    assert not set((fu * n + fi).tolist()) & set(keys.tolist())


def test_lira_auc_of_the_run_matches_the_statistic_by_hand(lira_run):
    run, _ = lira_run
    shadows = run.shadow_audit
    probe = run.auditor.probe(run.original)
    f, t = shadows.shadow_values()
    z = lira.lira_z(np.r_[probe.forget[:, 0], probe.test[:, 0]], np.concatenate([f, t], axis=1))
    from recbole_unrank.evaluation.audit import auc

    expected = auc(z[: f.shape[1]], z[f.shape[1]:])
    original = next(r for r in run.rows if r["method"] == "original")
    # same model, same pairs, same arithmetic: only summation order may differ
    assert original["audit"]["lira_auc"] == pytest.approx(expected, abs=1e-9)


def test_suite_trains_shadows_once_per_request_and_reports_lira_gap(tmp_path, monkeypatch):
    """A suite request (retrain first, then each cell): the shadows are trained once, after
    retrain; every cell carries lira_auc, a method's cell its lira_gap to retrain's, and the
    original's row the shadows' count and time."""
    import yaml

    from recbole_unrank import suite

    calls = []
    real = lira.train_shadow
    monkeypatch.setattr(lira, "train_shadow", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    spec_path = tmp_path / "suite.yaml"
    spec_path.write_text(yaml.safe_dump({
        "dataset": "tiny", "models": ["WMF"], "tasks": [{"task": "interaction", "vary": "unrank_inter_ratio", "ratios": [0.2]}],
        "design_seeds": [101], "eval_seeds": [1001], "methods": ["retrain", "l2unrank"],
        "settings": {"data_path": str(DATA_PATH), "gpu_id": "", "epochs": 3, "show_progress": False,
                     "unrank_audit_shadows": 2, "unrank_audit_shadow_epochs": 2},
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}), encoding="utf-8")
    record = suite.run_suite(suite.load_spec(str(spec_path)), show_progress=False)
    cells = {c["method"]: c for c in record["cells"]}
    assert set(cells) == {"retrain", "l2unrank"} and all(c["status"] == "ok" for c in cells.values())
    assert len(calls) == 2  # one request, 2 shadows, trained once for both cells
    retrain, method = cells["retrain"]["row"]["audit"], cells["l2unrank"]["row"]["audit"]
    assert 0.0 <= retrain["lira_auc"] <= 1.0 and 0.0 <= method["lira_auc"] <= 1.0
    # the gap is the difference of the two values the cells hold (same float arithmetic)
    assert method["lira_gap"] == pytest.approx(abs(method["lira_auc"] - retrain["lira_auc"]), abs=1e-12)
    original = cells["l2unrank"]["original"]["audit"]
    assert original["shadows"] == 2 and original["shadows_s"] > 0 and 0.0 <= original["lira_auc"] <= 1.0


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("settings, words", [
    ({"unrank_audit_shadows": 1}, "LiRA needs >= 2"),
    ({"unrank_audit_shadows": -2}, "LiRA needs >= 2"),
    ({"unrank_audit_shadow_epochs": 3}, "has no effect"),
    ({"unrank_audit_shadows": 2, "unrank_audit_shadow_epochs": 0}, "at least 1"),
])
def test_unusable_settings_are_refused_before_anything_is_written(tmp_path, settings, words):
    cfg = build_config("WMF", "tiny", config_dict=base_config_dict(tmp_path, **settings), argv=[])
    with pytest.raises(UnrankError, match=words) as info:
        prepare_run(cfg, methods=["retrain"])
    assert "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_command_line_refusal_exits_2_with_one_line(tmp_path, py_async):
    yaml_file = tmp_path / "cpu.yaml"
    yaml_file.write_text(f"data_path: {REPO_ROOT / 'dataset'}\ngpu_id: ''\nseed: 2020\nshow_progress: False\n",
                         encoding="utf-8")
    argv = [sys.executable, REPO_ROOT / "run_unrank.py", "-m", "WMF", "-d", "tiny", "--config_files", yaml_file,
            "--unrank_audit_shadows=1", f"--unrank_output_dir={tmp_path / 'runs'}"]
    res = py_async.argv(argv, tmp_path).result()
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--unrank_audit_shadows=1" in lines[0] and "LiRA" in lines[0], lines
    assert not (tmp_path / "runs").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
