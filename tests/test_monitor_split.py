"""One signal per purpose (DESIGN.md 10.3): the validation split is divided, seeded, into a part
methods read (step calibration, utility guard) and a monitor part nothing that changes a model
reads (the evaluator's valid row, the stream budget, the tuner's floor).

The independence test changes the monitor rows' items (in the monitor part and in the whole
split, wherever a method could read them) and checks that no update changes; the counterpart
changes the method part the same way and checks that the calibrated update does change. Against
the old code (the task's validation rows were the whole split) the first fails: NOTES-20.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import base_config_dict, prepared_run

from recbole_unrank import pipeline
from recbole_unrank.data import method_valid, monitor_valid, split_valid
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import METHODS

# floor 0: the step search itself reads the validation items (on tiny the floor alone meets
# every target); floor 100: the guard (0.98) binds and reads the validation NDCG
NOISE = 1e-5  # run-to-run rounding bound for the parameters of one update (float32, threaded BLAS)

SETTINGS = [
    ("l2unrank", {"step_floor": 0.0}),
    ("l2unrank", {"step_floor": 100.0}),
    ("if+calib", {"step_floor": 0.0, "calib_target": "view", "view_k": 50}),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}

    def get(model):
        if model not in cache:
            cache[model] = prepared_run(tmp_path_factory.mktemp(f"monitor-{model}"), model, epochs=2)
        return cache[model]

    return get


def test_split_is_seeded_disjoint_and_keeps_most_users_on_both_sides(runs):
    valid = runs("WMF").data.valid_ds
    a_method, a_monitor = split_valid(valid, 0.5, 7)
    b_method, b_monitor = split_valid(valid, 0.5, 7)
    c_method, _ = split_valid(valid, 0.5, 8)
    assert np.array_equal(a_method, b_method) and np.array_equal(a_monitor, b_monitor)
    assert not np.array_equal(a_method, c_method)
    n = len(valid.inter_feat)
    assert np.intersect1d(a_method, a_monitor).size == 0
    assert np.array_equal(np.union1d(a_method, a_monitor), np.arange(n))
    u = valid.inter_feat[valid.uid_field].numpy()
    many = [x for x in np.unique(u) if (u == x).sum() >= 2]
    both = [x for x in many if (u[a_method] == x).any() and (u[a_monitor] == x).any()]
    assert len(both) == len(many)  # share 0.5: a user with two or more rows keeps rows on both sides
    assert abs(a_monitor.size / n - 0.5) < 0.2


def _with_items_moved(ds, seed: int):
    """``ds`` with every row's item replaced by another item (seeded): a different signal."""
    out = ds.copy(ds.inter_feat[torch.arange(len(ds.inter_feat))])  # fresh tensors, ds untouched
    items = out.inter_feat[out.iid_field]
    gen = torch.Generator().manual_seed(seed)
    n_items = int(ds.item_num)
    moved = (items + torch.randint(1, n_items - 1, items.shape, generator=gen)) % n_items
    out.inter_feat[out.iid_field] = torch.where(moved == 0, torch.ones_like(moved), moved)
    return out


def _update(run, method: str, settings: dict) -> dict:
    result = METHODS[method](**settings)(run._task())
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _monitor_moved(run, seed: int):
    """(whole validation split, monitor part) with the monitor rows' items moved *in both*: a
    method that read the monitor rows through the whole split (``data.valid_ds``) would see the
    change as surely as one that read ``monitor_valid_ds``; the method part is untouched. The
    monitor rows are found in the whole split by their (user, item) pairs (RecBole's loaders sort
    the split in place, so row positions do not survive)."""
    v, monitor = run.data.valid_ds, run.data.monitor_valid_ds
    n_items = int(v.item_num)

    def keys(ds):
        return ds.inter_feat[ds.uid_field].long() * n_items + ds.inter_feat[ds.iid_field].long()

    rows = torch.isin(keys(v), keys(monitor)).nonzero().squeeze(1)
    assert rows.numel() == len(monitor.inter_feat)  # each monitor row once, no method row
    whole = v.copy(v.inter_feat[torch.arange(len(v.inter_feat))])  # fresh tensors, v untouched
    moved = _with_items_moved(whole.copy(whole.inter_feat[rows]), seed).inter_feat[v.iid_field]
    whole.inter_feat[v.iid_field][rows] = moved
    return whole, whole.copy(whole.inter_feat[rows])


@pytest.mark.parametrize("method,settings", SETTINGS)
def test_changing_the_monitor_part_changes_no_update(runs, method, settings):
    run = runs("WMF")
    before = _update(run, method, settings)
    saved = run.data.valid_ds, run.data.monitor_valid_ds
    try:
        run.data.valid_ds, run.data.monitor_valid_ds = _monitor_moved(run, 1)
        assert not torch.equal(run.data.monitor_valid_ds.inter_feat[saved[1].iid_field],
                               saved[1].inter_feat[saved[1].iid_field])
        after = _update(run, method, settings)
    finally:
        run.data.valid_ds, run.data.monitor_valid_ds = saved
    for k in before:  # the same inputs: the same parameters, up to the float32 CG's threaded-reduction
        # noise (seen up to 3e-7 between identical runs); a change of the method part moves them by
        # more than 1e-2 (the counterpart test), so NOISE sits far from both
        torch.testing.assert_close(after[k], before[k], rtol=0.0, atol=NOISE, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("method,settings", SETTINGS)
def test_changing_the_method_part_changes_the_calibrated_update(runs, method, settings):
    run = runs("WMF")
    before = _update(run, method, settings)
    saved = run.data.method_valid_ds
    try:
        run.data.method_valid_ds = _with_items_moved(saved, 1)
        after = _update(run, method, settings)
    finally:
        run.data.method_valid_ds = saved
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 100 * NOISE


def test_the_monitors_read_the_monitor_part(runs):
    """The evaluator's valid score and the stream budget move with the monitor part, and only it."""
    from recbole_unrank.stream import RequestStream, StreamSettings

    run = runs("WMF")
    task_valid = run._task().valid_ds
    assert task_valid is method_valid(run.data) and task_valid is not monitor_valid(run.data)
    stream = RequestStream(run.config, run.data, run._task().model, METHODS["l2unrank"](),
                           StreamSettings(0.0, "refuse"))
    score, budget = run.valid_score(run.original), stream.valid_ndcg()
    saved_method = run.data.method_valid_ds
    run.data.method_valid_ds = _with_items_moved(saved_method, 2)
    try:
        assert run.valid_score(run.original) == score and stream.valid_ndcg() == budget
    finally:
        run.data.method_valid_ds = saved_method
    saved = run.data.monitor_valid_ds
    run.data.monitor_valid_ds = _with_items_moved(saved, 2)
    try:
        run.open()  # the evaluator's loaders are built from the data
        assert run.valid_score(run.original) != pytest.approx(score)
        assert stream.valid_ndcg() != pytest.approx(budget)
    finally:
        run.data.monitor_valid_ds = saved
        run.open()


def test_default_split_is_half_and_seeded_by_the_run(tmp_path):
    config = pipeline.build_config("WMF", "tiny", config_dict=base_config_dict(tmp_path), argv=[])
    data = pipeline.load_data(config)
    method_rows, monitor_rows = split_valid(data.valid_ds, 0.5, config["seed"])
    assert len(data.monitor_valid_ds.inter_feat) == monitor_rows.size
    assert len(data.method_valid_ds.inter_feat) == method_rows.size


@pytest.mark.parametrize("share", [0.0, 1.0, -0.5, 1e-9])
def test_a_split_without_two_parts_is_refused(tmp_path, share):
    config = pipeline.build_config("WMF", "tiny", config_dict=base_config_dict(
        tmp_path, unrank_monitor_share=share), argv=[])
    with pytest.raises(UnrankError, match="unrank_monitor_share"):
        pipeline.prepare_run(config)
    assert not (tmp_path / "runs").exists()
