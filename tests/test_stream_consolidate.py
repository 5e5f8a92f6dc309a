"""The stream's ``consolidate`` policy (issue 23): the blocks a stream has touched, re-solved on
the retained data.

Known answer on tiny, float64: for WMF one sweep is the exact ALS re-solve, first of every touched
user's row (items fixed), then of every touched item's row (at the users just solved); rows the
stream did not touch stay bit for bit. As a stream policy it re-solves only the requests since
the last consolidation. A graph model fine-tunes the touched rows on the retained graph.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recbole_unrank import pipeline
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import METHODS
from recbole_unrank.stream import RequestStream, StreamSettings, consolidate_blocks, monitor_gain, recent_requests

# the budget of the stream tests that only need one that holds
GUARD = 0.95


def _pairs(ds):
    return ds.inter_feat[ds.uid_field].numpy(), ds.inter_feat[ds.iid_field].numpy()


def _als_resolve(model, u, i, keep, touched):
    """The exact ALS re-solve of WMF's loss (models/wmf.py) on the retained rows, written out:
    each touched user  (w0 Q^T Q + (1 + a - w0) sum_i q_i q_i^T + reg n_u I) p_u = (1 + a) sum_i q_i,
    then each touched item with a retained row, at the new users,
    (w0 sum_{u active} p_u p_u^T + (1 + a - w0) sum_u p_u p_u^T + reg n_i I) q_i = (1 + a) sum_u p_u."""
    a, w0, reg = model.alpha, model.negative_weight, model.reg_weight
    P = model.user_embedding.weight.detach().double().clone()
    Q = model.item_embedding.weight.detach().double().clone()
    d = P.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    ru, ri = u[keep], i[keep]
    for user in np.unique(u[touched]):
        q = Q[ri[ru == user]]
        A = w0 * Q.T @ Q + (1 + a - w0) * q.T @ q + reg * q.shape[0] * eye
        P[user] = torch.linalg.solve(A, (1 + a) * q.sum(0))
    active = P[np.unique(ru)]
    G = active.T @ active
    for item in np.unique(i[touched]):
        p = P[ru[ri == item]]
        if p.shape[0] == 0:
            continue  # no retained row: left as it is
        A = w0 * G + (1 + a - w0) * p.T @ p + reg * p.shape[0] * eye
        Q[item] = torch.linalg.solve(A, (1 + a) * p.sum(0))
    return P, Q


def _request_rows(config, data, n, per, seed=1001):
    return recent_requests(data.train_ds, n, per, seed=seed, time_field=config["TIME_FIELD"])


def test_wmf_consolidation_is_the_exact_als_resolve_of_the_touched_rows(wmf):
    config, data, original = wmf
    model = copy.deepcopy(original).double()
    u, i = _pairs(data.train_ds)
    touched = np.concatenate(_request_rows(config, data, 3, 3))
    keep = np.ones(u.size, dtype=bool)
    keep[touched] = False
    P_exp, Q_exp = _als_resolve(model, u, i, keep, touched)
    P0 = model.user_embedding.weight.detach().clone()
    Q0 = model.item_embedding.weight.detach().clone()

    info = consolidate_blocks(model, data.train_ds, keep, touched, sweeps=1, seed=3)

    P, Q = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    users, items = np.unique(u[touched]), np.unique(i[touched])
    assert info["kind"] == "blocks" and info["users"] == users.size
    # float64 d x d solves of well-conditioned systems (the L2 and all-entries terms): agreement
    # to ~1e-10 relative; 1e-8 leaves room for a different summation order, far below any step
    torch.testing.assert_close(P[users], P_exp[users], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(Q[items], Q_exp[items], rtol=1e-8, atol=1e-10)
    assert (P[users] - P0[users]).abs().max() > 1e-4  # the re-solve did move them
    others_u = np.setdiff1d(np.arange(P.shape[0]), users)
    others_i = np.setdiff1d(np.arange(Q.shape[0]), items)
    assert torch.equal(P[others_u], P0[others_u]) and torch.equal(Q[others_i], Q0[others_i])
    # at the re-solved point a second sweep's users move little (Gauss-Seidel on a coupled problem)
    assert info["residual_after"] < info["residual_before"]


def test_consolidation_refuses_zero_sweeps(wmf):
    config, data, original = wmf
    u, _ = _pairs(data.train_ds)
    keep = np.ones(u.size, dtype=bool)
    with pytest.raises(UnrankError, match="unrank_consolidate_sweeps"):
        consolidate_blocks(copy.deepcopy(original), data.train_ds, keep, np.array([0]), sweeps=0)


def _monitor_moves(stream, step):
    """The monitor's per-user NDCG@10 (40 users) moving by ``step`` for every user at every reading."""
    seen = [np.linspace(0.2, 0.6, 40)]

    def moving(model=None):
        seen[0] = seen[0] + step
        return seen[0].copy()

    stream.monitor_ndcg = moving


def _monitor_rises(stream):
    _monitor_moves(stream, 1e-3)


def _monitor_falls(stream):
    _monitor_moves(stream, -1e-3)


def test_monitor_gain_keeps_a_rise_beyond_its_noise_only():
    """A one-sided paired test: every user up -> kept; the same mean rise carried by a few
    users among many moving both ways -> within the noise, undone; no change or a fall -> undone."""
    before = np.linspace(0.1, 0.9, 200)
    assert monitor_gain(before, before + 0.01)["kept"]
    noisy = before + np.where(np.arange(200) % 2 == 0, 0.21, -0.19)  # mean +0.01, sd 0.2
    g = monitor_gain(before, noisy)
    assert g["mean"] == pytest.approx(0.01) and g["se"] == pytest.approx(0.2 / np.sqrt(200), rel=1e-2)
    assert not g["kept"]
    assert not monitor_gain(before, before)["kept"] and not monitor_gain(before, before - 0.01)["kept"]
    assert monitor_gain(before, noisy, z=0.5)["kept"]  # the same change against a weaker test


def test_a_consolidation_that_lowers_the_monitor_is_undone_and_the_request_stays(wmf):
    """Policy consolidate: where the monitor's NDCG@10 is not higher after the re-solve beyond
    its noise (:func:`monitor_gain`), the model is put back bit for bit as the request's update
    left it, the event says ``rolled_back``, the request stays forgotten and its blocks count as
    consolidated; where every monitor user rises, the re-solve is kept."""
    config, data, original = wmf
    cls = METHODS["l2unrank_twosided"]
    method = cls(**pipeline.method_settings(config, cls))
    for falls in (True, False):
        stream = RequestStream(config, data, copy.deepcopy(original), method, StreamSettings(0.5, "consolidate"),
                               make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds), seed=7)
        stream.valid_reference = 10.0  # every request breaks the budget
        (_monitor_falls if falls else _monitor_rises)(stream)
        unlearned = {}

        def spy(task, seen=unlearned):
            result = method(task)
            seen.update({k: v.detach().clone() for k, v in result.model.state_dict().items()})
            return result

        stream.method = spy
        rows = _request_rows(config, data, 1, 3, seed=1003)[0]
        ev = stream.apply(rows)["event"]
        assert ev["policy"] == "consolidate" and ev["rolled_back"] is falls
        assert ev["consolidation"]["users"] == 1 and stream.consolidated == 1
        assert not np.isin(rows, stream.kept).any()
        same = all(torch.equal(v, unlearned[k]) for k, v in stream.model.state_dict().items())
        assert same is falls  # undone: bit for bit the update's model; kept: the re-solve moved it
        if falls:
            assert ev["valid_after"] == ev["valid_before"]


def test_consolidate_policy_resolves_only_the_requests_since_the_last_one(wmf):
    config, data, original = wmf
    cls = METHODS["l2unrank_twosided"]
    method = cls(**pipeline.method_settings(config, cls))
    stream = RequestStream(config, data, copy.deepcopy(original), method, StreamSettings(0.5, "consolidate"),
                           make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds), seed=7)
    stream.valid_reference = 10.0  # every request breaks the budget
    _monitor_rises(stream)  # every re-solve is kept (the rollback has its own test)
    u, i = _pairs(data.train_ds)
    unlearned = {}

    def spy(task):  # the model as the update left it, before the policy acts
        result = method(task)
        unlearned.update({k: v.detach().clone() for k, v in result.model.state_dict().items()})
        return result

    stream.method = spy
    for k, rows in enumerate(_request_rows(config, data, 2, 3, seed=1002), 1):
        rec = stream.apply(rows)
        ev = rec["event"]
        assert ev["policy"] == "consolidate" and not ev["refused"] and ev["time_s"] > 0
        assert ev["consolidation"]["users"] == 1  # this request's user only: the earlier one was re-solved
        assert stream.consolidated == k == len(stream.applied)
        assert not np.isin(rows, stream.kept).any()  # the request stays forgotten
        P, Q = stream.model.user_embedding.weight.detach(), stream.model.item_embedding.weight.detach()
        P1, Q1 = unlearned["user_embedding.weight"], unlearned["item_embedding.weight"]
        moved_u = np.flatnonzero((P != P1).any(1).numpy())
        moved_i = np.flatnonzero((Q != Q1).any(1).numpy())
        assert set(moved_u) <= {int(u[rows[0]])} and moved_u.size == 1
        assert set(moved_i) <= set(i[rows].tolist()) and moved_i.size >= 1


def test_graph_model_consolidation_finetunes_the_touched_rows_on_the_retained_graph(lightgcn):
    config, data, original = lightgcn
    model = copy.deepcopy(original)
    u, i = _pairs(data.train_ds)
    touched = np.concatenate(_request_rows(config, data, 2, 3))
    keep = np.ones(u.size, dtype=bool)
    keep[touched] = False
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    info = consolidate_blocks(model, data.train_ds, keep, touched, epochs=1, lr=1e-2,
                              make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds))
    local = np.isin(u, u[touched]) | np.isin(i, i[touched])
    assert info["kind"] == "finetune_touched" and info["rows"] == int((local & keep).sum()) and info["steps"] >= 1
    after = model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    # the model now holds the retained graph: a forgotten edge is gone from its adjacency
    adj = model.norm_adj_matrix.coalesce() if hasattr(model.norm_adj_matrix, "coalesce") else None
    if adj is not None:
        idx = adj.indices()
        n_users = int(model.n_users)
        fu, fi = int(u[touched[0]]), int(i[touched[0]]) + n_users
        assert not ((idx[0] == fu) & (idx[1] == fi)).any()
    with pytest.raises(UnrankError, match="training loader"):
        consolidate_blocks(copy.deepcopy(original), data.train_ds, keep, touched)


# ------------------------------------------------------------------------------ with the journal
def test_pending_consolidation_is_what_no_consolidation_covered_yet():
    from recbole_unrank.journal import pending_consolidation

    def rec(pos, status, rows, policy=None):
        return {"position": pos, "status": status, "train_rows": rows,
                "event": None if policy is None else {"policy": policy}}

    requests = [rec(1, "applied", [1, 2]), rec(2, "applied", [3], "consolidate"), rec(3, "applied", [4, 5]),
                rec(4, "refused", []), rec(5, "failed", [9]), rec(6, "applied", [6]), rec(7, "applied", [7], "retrain"),
                rec(8, "applied", [8])]
    assert pending_consolidation(requests, 1).tolist() == [1, 2]
    assert pending_consolidation(requests, 2).tolist() == []  # the consolidation covered itself and before
    assert pending_consolidation(requests, 6).tolist() == [4, 5, 6]  # refused and failed rows were not applied
    assert pending_consolidation(requests, 7).tolist() == []
    assert pending_consolidation(requests, 8).tolist() == [8]


def test_a_resumed_journaled_stream_consolidates_as_the_uninterrupted_one(wmf, tmp_path):
    """Stop after request 5 (snapshot at 4), resume, go on: the same model, bit for bit, where the
    consolidation after the snapshot re-solves a request from before it (request 4)."""
    from conftest import DATA_PATH

    from recbole_unrank.api import make_config
    from recbole_unrank.journal import Journal, model_digest, open_journaled_stream, pending_consolidation

    config0, data, original = wmf
    ckpt = tmp_path / "wmf.pth"
    train, valid, _ = pipeline.make_loaders(config0, data)
    pipeline.train_model(config0, train, valid, str(ckpt), tag="original")
    requests = _request_rows(config0, data, 6, 2, seed=5)

    def argv(guard):
        return [f"--unrank_stream_guard={guard}", "--unrank_stream_policy=consolidate",
                "--unrank_method=l2unrank_twosided", f"--data_path={DATA_PATH}"]

    def run(folder, todo, guard):
        config, ck = make_config(checkpoint=str(ckpt), argv=argv(guard))
        with Journal(folder, snapshot_every=4) as j:
            stream = open_journaled_stream(config, ck, str(ckpt), j)
            for rows in todo:
                stream.apply(rows)
            return model_digest(stream.model), list(j.requests), [r.get("valid_ratio") for r in stream.records]

    # the budget is read off the stream itself: one that requests 1-4 keep and request 5 breaks
    _, _, ratios = run(tmp_path / "probe", requests[:5], 1e-6)
    kept, fifth = min(ratios[:4]), ratios[4]
    assert fifth < kept - 1e-3, f"request 5 must take the monitor NDCG below requests 1-4 (ratios {ratios})"
    guard = (kept + fifth) / 2
    whole, recs, _ = run(tmp_path / "A", requests, guard)
    events = [(r["position"], (r.get("event") or {}).get("policy")) for r in recs]
    # the case under test: rows pending at the snapshot (position 4), consolidated after it (5)
    assert pending_consolidation(recs, 4).size > 0 and events[4] == (5, "consolidate"), events
    run(tmp_path / "B", requests[:5], guard)  # stops after request 5: the snapshot at 4, record 5 after it
    resumed, _, _ = run(tmp_path / "B", requests[5:], guard)  # replays 5 from the snapshot (digest checked), then 6
    assert resumed == whole
