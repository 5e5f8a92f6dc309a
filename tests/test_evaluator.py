"""The evaluator on its own (recbole_unrank.evaluator): one entry, evaluate(model, ..., split),
gives the rows the pipeline writes, without the orchestration around it.

Every value of a test row is checked against a computation made here from the model's dense
score matrix and the split's pairs (numpy, no code of the package): the ranks, RecBole's
top-10 metrics, the forget measures, the request users' utility and the fairness deltas."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import prepared_run

from recbole_unrank.evaluator import Evaluator

# The rows hold metrics rounded to RecBole's metric_decimal_place (4): half a unit of the last
# place, plus float32 summation slack.
ROUNDED = 6e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return prepared_run(tmp_path_factory.mktemp("evaluator"))


def _pairs(ds) -> tuple[np.ndarray, np.ndarray]:
    feat = ds.inter_feat
    return feat[ds.uid_field].numpy().astype(np.int64), feat[ds.iid_field].numpy().astype(np.int64)


def _dense_scores(model, n_users: int) -> np.ndarray:
    from recbole.data.interaction import Interaction

    model.eval()
    with torch.no_grad():
        users = torch.arange(n_users, dtype=torch.long)
        s = model.full_sort_predict(Interaction({model.USER_ID: users}))
    return s.reshape(n_users, -1).double().numpy()


def _ranks(scores: np.ndarray, masked: list, users: np.ndarray, items: np.ndarray, ties: str) -> np.ndarray:
    """Rank of each (user, item) among the user's unmasked items (padding item 0 masked too):
    for_pair 1 + #{s_j > s_p}, against_pair 1 + #{j != p: s_j >= s_p}."""
    s = scores.copy()
    s[:, 0] = -np.inf
    for u, i in masked:
        s[u, i] = -np.inf
    own = s[users, items][:, None]
    rows = s[users]
    if ties == "for_pair":
        return 1 + (rows > own).sum(1)
    return (rows >= own).sum(1)  # counts the pair itself once


def _by_user(users, ranks, k=10):
    """Per-user NDCG@k, Recall@k, Hit@k, MRR@k, Precision@k (RecBole's definitions), by hand."""
    out = {}
    for u in np.unique(users):
        r = np.sort(ranks[users == u])
        hits = r[r <= k]
        idcg = sum(1 / math.log2(j + 2) for j in range(min(r.size, k)))
        out[int(u)] = {"ndcg": sum(1 / math.log2(x + 1) for x in hits) / idcg, "recall": hits.size / r.size,
                       "hit": float(hits.size > 0), "mrr": 1 / hits[0] if hits.size else 0.0,
                       "precision": hits.size / k}
    return out


def _hand_row(run, model):
    """(per-user test measures, forget ranks by pair key) of ``model``, by hand."""
    train = run.data.train_ds
    n_users, n_items = int(train.user_num), int(train.item_num)
    scores = _dense_scores(model, n_users)
    ru, ri = _pairs(run.retain_ds)
    vu, vi = _pairs(run.data.valid_ds)
    tu, ti = _pairs(run.data.test_ds)
    # test: retained train history and the validation split masked (as RecBole's test loader)
    against = _ranks(scores, list(zip(np.r_[ru, vu], np.r_[ri, vi])), tu, ti, "against_pair")
    assert (against == _ranks(scores, list(zip(np.r_[ru, vu], np.r_[ri, vi])), tu, ti, "for_pair")).all(), \
        "ties among the test pairs' scores: RecBole's top-k order would be arbitrary, pick another fixture"
    fu, fi = _pairs(run.forget_ds)
    forget = _ranks(scores, list(zip(ru, ri)), fu, fi, "for_pair")  # retained history only
    return _by_user(tu, against), dict(zip((fu * n_items + fi).tolist(), forget.tolist()))


def _active(run) -> set:
    """The 20% most active users by train interactions (ties by smaller id), by hand."""
    u, _ = _pairs(run.data.train_ds)
    counts = {int(x): int((u == x).sum()) for x in np.unique(u)}
    n = max(1, math.ceil(0.2 * len(counts)))
    return set(sorted(counts, key=lambda x: (-counts[x], x))[:n])


def test_evaluator_rows_match_a_hand_computation(run):
    ev = Evaluator(run.config, run.data, run.request, run.retain_ds, run.forget_ds)
    ev.open()
    row, ranks = ev.evaluate(run.original, "original", 0.0)
    assert list(row) == ["method", "time_s", "test", "forget", "request_users", "fairness", "_probe"]
    per_user, forget = _hand_row(run, run.original)
    assert len(per_user) > 20 and len(forget) == len(run.request)

    # RecBole's metrics on the test split: the mean over test users of the per-user values
    for name in ("ndcg", "recall", "hit", "mrr", "precision"):
        want = np.mean([m[name] for m in per_user.values()])
        assert row["test"][f"{name}@10"] == pytest.approx(want, abs=ROUNDED), name

    # forget ranks: exactly the hand ranks, pair by pair; the measures follow from them
    got = dict(zip(ranks["keys"].tolist(), ranks["ranks"].tolist()))
    assert got == forget
    f = np.array(list(forget.values()), dtype=np.float64)
    assert row["forget"]["forget_hit@10"] == pytest.approx(np.mean(f <= 10), abs=ROUNDED)
    assert row["forget"]["mean_rank"] == pytest.approx(f.mean(), abs=ROUNDED * f.mean())
    assert "rdr" not in row["forget"]  # no reference yet: nothing to compare with

    # the request users' own test utility (per-user values are float64 from integer ranks)
    req = {int(u) for u in np.unique(run.request.users)} & set(per_user)
    assert row["request_users"]["users"] == len(req) > 0
    assert row["request_users"]["ndcg@10"] == pytest.approx(np.mean([per_user[u]["ndcg"] for u in req]), abs=1e-9)
    assert row["request_users"]["recall@10"] == pytest.approx(np.mean([per_user[u]["recall"] for u in req]),
                                                              abs=1e-9)


def test_fairness_is_the_hand_delta_of_active_and_other_users(run):
    """A model that differs from the original (seeded noise on every parameter): the fairness
    deltas are the mean per-user test NDCG@10 changes of the active 20% and of the others."""
    ev = Evaluator(run.config, run.data, run.request, run.retain_ds, run.forget_ds)
    ev.open()
    ev.evaluate(run.original, "original", 0.0)  # the first row is the original's
    moved = copy.deepcopy(run.original)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=gen))
    row, _ = ev.evaluate(moved, "moved", 0.0)
    before, _ = _hand_row(run, run.original)
    after, _ = _hand_row(run, moved)
    active = _active(run)
    delta = {u: after[u]["ndcg"] - before[u]["ndcg"] for u in before}
    want_a = np.mean([d for u, d in delta.items() if u in active])
    want_o = np.mean([d for u, d in delta.items() if u not in active])
    assert abs(want_a) + abs(want_o) > 1e-3, "the noise should move the test NDCG"
    assert row["fairness"]["active_ndcg@10_delta"] == pytest.approx(want_a, abs=1e-9)
    assert row["fairness"]["inactive_ndcg@10_delta"] == pytest.approx(want_o, abs=1e-9)


def test_valid_row_reads_the_monitor_part_and_rdr_compares_ranks(run):
    ev = Evaluator(run.config, run.data, run.request, run.retain_ds, run.forget_ds)
    ev.open()
    row, ranks = ev.evaluate(run.original, "original", 0.0)
    ev.reference = ranks
    valid, _ = ev.evaluate(run.original, "again", 1.5, {"note": 1}, split="valid")
    assert list(valid) == ["method", "time_s", "valid", "forget", "note"]
    assert valid["forget"]["rdr"] == pytest.approx(0.0)  # the original against itself
    assert valid["valid"]["ndcg@10"] == pytest.approx(ev.valid_score(run.original))
    ev.rows = [row]
    ev.finish()
    assert "_probe" not in row and "score_auc" in row["audit"]


def test_evaluate_refuses_an_unknown_split(run):
    with pytest.raises(ValueError, match="split"):
        run.evaluate(run.original, "original", 0.0, split="train")
