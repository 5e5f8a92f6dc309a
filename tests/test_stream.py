"""Request streams (issue 15): many requests in a row on one model, a cumulative budget.

On tiny: the requests are each user's most recent retained interactions; the measures
(per-user NDCG, ranks, the score AUC) agree with RecBole's evaluator or hand-made answers;
a stream shrinks the retained data request by request; the cumulative budget breaks where it
should and each policy does what it says (refuse undoes the request, finetune and retrain
keep it and change the model); a LightGCN stream keeps its local propagation exact.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recbole_unrank import pipeline
from recbole_unrank.adapters import get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.evaluation import metrics
from recbole_unrank.methods import METHODS
from recbole_unrank.stream import (
    RequestStream,
    StreamSettings,
    pair_ranks,
    recent_requests,
    score_auc,
    user_ndcg,
)


def _stream(config, data, model, guard=0.0, policy="refuse"):
    cls = METHODS["l2unrank"]
    method = cls(**pipeline.method_settings(config, cls))

    def train_fresh(ds):
        train, valid, _ = pipeline.make_loaders(config, data, ds)
        return pipeline.train_model(config, train, valid, None, tag="retrain")

    return RequestStream(config, data, copy.deepcopy(model), method, StreamSettings(guard, policy),
                         train_fresh=train_fresh,
                         make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds), seed=7)


# ------------------------------------------------------------------------------ measures
def test_score_auc_on_hand_made_scores():
    assert score_auc(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.5)
    assert score_auc(np.array([5.0, 6.0]), np.array([1.0, 2.0, 3.0])) == 1.0
    assert score_auc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0
    assert score_auc(np.array([1.0, 3.0]), np.array([2.0])) == pytest.approx(0.5)
    assert np.isnan(score_auc(np.array([]), np.array([1.0])))


def test_user_ndcg_agrees_with_recboles_evaluator(wmf):
    config, data, model = wmf
    _, _, test = pipeline.make_loaders(config, data)
    res, _ = metrics.evaluate_loader(model, test, ["NDCG"], [10])
    tu = data.test_ds.inter_feat[data.test_ds.uid_field].numpy()
    ti = data.test_ds.inter_feat[data.test_ds.iid_field].numpy()
    hu = np.concatenate([d.inter_feat[d.uid_field].numpy() for d in (data.train_ds, data.valid_ds)])
    hi = np.concatenate([d.inter_feat[d.iid_field].numpy() for d in (data.train_ds, data.valid_ds)])
    mine = user_ndcg(get_adapter(model), np.unique(tu), (hu, hi), (tu, ti), chunk=7)
    assert float(mine.mean()) == pytest.approx(res["ndcg@10"], abs=1e-4)


def test_pair_ranks_put_the_top_item_first(wmf):
    _, data, model = wmf
    adapter = get_adapter(model)
    scores = adapter.user_scores(torch.tensor([3]))[0].numpy()
    scores[0] = -np.inf
    best = int(np.argmax(scores))
    ranks, s = pair_ranks(adapter, (np.array([3]), np.array([best])), (np.zeros(0, int), np.zeros(0, int)))
    assert ranks[0] == 1 and s[0] == pytest.approx(scores[best])


def test_recent_requests_take_the_newest_retained_interactions(wmf):
    config, data, _ = wmf
    train = data.train_ds
    u = train.inter_feat[train.uid_field].numpy()
    ts = train.inter_feat[config["TIME_FIELD"]].numpy()
    reqs = recent_requests(train, 12, 3, seed=1001, time_field=config["TIME_FIELD"])
    assert len(reqs) == 12 and all(r.size == 3 for r in reqs)
    seen = {}
    for rows in reqs:
        user = int(u[rows[0]])
        assert (u[rows] == user).all()
        left = np.setdiff1d(np.flatnonzero(u == user), np.concatenate([rows] + seen.get(user, [])))
        assert left.size >= 3  # at least min_left stay
        assert ts[rows].min() >= ts[left].max()  # the newest of what was retained
        seen.setdefault(user, []).append(rows)
    assert len({int(u[r[0]]) for r in reqs[:5]}) == 5  # a first round draws distinct users
    assert recent_requests(train, 12, 3, seed=1001, time_field=config["TIME_FIELD"])[4].tolist() == reqs[4].tolist()
    with pytest.raises(UnrankError, match="requests of"):
        recent_requests(train, 100000, 3, seed=1)


def test_stream_settings_are_checked_and_read_from_the_config(wmf):
    config, _, _ = wmf
    s = StreamSettings.from_config(config)
    assert (s.guard, s.policy) == (0.95, "retrain")  # the documented defaults
    with pytest.raises(UnrankError, match="unrank_stream_policy"):
        StreamSettings(0.9, "ignore")
    with pytest.raises(UnrankError, match="unrank_stream_guard"):
        StreamSettings(1.5, "refuse")


# ------------------------------------------------------------------------------ streams
def test_a_stream_forgets_request_after_request(wmf):
    config, data, model = wmf
    stream = _stream(config, data, model)
    reqs = recent_requests(data.train_ds, 4, 3, seed=1001, time_field=config["TIME_FIELD"])
    n = len(data.train_ds.inter_feat)
    for k, rows in enumerate(reqs, 1):
        rec = stream.apply(rows)
        assert rec["event"] is None and rec["request"] == k
        assert stream.kept.size == n - 3 * k and not np.isin(rows, stream.kept).any()
    assert np.array_equal(np.sort(stream.forgotten_rows()), np.sort(np.concatenate(reqs)))
    with pytest.raises(UnrankError, match="retained"):
        stream.apply(reqs[0])  # forgotten already


def test_cumulative_budget_refuse_undoes_the_request(wmf):
    config, data, model = wmf
    stream = _stream(config, data, model, guard=0.5, policy="refuse")
    stream.valid_reference = 10.0  # NDCG <= 1 < 0.5 x 10: this request breaks the budget
    before = {k: v.clone() for k, v in stream.model.state_dict().items()}
    rows = recent_requests(data.train_ds, 1, 3, seed=1001, time_field=config["TIME_FIELD"])[0]
    kept = stream.kept.copy()
    rec = stream.apply(rows)
    assert rec["event"]["policy"] == "refuse" and rec["event"]["refused"]
    assert np.array_equal(stream.kept, kept) and stream.applied == []
    for k, v in stream.model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("policy", ["finetune", "retrain"])
def test_cumulative_budget_consolidates_and_keeps_the_request(wmf, policy):
    config, data, model = wmf
    stream = _stream(config, data, model, guard=0.5, policy=policy)
    real = stream.valid_reference
    stream.valid_reference = 10.0  # this request breaks the budget
    rows = recent_requests(data.train_ds, 1, 3, seed=1001, time_field=config["TIME_FIELD"])[0]
    unlearned = {}
    method = stream.method

    def spy(task):  # the model as the method left it, before the policy acts
        result = method(task)
        unlearned.update({k: v.detach().clone() for k, v in result.model.state_dict().items()})
        return result

    stream.method = spy
    rec = stream.apply(rows)
    assert real < 1.0
    ev = rec["event"]
    assert ev["policy"] == policy and not ev["refused"] and ev["time_s"] > 0
    assert not np.isin(rows, stream.kept).any()  # the request stays forgotten
    assert ev["valid_after"] == pytest.approx(stream.valid_ndcg() / stream.valid_reference)
    after = stream.model.state_dict()  # the policy did change the model
    assert any(not torch.allclose(after[k].float(), v.float()) for k, v in unlearned.items() if v.is_floating_point())


def test_no_budget_no_events(wmf):
    config, data, model = wmf
    stream = _stream(config, data, model, guard=0.0)
    for rows in recent_requests(data.train_ds, 3, 3, seed=1002, time_field=config["TIME_FIELD"]):
        rec = stream.apply(rows)
        assert rec["event"] is None and "valid_ratio" not in rec


def test_lightgcn_stream_keeps_local_propagation_exact(lightgcn):
    """Five requests in a row on LightGCN: the graph is the retained one, the local state
    stays the same object (never rebuilt) and equals a full propagation."""
    from recbole_unrank.adapters import normalized_adjacency
    from recbole_unrank.adapters.lightgcn_graph import live_edges

    config, data, model = lightgcn
    stream = _stream(config, data, model)
    get_adapter(stream.model).local()
    st = stream.model._unrank_local
    for rows in recent_requests(data.train_ds, 5, 3, seed=1003, time_field=config["TIME_FIELD"]):
        stream.apply(rows)
    m = stream.model
    assert m._unrank_local is st
    u, i = stream.history()
    assert live_edges(m.norm_adj_matrix) == 2 * u.size
    rebuilt = normalized_adjacency(torch.as_tensor(u), torch.as_tensor(i), int(m.n_users), int(m.n_items))
    adapter = get_adapter(m)
    full = adapter._propagate(rebuilt, adapter._ego().detach())
    assert float((st.final - full).abs().max()) < 1e-5


@pytest.mark.parametrize("which", ["wmf", "lightgcn"])
def test_a_method_that_raises_leaves_the_model_bit_identical(request, which):
    """A method that fails half way (here: after l2unrank changed the parameters and, on
    LightGCN, dropped the request's edges) leaves the stream as before the request: every
    parameter and the graph bit-identical, caches cleared, nothing recorded; the next request
    runs on the restored model."""
    config, data, model = request.getfixturevalue(which)
    stream = _stream(config, data, model)
    m = stream.model
    state = {k: v.clone() for k, v in m.state_dict().items()}
    graph = m.norm_adj_matrix.to_dense().clone() if hasattr(m, "norm_adj_matrix") else None
    users = torch.arange(1, 6)
    scores = get_adapter(m).user_scores(users).detach().clone()
    real = stream.method

    def failing(task):
        real(task)  # changes the model in place
        changed = any(not torch.equal(v, state[k]) for k, v in task.model.state_dict().items())
        assert changed
        if graph is not None:
            assert not torch.equal(task.model.norm_adj_matrix.to_dense(), graph)
        raise RuntimeError("boom")

    stream.method = failing
    reqs = recent_requests(data.train_ds, 2, 3, seed=1004, time_field=config["TIME_FIELD"])
    kept = stream.kept.copy()
    with pytest.raises(RuntimeError, match="boom"):
        stream.apply(reqs[0])
    assert stream.model is m and stream.records == [] and stream.applied == []
    assert np.array_equal(stream.kept, kept)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    if graph is not None:
        assert torch.equal(m.norm_adj_matrix.to_dense(), graph)
        assert m.restore_user_e is None and getattr(m, "_unrank_local", None) is None
    assert torch.allclose(get_adapter(m).user_scores(users), scores, rtol=1e-6, atol=1e-6)
    stream.method = real  # the stream goes on from the restored model
    rec = stream.apply(reqs[0])
    assert rec["request"] == 1 and not np.isin(reqs[0], stream.kept).any()


def test_a_refused_solve_in_a_lightgcn_stream_leaves_the_graph_and_model_as_they_were(lightgcn):
    """A real refusal (update all, CG capped at 1 step) after the request's edges were dropped:
    the stream restores the graph and the parameters and records nothing."""
    config, data, model = lightgcn
    stream = _stream(config, data, model)
    cls = METHODS["l2unrank_nocalib"]
    stream.method = cls(**{**pipeline.method_settings(config, cls), "update": "all", "cg_steps": 1})
    m = stream.model
    state = {k: v.clone() for k, v in m.state_dict().items()}
    graph = m.norm_adj_matrix.to_dense().clone()
    rows = recent_requests(data.train_ds, 1, 3, seed=1005, time_field=config["TIME_FIELD"])[0]
    with pytest.raises(UnrankError, match="unrank_cg_steps"):
        stream.apply(rows)
    assert stream.records == [] and stream.applied == []
    assert torch.equal(m.norm_adj_matrix.to_dense(), graph)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("key, value", [("unrank_audit_shadows", 4), ("unrank_audit_shadow_epochs", 2)])
def test_the_lira_audit_settings_are_refused_by_a_stream(wmf, key, value):
    """The LiRA audit sizes a run's rows; a stream reports no audit per request: one line, not ignored."""
    config, data, model = wmf
    config[key] = value
    try:
        with pytest.raises(UnrankError, match=f"{key}={value} has no effect in a request stream"):
            _stream(config, data, model)
    finally:
        config[key] = None if key == "unrank_audit_shadow_epochs" else 0
    _stream(config, data, model)  # unset again: the stream builds
