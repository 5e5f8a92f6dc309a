"""The interaction index (issue 24): what it answers equals the O(N) passes it replaces."""

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
