"""A request's cost is its work (issue 24): the interaction index, the calibration's shortcuts, and what
they answer equals the O(N) passes and repeated scorings they replace."""

import torch

from recbole_unrank.influence import influence_scope
from recbole_unrank.influence.index import in_sorted, interaction_index, known_index
from recbole_unrank.influence.scope import influence_scope_indexed


def _data(n=4000, n_users=300, n_items=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    # skewed ids (a few popular items), so hops and caps reach far
    users = torch.randint(0, n_users, (n,), generator=g)
    items = (torch.rand(n, generator=g) ** 3 * n_items).long()
    return users, items


def test_rows_of_users_and_items_match_masks():
    users, items = _data()
    index = interaction_index(users, items)
    for ids in (torch.tensor([0, 5, 17]), torch.tensor([299]), torch.tensor([], dtype=torch.long)):
        assert torch.equal(index.rows_of_users(ids), torch.isin(users, ids).nonzero().squeeze(1))
        assert torch.equal(index.rows_of_items(ids), torch.isin(items, ids).nonzero().squeeze(1))
    assert torch.equal(index.present_users(), torch.unique(users))
    assert torch.equal(index.user_count, torch.bincount(users, minlength=index.n_users))


def test_index_is_kept_per_columns_and_rebuilt_when_a_column_changes():
    users, items = _data()
    a = interaction_index(users, items)
    assert interaction_index(users, items) is a  # paid once
    assert known_index(a.users) is a and known_index(a.items) is a and known_index(users.clone()) is None
    users[0] = (users[0] + 1) % 300  # in place: the version counter moves
    b = interaction_index(users, items)
    assert b is not a and torch.equal(b.rows_of_users(users[:1]), torch.isin(users, users[:1]).nonzero().squeeze(1))


def test_in_sorted_is_isin():
    ref = torch.tensor([1, 4, 9, 12])
    vals = torch.tensor([0, 1, 5, 9, 12, 13])
    assert torch.equal(in_sorted(vals, ref), torch.isin(vals, ref))
    assert not in_sorted(vals, ref[:0]).any()


def test_indexed_scope_equals_the_mask_scope_for_every_hop_and_cap():
    users, items = _data()
    index = interaction_index(users, items)
    g = torch.Generator().manual_seed(1)
    for trial in range(6):
        target = torch.randint(0, users.numel(), (1 + 7 * trial,), generator=g)
        for hops in (0, 1, 2, 3):
            for cap in (None, 0, 5, 60, 400, 3000):
                want = influence_scope(users, items, target, hops, cap)
                got = influence_scope_indexed(index, target, hops, cap)
                assert torch.equal(got.scope_index, want.scope_index), (trial, hops, cap)
                assert torch.equal(got.context_index, want.context_index), (trial, hops, cap)
                assert (got.hops_done, got.truncated) == (want.hops_done, want.truncated), (trial, hops, cap)


def test_calibration_reads_the_same_rows_from_the_index_as_from_masks(tmp_path):
    """The probes of the request users and of the guard's sample of others hold the same rows
    whether the calibration reads them from the interaction indexes or from masks over all rows."""
    from conftest import prepared_run

    from recbole_unrank.adapters import get_adapter
    from recbole_unrank.config import default_of
    from recbole_unrank.methods.calibration import StepCalibration
    from recbole_unrank.methods.pipeline import CALIBRATION_SETTINGS

    run = prepared_run(tmp_path, "LightGCN")
    task = run._task()
    adapter = get_adapter(task.model)
    tr, va = task.train_ds, task.valid_ds
    index = interaction_index(tr.inter_feat[tr.uid_field], tr.inter_feat[tr.iid_field], None,
                              adapter.n_users, adapter.n_items)
    valid = interaction_index(va.inter_feat[va.uid_field], va.inter_feat[va.iid_field], None,
                              adapter.n_users, adapter.n_items)
    users, items = index.users, index.items
    target = torch.as_tensor(task.request_index, dtype=torch.long)
    keep = torch.ones(users.numel(), dtype=torch.bool)
    keep[target] = False
    req = torch.unique(users[target])
    settings = {k: default_of(key) for k, key in CALIBRATION_SETTINGS.items()}
    args = (settings, adapter, users, items, keep, req, users[target], items[target], valid.users, valid.items,
            True, 1001)
    a = StepCalibration(*args, train_index=index, valid_index=valid)
    b = StepCalibration(*args)
    for name in ("probe", "other_probe"):
        pa, pb = getattr(a, name), getattr(b, name)
        for field in ("h_rows", "h_items", "f_rows", "f_items", "v_rows", "v_items"):
            assert torch.equal(getattr(pa, field), getattr(pb, field)), (name, field)
    assert torch.equal(a.others, b.others) and torch.equal(a.guarded, b.guarded)


def test_lightgcn_l2_surrogate_mean_equals_the_gathered_mean():
    from recbole_unrank.adapters.lightgcn import _mean_row_norm2

    g = torch.Generator().manual_seed(3)
    table = torch.randn(300, 64, generator=g)
    ids = torch.randint(0, 300, (20_000,), generator=g)
    want = float(table[ids].pow(2).sum(1).mean())  # the [N, d] gather it replaces
    index = interaction_index(ids, torch.randint(0, 50, (20_000,), generator=g))
    for got in (_mean_row_norm2(table, ids), _mean_row_norm2(table, index.users)):
        # float32 mean of 20k terms vs a float64 sum: a few float32 ulps apart
        assert abs(got - want) <= 1e-6 * want
    assert _mean_row_norm2(table, ids[:0]) == 1.0


def test_lightgcn_guard_sample_is_scored_only_where_the_guard_is_read(tmp_path):
    """The step search scores the request users at every step it tries, the guard's sample of
    other users only for the reference, the cap and the report; a step asked twice is scored once."""
    from conftest import prepared_run

    from recbole_unrank.adapters.lightgcn import LightGCNAdapter
    from recbole_unrank.methods import METHODS

    run = prepared_run(tmp_path, "LightGCN")
    calls = {"users": [], "others": []}
    orig_users, orig_others = LightGCNAdapter.scores_with_delta, LightGCNAdapter.other_scores_with_delta

    def users(self, u, prepared, scale):
        calls["users"].append(scale.tolist())
        return orig_users(self, u, prepared, scale)

    def others(self, prepared, scale):
        calls["others"].append(scale.tolist())
        return orig_others(self, prepared, scale)

    LightGCNAdapter.scores_with_delta, LightGCNAdapter.other_scores_with_delta = users, others
    try:
        result = METHODS["l2unrank"]()(run._task())
    finally:
        LightGCNAdapter.scores_with_delta, LightGCNAdapter.other_scores_with_delta = orig_users, orig_others
    assert result.info["guard"]["others_valid_ndcg_ratio"] is not None
    # every scale scored at most once, for the users and for the others
    for kind in calls:
        assert len(calls[kind]) == len({tuple(x) for x in calls[kind]}), kind
    assert calls["others"] and set(map(tuple, calls["others"])) <= set(map(tuple, calls["users"]))
    assert len(calls["others"]) < len(calls["users"])  # the search's own steps read no guard
