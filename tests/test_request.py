"""Forget requests: sampling sizes and seeds, the file source, skipped pairs, the split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.errors import UnrankError
from recbole_unrank.pipeline import load_data, make_request
from recbole_unrank.request import (
    read_request_file,
    request_from_pairs,
    sample_request,
    split_train,
    take_rows,
    write_request_file,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory, config_maker):
    work = tmp_path_factory.mktemp("request")
    config = config_maker(work, "WMF")
    return load_data(config)


def _pairs(ds) -> set[tuple[int, int]]:
    feat = ds.inter_feat
    return set(zip(feat[ds.uid_field].tolist(), feat[ds.iid_field].tolist()))


def _train_arrays(ds):
    return ds.inter_feat[ds.uid_field].numpy(), ds.inter_feat[ds.iid_field].numpy()


# ------------------------------------------------------------------------------ sampling
def test_interaction_request_sizes(data):
    train = data.train_ds
    users, items = _train_arrays(train)
    req = sample_request(train, "interaction", user_ratio=0.1, inter_ratio=0.2, seed=2020)
    present = np.unique(users)
    chosen = np.unique(req.users)
    assert chosen.size == math.ceil(0.1 * present.size)
    deg = np.bincount(users, minlength=train.user_num)
    per_user = np.bincount(req.users, minlength=train.user_num)
    for u in chosen:
        assert per_user[u] == max(1, round(0.2 * deg[u])), u
    # Rows really are train rows, sorted and unique, and carry their ids.
    assert np.all(np.diff(req.index) > 0)
    np.testing.assert_array_equal(users[req.index], req.users)
    np.testing.assert_array_equal(items[req.index], req.items)
    assert req.source == "interaction" and req.skipped == 0
    assert req.summary() == {"source": "interaction", "pairs": len(req), "users": chosen.size,
                             "items": np.unique(req.items).size, "skipped": 0}


def test_interaction_request_takes_at_least_one_row_per_user(data):
    train = data.train_ds
    users, _ = _train_arrays(train)
    req = sample_request(train, "interaction", user_ratio=0.5, inter_ratio=0.01, seed=3)
    per_user = np.bincount(req.users)
    assert set(np.unique(per_user[per_user > 0])) == {1}
    assert np.unique(req.users).size == math.ceil(0.5 * np.unique(users).size)


def test_user_request_takes_all_rows_of_the_users(data):
    train = data.train_ds
    users, _ = _train_arrays(train)
    req = sample_request(train, "user", user_ratio=0.1, seed=2020)
    chosen = np.unique(req.users)
    assert chosen.size == math.ceil(0.1 * np.unique(users).size)
    np.testing.assert_array_equal(req.index, np.flatnonzero(np.isin(users, chosen)))


def test_item_request_takes_all_rows_of_the_items(data):
    train = data.train_ds
    _, items = _train_arrays(train)
    req = sample_request(train, "item", item_ratio=0.05, seed=2020)
    chosen = np.unique(req.items)
    assert chosen.size == math.ceil(0.05 * np.unique(items).size)
    np.testing.assert_array_equal(req.index, np.flatnonzero(np.isin(items, chosen)))


@pytest.mark.parametrize("source", ["interaction", "user", "item"])
def test_same_seed_same_request_other_seed_other(data, source):
    a = sample_request(data.train_ds, source, seed=11)
    b = sample_request(data.train_ds, source, seed=11)
    c = sample_request(data.train_ds, source, seed=12)
    np.testing.assert_array_equal(a.index, b.index)
    assert not np.array_equal(a.index, c.index)


def test_make_request_uses_config_seed(data, tiny_config):
    config = tiny_config("WMF", seed=5)
    req = make_request(config, data)
    np.testing.assert_array_equal(req.index, sample_request(data.train_ds, "interaction", seed=5).index)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"user_ratio": 0}, "unrank_user_ratio"),
        ({"user_ratio": 1.5}, "unrank_user_ratio"),
        ({"user_ratio": -0.1}, "unrank_user_ratio"),
        ({"user_ratio": "lots"}, "unrank_user_ratio"),
        ({"user_ratio": None}, "unrank_user_ratio"),
        ({"inter_ratio": 0.0}, "unrank_inter_ratio"),
        ({"inter_ratio": 2}, "unrank_inter_ratio"),
        ({"inter_ratio": float("nan")}, "unrank_inter_ratio"),
    ],
)
def test_bad_ratios(data, kwargs, key):
    with pytest.raises(UnrankError, match=key):
        sample_request(data.train_ds, "interaction", **kwargs)


@pytest.mark.parametrize("ratio", [0, 1.01])
def test_bad_item_ratio(data, ratio):
    with pytest.raises(UnrankError, match="unrank_item_ratio"):
        sample_request(data.train_ds, "item", item_ratio=ratio)


@pytest.mark.parametrize("source", ["everything", "file", ""])
def test_unknown_source(data, source):
    with pytest.raises(UnrankError, match="request source"):
        sample_request(data.train_ds, source)


def test_ratio_one_takes_everything(data):
    req = sample_request(data.train_ds, "user", user_ratio=1.0)
    assert len(req) == len(data.train_ds)


# ------------------------------------------------------------------------------ file source
def test_file_round_trip(data, tmp_path):
    req = sample_request(data.train_ds, "interaction", seed=2020)
    path = str(tmp_path / "forget.inter")
    assert write_request_file(path, req, data.dataset) == path
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "user_id:token\titem_id:token"
    assert len(lines) == len(req) + 1
    back = read_request_file(path, data.dataset, data.train_ds)
    np.testing.assert_array_equal(back.index, req.index)
    np.testing.assert_array_equal(back.users, req.users)
    np.testing.assert_array_equal(back.items, req.items)
    assert back.source == "file" and back.skipped == 0
    assert not (tmp_path / "forget.inter.tmp").exists()


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _train_tokens(data, rows):
    ds, train = data.dataset, data.train_ds
    users, items = _train_arrays(train)
    return list(zip(ds.id2token(ds.uid_field, users[rows]), ds.id2token(ds.iid_field, items[rows])))


def test_file_with_extra_columns_in_any_order(data, tmp_path):
    toks = _train_tokens(data, [0, 5])
    text = "timestamp:float\titem_id:token\tuser_id:token\n" + "".join(f"1\t{i}\t{u}\n" for u, i in toks)
    req = read_request_file(_write(tmp_path / "r.inter", text), data.dataset, data.train_ds)
    np.testing.assert_array_equal(req.index, [0, 5])


def test_file_unknown_tokens_named(data, tmp_path):
    (u, i), = _train_tokens(data, [0])
    text = f"user_id:token\titem_id:token\n{u}\t{i}\nnobody_42\t{i}\n"
    with pytest.raises(UnrankError, match="nobody_42") as info:
        read_request_file(_write(tmp_path / "r.inter", text), data.dataset, data.train_ds)
    assert "user_id" in str(info.value)
    text = f"user_id:token\titem_id:token\n{u}\tno_such_item\n"
    with pytest.raises(UnrankError, match="no_such_item"):
        read_request_file(_write(tmp_path / "r2.inter", text), data.dataset, data.train_ds)


def test_file_without_the_two_columns(data, tmp_path):
    (u, i), = _train_tokens(data, [0])
    for header in ("user_id:token\tmovie:token", "uid:token\titem_id:token", "user_id:token"):
        text = f"{header}\n{u}\t{i}\n"
        with pytest.raises(UnrankError, match="needs the columns"):
            read_request_file(_write(tmp_path / "r.inter", text), data.dataset, data.train_ds)


def test_file_missing(data, tmp_path):
    with pytest.raises(UnrankError, match="does not exist"):
        read_request_file(str(tmp_path / "nope.inter"), data.dataset, data.train_ds)


def test_file_pairs_not_in_train_are_skipped(data, tmp_path):
    ds, train = data.dataset, data.train_ds
    train_pairs = _pairs(train)
    # A test-split pair (known tokens, not in train) and a pair seen nowhere.
    tu = data.test_ds.inter_feat[ds.uid_field].numpy()
    ti = data.test_ds.inter_feat[ds.iid_field].numpy()
    assert (int(tu[0]), int(ti[0])) not in train_pairs
    test_tok = (ds.id2token(ds.uid_field, [tu[0]])[0], ds.id2token(ds.iid_field, [ti[0]])[0])
    all_pairs = _pairs(ds)
    nowhere = next((u, i) for u in range(1, ds.user_num) for i in range(1, ds.item_num) if (u, i) not in all_pairs)
    nowhere_tok = (ds.id2token(ds.uid_field, [nowhere[0]])[0], ds.id2token(ds.iid_field, [nowhere[1]])[0])
    toks = _train_tokens(data, [3, 7]) + [test_tok, nowhere_tok, test_tok]  # a repeat counts once
    text = "user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u, i in toks)
    req = read_request_file(_write(tmp_path / "r.inter", text), ds, train)
    np.testing.assert_array_equal(req.index, [3, 7])
    assert req.skipped == 2
    assert req.summary()["skipped"] == 2


def test_empty_requests(data, tmp_path):
    with pytest.raises(UnrankError, match="no pairs"):
        read_request_file(_write(tmp_path / "r.inter", "user_id:token\titem_id:token\n\n"), data.dataset, data.train_ds)
    ds = data.dataset
    tu = data.test_ds.inter_feat[ds.uid_field].numpy()[:3]
    ti = data.test_ds.inter_feat[ds.iid_field].numpy()[:3]
    text = "user_id:token\titem_id:token\n" + "".join(
        f"{u}\t{i}\n" for u, i in zip(ds.id2token(ds.uid_field, tu), ds.id2token(ds.iid_field, ti))
    )
    with pytest.raises(UnrankError, match="empty"):  # every pair skipped
        read_request_file(_write(tmp_path / "r2.inter", text), ds, data.train_ds)
    with pytest.raises(UnrankError, match="empty"):
        request_from_pairs(data.train_ds, np.array([], dtype=np.int64), np.array([], dtype=np.int64), "file")


# ------------------------------------------------------------------------------ split
@pytest.mark.parametrize("source", ["interaction", "user", "item"])
def test_split_train_partitions_rows(data, source):
    train = data.train_ds
    req = sample_request(train, source, seed=2020)
    retain, forget = split_train(train, req)
    assert (retain.user_num, retain.item_num) == (train.user_num, train.item_num)
    assert (forget.user_num, forget.item_num) == (train.user_num, train.item_num)
    assert len(retain) + len(forget) == len(train)
    assert len(forget) == len(req)
    keep = np.ones(len(train), dtype=bool)
    keep[req.index] = False
    for field in (train.uid_field, train.iid_field):
        all_vals = train.inter_feat[field]
        assert torch.equal(retain.inter_feat[field], all_vals[torch.from_numpy(np.flatnonzero(keep))])
        assert torch.equal(forget.inter_feat[field], all_vals[torch.from_numpy(req.index)])
    assert _pairs(retain).isdisjoint(_pairs(forget))
    assert _pairs(retain) | _pairs(forget) == _pairs(train)
    assert _pairs(forget) == set(zip(req.users.tolist(), req.items.tolist()))
    assert len(train) == len(data.train_ds.inter_feat)  # the train split itself is untouched


# ------------------------------------------------------------------ request seed, core / edge
def test_request_seed_is_independent_of_the_training_seed(tmp_path):
    from conftest import make_tiny_config

    from recbole_unrank.pipeline import load_data, make_request

    def request(**kw):
        cfg = make_tiny_config(tmp_path, "WMF", **kw)
        return make_request(cfg, load_data(cfg))

    a = request(seed=2020, unrank_request_seed=11)
    b = request(seed=2020, unrank_request_seed=12)
    default = request(seed=2020)
    assert not np.array_equal(a.index, b.index)
    assert np.array_equal(default.index, request(seed=2020, unrank_request_seed=2020).index)
    # another training seed reshuffles the split but not the draw: the same users are chosen
    c = request(seed=7, unrank_request_seed=11)
    assert np.array_equal(np.unique(a.users), np.unique(c.users))


def test_core_and_edge_users(data):
    tiny_train = data.train_ds
    users = tiny_train.inter_feat[tiny_train.uid_field].numpy()
    deg = np.bincount(users)
    core = sample_request(tiny_train, "user", user_ratio=0.1, seed=1, user_selection="core")
    edge = sample_request(tiny_train, "user", user_ratio=0.1, seed=1, user_selection="edge")
    assert deg[np.unique(core.users)].min() > deg[np.unique(edge.users)].max()
    other = sample_request(tiny_train, "user", user_ratio=0.1, seed=2, user_selection="core")
    assert not np.array_equal(np.unique(core.users), np.unique(other.users))
    with pytest.raises(UnrankError, match="unrank_request_users"):
        sample_request(tiny_train, "user", user_selection="middle")


@pytest.mark.parametrize("kind", ["numpy", "tensor", "mask", "empty"])
def test_take_rows_equals_recboles_own_indexing(data, kind):
    """take_rows (the stream's retained data, the splits) gives the rows RecBole's
    ``ds.copy(ds.inter_feat[index])`` gives: same columns, values, dtypes and order."""
    train = data.train_ds
    n = len(train.inter_feat)
    rows = np.sort(np.random.default_rng(3).choice(n, n // 2, replace=False))
    if kind == "empty":
        rows = rows[:0]
    index = {"numpy": rows, "empty": rows, "tensor": torch.as_tensor(rows)}.get(kind)
    if kind == "mask":
        index = np.zeros(n, dtype=bool)
        index[rows] = True
    got = take_rows(train, index)
    want = train.copy(train.inter_feat[torch.as_tensor(rows, dtype=torch.long)])
    assert len(got.inter_feat) == rows.size
    assert set(got.inter_feat.interaction) == set(want.inter_feat.interaction)
    for key, column in want.inter_feat.interaction.items():
        assert got.inter_feat[key].dtype == column.dtype
        assert torch.equal(got.inter_feat[key], column), key
    assert got.user_num == train.user_num and got.item_num == train.item_num
    assert len(train.inter_feat) == n  # the source is untouched
