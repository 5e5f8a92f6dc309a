"""L2UnRank on real RecBole models (tiny data): adapters against autograd, the update's
contract (only request users move, no NaN, caches cleared), every ablation switch acts, inert
settings are refused, the guard keeps its documented word (one user included), and a request
whose items already rank low is still forgotten."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_tiny_config

import recbole_unrank.methods.pipeline as pipeline_module
from recbole_unrank import pipeline
from recbole_unrank.adapters import LightGCNAdapter, get_adapter
from recbole_unrank.data import method_valid
from recbole_unrank.errors import UnrankError
from recbole_unrank.evaluation.metrics import pair_ranks
from recbole_unrank.influence import RankProbe
from recbole_unrank.methods import METHODS
from recbole_unrank.methods.l2unrank import VARIANTS

MODELS = ["WMF", "NeuMF", "LightGCN"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One trained original per model on tiny, with its request (built once per module)."""
    out = {}
    for model in MODELS:
        work = tmp_path_factory.mktemp(model)
        config = make_tiny_config(work, model, epochs=8, learning_rate=0.01)
        run, _ = pipeline.prepare_run(config)
        run.prepare_original()
        out[model] = run
    return out


def _settings(run, name, **over):
    cls = METHODS[name]
    s = pipeline.method_settings(run.config, cls)
    s.update(over)
    return cls(**s)


def _unlearn(run, name, task=None, **over):
    return _settings(run, name, **over)(task or run._task())


@pytest.mark.parametrize("model", MODELS)
def test_l2unrank_demotes_the_request_and_keeps_the_contract(prepared, model):
    run = prepared[model]
    before_state = copy.deepcopy(run.original.state_dict())
    row = run.run_method("l2unrank", save=False)
    # The original is never touched: methods work on a copy.
    for k, v in run.original.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    unlearned = row["_model"]
    for p in unlearned.parameters():
        assert torch.isfinite(p).all()
    orig_row = run.rows[0]
    assert row["forget"]["mean_rank"] > orig_row["forget"]["mean_rank"]
    assert row["forget"]["forget_hit@10"] <= orig_row["forget"]["forget_hit@10"]
    assert row["steps"]["params"] == "blocks" and row["solve"]["converged"]
    # Only the request users' parameter rows moved (user-block path).
    req_users = torch.as_tensor(np.unique(run.request.users))
    changed_rows = set()
    for (name, new), old in zip(unlearned.state_dict().items(), before_state.values()):
        if new.shape != old.shape or new.dtype.is_floating_point is False:
            continue
        diff = (new - old).abs()
        if diff.dim() == 2 and diff.shape[0] == unlearned.n_users:
            changed_rows |= set(torch.nonzero(diff.sum(1) > 0).view(-1).tolist())
        else:
            assert diff.max() == 0, f"{name} changed outside the request users' blocks"
    assert changed_rows and changed_rows <= set(req_users.tolist())
    if model == "LightGCN":  # no stale cache, and the retained graph is in place
        fresh_u, fresh_i = get_adapter(unlearned).final_embeddings()
        if unlearned.restore_user_e is not None:
            assert torch.allclose(unlearned.restore_user_e, fresh_u, atol=1e-6)
            assert torch.allclose(unlearned.restore_item_e, fresh_i, atol=1e-6)
        from recbole_unrank.adapters.lightgcn_graph import live_edges  # dropped edges: explicit zeros

        assert live_edges(unlearned.norm_adj_matrix) == 2 * len(run.retain_ds.inter_feat)


def test_view_target_without_a_guard_meets_the_viewing_threshold(prepared):
    run = prepared["WMF"]
    row = run.run_method("l2unrank_view", save=False, evaluate_test=False, overrides={"unrank_utility_guard": 0.0})
    # Without a guard every user's forgotten items leave the top 10 (the grid reaches far enough).
    assert row["calibration"]["users_meeting_target"] == 1.0
    assert row["forget"]["forget_hit@10"] == 0.0


def _delta(run, result):
    before = dict(run.original.named_parameters())
    return torch.cat([(p.detach() - before[n].detach()).reshape(-1) for n, p in result.model.named_parameters()])


def _calibration_acted(info) -> bool:
    """The step search moved some user's scale off 1 (the influence step itself) or capped it."""
    cal = info["calibration"]
    return not (cal["step_min"] == cal["step_median"] == 1.0 and cal["step_cap"] is None)


@pytest.mark.parametrize("model", MODELS)
def test_every_ablation_switch_changes_the_update(prepared, model):
    """Each variant switches one step of l2unrank: its update differs from the default's."""
    run = prepared[model]
    result = _unlearn(run, "l2unrank")
    base = _delta(run, result)
    assert base.abs().max() > 0
    for name in VARIANTS:
        if name in ("l2unrank", "l2unrank_nocalib"):
            continue
        d = _delta(run, _unlearn(run, name))
        assert torch.isfinite(d).all(), name
        assert not torch.allclose(d, base, rtol=1e-5, atol=1e-7), f"{name} gave l2unrank's update"
    # l2unrank_nocalib switches the calibration off. On tiny the default target can be met at the
    # floor (scale 1) for every user, where the calibrated step IS the influence step: there the
    # two must agree exactly (a check of its own); the ablation is judged where the calibration
    # acts, with the stricter view target and no floor, which must move the step off scale 1.
    nocalib = _delta(run, _unlearn(run, "l2unrank_nocalib"))
    assert torch.isfinite(nocalib).all()
    if not _calibration_acted(result.info):
        assert torch.allclose(nocalib, base, rtol=1e-6, atol=1e-8)
    strict = _unlearn(run, "l2unrank", calib_target="view", step_floor=0.0)
    assert _calibration_acted(strict.info), strict.info["calibration"]
    assert not torch.allclose(nocalib, _delta(run, strict), rtol=1e-5, atol=1e-7), \
        "l2unrank_nocalib gave the calibrated update where the calibration acted"
    # hops act through the weights (1 vs 2 hops) and through the rows (0 vs 1 without weights)
    h1 = _delta(run, _unlearn(run, "l2unrank", hops=1))
    h2 = _delta(run, _unlearn(run, "l2unrank", hops=2))
    assert torch.equal(h1, base) and not torch.allclose(h1, h2, rtol=1e-5, atol=1e-7)
    n0 = _delta(run, _unlearn(run, "l2unrank_noweights", hops=0))
    n1 = _delta(run, _unlearn(run, "l2unrank_noweights", hops=1))
    assert not torch.allclose(n0, n1, rtol=1e-5, atol=1e-7)


def test_inert_settings_are_refused():
    cls = METHODS["l2unrank"]
    with pytest.raises(UnrankError, match="unrank_cg_steps=30 has no effect"):
        cls(cg_steps=30)
    with pytest.raises(UnrankError, match="unrank_cg_tol"):
        cls(cg_tol=1e-3)
    with pytest.raises(UnrankError, match="acts like 1"):
        METHODS["l2unrank_noweights"](hops=2)
    with pytest.raises(UnrankError, match="no p-hop scope"):
        METHODS["l2unrank_noscope"](hops=1)
    with pytest.raises(UnrankError, match="nothing to act on"):
        cls(hops=0)
    with pytest.raises(UnrankError, match="context term off"):
        cls(weights_at="gradient")
    with pytest.raises(UnrankError, match="hessian with exact user blocks"):
        cls(curvature="hessian")
    with pytest.raises(UnrankError, match="runs its T steps"):
        METHODS["l2unrank_paper"](cg_tol=1e-3)
    cls(update="all", cg_steps=50)  # the full-parameter path runs CG: accepted
    with pytest.raises(UnrankError, match="negative"):
        cls(hops=-1)
    with pytest.raises(UnrankError, match="> 0"):
        cls(damping=0)


def test_paper_preset_declares_the_paper(prepared):
    run = prepared["LightGCN"]
    result = _unlearn(run, "l2unrank_paper")
    st = result.info["steps"]
    assert st == {"rows": "request+context", "scope": "hops", "weights": "structural+semantic",
                  "weights_at": "gradient", "params": "all", "loss": "surrogate", "curvature": "hessian",
                  "solve": "cg_fixed", "step": "one", "graph": "scope", "spillover": False}
    assert result.info["hops"] == 1 and result.info["solve"]["iters"] <= 30
    assert _unlearn(prepared["WMF"], "l2unrank_paper").info["hops"] == 0


def test_nan_update_is_refused_and_nothing_saved(prepared, tmp_path, monkeypatch):
    run = prepared["WMF"]
    run_dir_before = run.run_dir
    run.run_dir = str(tmp_path)
    from recbole_unrank.methods import pipeline as mod

    original = mod.batched_block_solve
    monkeypatch.setattr(mod, "batched_block_solve", lambda A, b, d: original(A, b, d) * float("nan"))
    try:
        with pytest.raises(UnrankError, match="NaN/Inf"):
            run.run_method("l2unrank_nocalib")
    finally:
        run.run_dir = run_dir_before
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- the guard's word
def _valid_ndcg_sum(run, model, users: torch.Tensor, index=None) -> float:
    """The request users' validation NDCG@10 (retained history masked), computed here from the
    model's own full-sort scores: independent of the calibration's incremental scoring."""
    feat = run.data.train_ds.inter_feat
    tu, ti = feat[run.data.train_ds.uid_field], feat[run.data.train_ds.iid_field]
    keep = torch.ones(tu.numel(), dtype=torch.bool)
    keep[torch.as_tensor(run.request.index if index is None else index)] = False
    row_of = torch.full((model.n_users,), -1, dtype=torch.long)
    row_of[users] = torch.arange(users.numel())
    hist = keep & (row_of[tu] >= 0)
    valid = method_valid(run.data)  # the rows methods read (the monitor part is not theirs)
    vu, vi = valid.inter_feat[valid.uid_field], valid.inter_feat[valid.iid_field]
    mine = row_of[vu] >= 0
    empty = torch.zeros(0, dtype=torch.long)
    probe = RankProbe(users.numel(), row_of[tu[hist]], ti[hist], empty, empty, row_of[vu[mine]], vi[mine])
    model = model.eval()
    get_adapter(model).invalidate()
    with torch.no_grad():
        return float(probe.valid_ndcg(get_adapter(model).user_scores(users), 10).sum())


def _retained_graph_original(run, index=None):
    """The guard's starting model: the original (serving the retained graph, for graph models)."""
    model = copy.deepcopy(run.original)
    a = get_adapter(model)
    if a.is_graph:
        feat = run.data.train_ds.inter_feat
        keep = torch.ones(len(feat), dtype=torch.bool)
        keep[torch.as_tensor(run.request.index if index is None else index)] = False
        a.set_graph(feat[run.data.train_ds.uid_field][keep], feat[run.data.train_ds.iid_field][keep])
    return model


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("guard", [0.999, 0.9])
def test_guard_keeps_the_request_users_validation_ndcg(prepared, model, guard):
    run = prepared[model]
    result = _unlearn(run, "l2unrank", utility_guard=guard)
    users = torch.as_tensor(np.unique(run.request.users))
    start = _valid_ndcg_sum(run, _retained_graph_original(run), users)
    after = _valid_ndcg_sum(run, result.model, users)
    assert start > 0
    g = result.info["guard"]
    assert after / start >= guard - 1e-6
    assert g["request_users_valid_ndcg_ratio"] == pytest.approx(after / start, rel=1e-4, abs=1e-6)
    assert g["met"]
    if model == "LightGCN":  # the step moves other users: their sampled ratio is reported and held
        assert g["others_valid_ndcg_ratio"] is not None and g["others_valid_ndcg_ratio"] >= guard - 1e-6
    else:
        assert g["others_valid_ndcg_ratio"] is None


@pytest.mark.parametrize("model", ["WMF", "LightGCN"])
def test_guard_binds_for_a_single_user_request(prepared, model):
    """One request user: the guard is that user's own validation NDCG@10, and it holds."""
    run = prepared[model]
    vu = method_valid(run.data).inter_feat[run.data.valid_ds.uid_field].numpy()
    users = run.request.users
    user = next(int(u) for u in np.unique(users) if (vu == u).any())
    task = run._task()
    task.request_index = run.request.index[users == user]
    free = _unlearn(run, "l2unrank", task=task, utility_guard=0.0)
    task = run._task()
    task.request_index = run.request.index[users == user]
    guarded = _unlearn(run, "l2unrank", task=task, utility_guard=1.0)
    assert guarded.info["guard"]["request_users_valid_ndcg_ratio"] >= 1.0 - 1e-9
    assert guarded.info["guard"]["met"]
    # ... and binds where the free step loses utility
    if free.info["guard"]["request_users_valid_ndcg_ratio"] < 1.0:
        assert guarded.info["calibration"]["step_median"] < free.info["calibration"]["step_median"]


@pytest.mark.parametrize("model", ["WMF", "NeuMF"])
def test_a_user_no_step_brings_to_the_target_keeps_the_influence_step(prepared, model, monkeypatch):
    """A step direction that pulls the forgotten items up (the solve's sign flipped): no scale on
    the grid meets the target, every larger step moves them further from it, so each such user
    takes the measured step closest to the target, the floor (the influence step itself), not
    the grid's largest step."""
    run = prepared[model]
    from recbole_unrank.methods import pipeline as mod

    original = mod.batched_block_solve
    monkeypatch.setattr(mod, "batched_block_solve", lambda A, b, d: -original(A, b, d))
    # a deliberately wrong direction, not an ill-conditioned solve: the residual check is set aside
    monkeypatch.setattr(mod, "BLOCK_RESIDUAL_TOL", float("inf"))
    result = _unlearn(run, "l2unrank", utility_guard=0.0)
    c = result.info["calibration"]
    assert c["users_not_reached"] > 0
    assert c["step_median"] == pytest.approx(1.0) and c["step_min"] == pytest.approx(1.0)


def _whole_user_request(run, n_whole=2, with_partial=True):
    """Train rows forgetting every interaction of ``n_whole`` request users (the user task), and
    half of one more user's when ``with_partial``; returns (index, whole users, partial user)."""
    tu = run.data.train_ds.inter_feat[run.data.train_ds.uid_field].numpy()
    vu = method_valid(run.data).inter_feat[run.data.valid_ds.uid_field].numpy()
    users = [int(u) for u in np.unique(run.request.users) if (vu == u).any() and (tu == u).sum() >= 2]
    # the partial user: one the original serves well in validation (so the guard has a value)
    # (measured with half of the user's rows forgotten, as the request below forgets them)
    own = [_valid_ndcg_sum(run, run.original, torch.as_tensor([u]),
                           np.flatnonzero(tu == u)[: (tu == u).sum() // 2]) for u in users]
    part = users[int(np.argmax(own))]
    whole = [u for u in users if u != part][:n_whole]
    index = [np.flatnonzero(np.isin(tu, whole))]
    if with_partial:
        rows = np.flatnonzero(tu == part)
        index.append(rows[: rows.size // 2])
    return np.sort(np.concatenate(index)).astype(np.int64), whole, part


@pytest.mark.parametrize("model", MODELS)
def test_the_guard_leaves_out_users_forgotten_whole(prepared, model):
    """A user whose every train interaction is forgotten keeps no retained utility (retraining
    leaves them cold): the guard covers the request users who keep train interactions, and the
    ratio it reports and holds is theirs alone."""
    run = prepared[model]
    index, whole, part = _whole_user_request(run)
    task = run._task()
    task.request_index = index
    result = _unlearn(run, "l2unrank", task=task, utility_guard=0.999)
    g = result.info["guard"]
    assert (g["request_users_guarded"], g["request_users_fully_forgotten"]) == (1, len(whole))
    kept = torch.as_tensor([part])
    start = _valid_ndcg_sum(run, _retained_graph_original(run, index), kept, index)
    after = _valid_ndcg_sum(run, result.model, kept, index)
    assert start > 0
    assert g["request_users_valid_ndcg_ratio"] == pytest.approx(after / start, rel=1e-4, abs=1e-6)
    assert g["met"] and after / start >= 0.999 - 1e-6


@pytest.mark.parametrize("model", ["WMF", "NeuMF"])
def test_a_request_of_whole_users_is_not_capped_by_their_own_utility(prepared, model):
    """Only whole users, and a step that moves no one else (factor models): nothing is guarded,
    so the strictest guard chooses the same steps as none, and the steps reach the calibration
    target instead of stopping where the users' own validation NDCG would fall."""
    run = prepared[model]
    index, whole, _ = _whole_user_request(run, n_whole=3, with_partial=False)
    results = {}
    for guard in (0.0, 1.0):
        task = run._task()
        task.request_index = index
        results[guard] = _unlearn(run, "l2unrank", task=task, utility_guard=guard)
    strict, free = results[1.0].info, results[0.0].info
    assert (strict["guard"]["request_users_guarded"], strict["guard"]["request_users_fully_forgotten"]) == (0, 3)
    assert strict["calibration"]["step_cap"] is None and strict["guard"]["met"]
    assert strict["calibration"]["step_median"] == free["calibration"]["step_median"]
    for a, b in zip(results[1.0].model.parameters(), results[0.0].model.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- forgetting, not only unranking
@pytest.mark.parametrize("model", MODELS)
def test_a_request_already_below_the_threshold_is_still_forgotten(prepared, model):
    """Pairs that rank outside the top 10 before the request: the model still changes (their
    influence is removed: the influence step is the floor) and none of them enters the top 10."""
    run = prepared[model]
    ranks = run.rows[0]["ranks"]
    n_items = run.original.n_items
    low = set(int(k) for k, r in zip(ranks["keys"], ranks["ranks"]) if r > 10)
    assert low
    feat = run.data.train_ds.inter_feat
    key = (feat[run.data.train_ds.uid_field] * n_items + feat[run.data.train_ds.iid_field]).numpy()
    index = np.array([k for k in run.request.index if int(key[k]) in low], dtype=np.int64)
    assert index.size > 0
    task = run._task()
    task.request_index = index
    result = _unlearn(run, "l2unrank", task=task)
    assert _delta(run, result).abs().max() > 0
    assert result.info["calibration"]["users_with_new_entrants"] == 0
    users = torch.as_tensor(feat[run.data.train_ds.uid_field][index])
    items = torch.as_tensor(feat[run.data.train_ds.iid_field][index])
    keep = torch.ones(len(feat), dtype=torch.bool)
    keep[torch.as_tensor(index)] = False
    uniq, rows = torch.unique(users, return_inverse=True)
    row_of = torch.full((run.original.n_users,), -1, dtype=torch.long)
    row_of[uniq] = torch.arange(uniq.numel())
    hist = keep & (row_of[feat[run.data.train_ds.uid_field]] >= 0)

    def ranks(model):  # ranks with this request's retained history masked
        a = get_adapter(model.eval())
        a.invalidate()
        with torch.no_grad():
            scores = a.user_scores(uniq).clone()
        scores[:, 0] = -torch.inf
        scores[row_of[feat[run.data.train_ds.uid_field][hist]], feat[run.data.train_ds.iid_field][hist]] = -torch.inf
        return pair_ranks(scores, rows, items)

    before, after = ranks(_retained_graph_original(run, index)), ranks(result.model)
    outside = ranks(copy.deepcopy(run.original)) > 10
    assert outside.any()
    assert bool((after[outside] > 10).all())
    assert float(after.float().mean()) >= float(before.float().mean())


# ---------------------------------------------------------------------- adapters vs autograd
@pytest.mark.parametrize("model", MODELS)
def test_user_block_jacobian_equals_autograd(prepared, model):
    """d y_ui / d theta_u from the adapter equals autograd through the real model."""
    net = copy.deepcopy(prepared[model].original).double()
    adapter = get_adapter(net)
    if isinstance(adapter, LightGCNAdapter):  # propagate over the train graph in float64
        net.norm_adj_matrix = net.norm_adj_matrix.double()
    users = torch.tensor([1, 1, 2, 5])
    items = torch.tensor([3, 7, 3, 11])
    jac = adapter.user_block_jacobian(users, items)
    for b in range(users.numel()):
        u = int(users[b])
        tables = adapter.user_tables()
        y = adapter.pair_scores(users[b : b + 1], items[b : b + 1]).sum()
        gs = torch.autograd.grad(y, tables)
        grads = torch.cat([g[u] for g in gs])
        assert torch.allclose(jac[b].double(), grads, atol=1e-8), (model, b)


@pytest.mark.parametrize("model", MODELS)
def test_scores_with_delta_equal_applying_the_delta(prepared, model):
    net = copy.deepcopy(prepared[model].original)
    adapter = get_adapter(net)
    users = torch.tensor([2, 4])
    delta = 0.1 * torch.randn(2, adapter.user_dim(), generator=torch.Generator().manual_seed(0))
    scale = torch.tensor([0.5, 2.0])
    predicted = adapter.scores_with_delta(users, adapter.prepare_user_delta(users, delta), scale)
    adapter.apply_user_delta(users, scale[:, None] * delta)
    actual = adapter.user_scores(users)
    assert torch.allclose(predicted, actual, atol=1e-4)


def test_rank_probe_agrees_with_pair_ranks():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 12, generator=g)
    hist_rows, hist_items = torch.tensor([0, 0, 2]), torch.tensor([4, 5, 9])
    f_rows, f_items = torch.tensor([0, 1, 2, 2]), torch.tensor([3, 3, 1, 2])
    probe = RankProbe(3, hist_rows, hist_items, f_rows, f_items, torch.tensor([1]), torch.tensor([7]))
    masked = scores.clone()
    masked[:, 0] = -torch.inf
    masked[hist_rows, hist_items] = -torch.inf
    assert torch.equal(probe.forget_ranks(scores), pair_ranks(masked, f_rows, f_items))
    share = probe.forget_share_in_topk(scores, 3)
    ranks = pair_ranks(masked, f_rows, f_items)
    assert share[2] == ((ranks[2:] <= 3).float().mean())
    nd = probe.valid_ndcg(scores, 10)
    assert nd[0] == 0 and nd[2] == 0  # users without validation items
    r = int(pair_ranks(masked, torch.tensor([1]), torch.tensor([7])))
    assert nd[1] == pytest.approx(1 / np.log2(r + 1) if r <= 10 else 0.0)


def test_row_median_by_hand():
    from recbole_unrank.methods.calibration import row_median

    rows = torch.tensor([0, 2, 0, 0, 2, 2, 2])
    vals = torch.tensor([5.0, 1.0, 3.0, 9.0, 4.0, 2.0, 8.0])
    out = row_median(rows, vals, 4)
    assert out[0] == 5.0 and out[2] == 2.0  # lower median of {1, 2, 4, 8}
    assert torch.isnan(out[1]) and torch.isnan(out[3])


def test_retrain_demotes_the_request_on_a_small_dataset(prepared):
    """The retrained model's forget_hit@10 is at most the original's, and the request sinks
    on average (the model never saw it)."""
    run = prepared["WMF"]
    row = run.run_method("retrain", save=False)
    orig = run.rows[0]
    assert row["forget"]["forget_hit@10"] <= orig["forget"]["forget_hit@10"]
    assert row["forget"]["mean_rank"] > orig["forget"]["mean_rank"]


def test_per_row_gram_equals_summed_outer_products():
    from recbole_unrank.methods.objective import per_row_gram

    g = torch.Generator().manual_seed(3)
    rows = torch.tensor([2, 0, 2, 2, 1, 0])
    jac = torch.randn(6, 4, generator=g, dtype=torch.float64)
    c = torch.rand(6, generator=g, dtype=torch.float64)
    expected = torch.zeros(4, 4, 4, dtype=torch.float64)
    for r, j, w in zip(rows, jac, c):
        expected[r] += w * torch.outer(j, j)
    for budget in (1 << 20, 8):  # one chunk, and one row per chunk
        assert torch.allclose(per_row_gram(rows, jac, c, 4, budget=budget), expected)


def test_topk_share_agrees_with_ranks_including_ties():
    scores = torch.tensor([[0.0, 5.0, 3.0, 3.0, 1.0, 3.0], [0.0, 1.0, 2.0, 2.0, 2.0, 0.5]])
    probe = RankProbe(2, torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 0, 1, 1]),
                      torch.tensor([2, 4, 5, 3]), torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    ranks = probe.forget_ranks(scores)
    for k in (1, 2, 3, 4):
        share = probe.forget_share_in_topk(scores, k)
        expected = torch.zeros(2).index_add_(0, torch.tensor([0, 0, 1, 1]), (ranks <= k).float()) / 2
        assert torch.equal(share, expected), k


def test_context_term_with_an_empty_context_is_a_no_op(prepared, monkeypatch):
    """0 hops leaves the context term no row (regression, found by the tuner: LightGCN, 0 hops and
    the context term on raised an IndexError). The term then changes nothing: with the refusal
    set aside, the update equals the one without it, parameter for parameter; so a user who asks
    for it is refused with one line naming the key."""

    run = prepared["LightGCN"]
    with pytest.raises(UnrankError) as refused:
        _unlearn(run, "l2unrank_noweights", hops=0, use_context=True)
    assert "unrank_use_context" in str(refused.value) and "\n" not in str(refused.value)

    without = _unlearn(run, "l2unrank_noweights", hops=0, use_context=False)
    monkeypatch.setattr(pipeline_module, "check_model_settings", lambda *a, **k: None)
    with_ctx = _unlearn(run, "l2unrank_noweights", hops=0, use_context=True)
    assert with_ctx.info["gradient_rows"] == without.info["gradient_rows"] == len(run.request)
    a, b = without.model.state_dict(), with_ctx.model.state_dict()
    moved = False
    for k in a:
        if torch.is_floating_point(a[k]):
            assert torch.equal(a[k], b[k]), k  # the same rows in the same order: the same floats
            moved |= not torch.equal(a[k], run.original.state_dict()[k])
    assert moved, "the update itself moved the model"


def test_score_medians_decide_rank_medians_exactly():
    """The calibration compares medians of scores for medians of ranks: the same decision."""
    from recbole_unrank.methods.calibration import row_median

    g = torch.Generator().manual_seed(4)
    for _ in range(50):
        scores = torch.randint(0, 6, (1, 12), generator=g).float()  # many ties
        f, v = torch.randperm(12, generator=g)[:5], torch.randperm(12, generator=g)[:3]
        rows_f, rows_v = torch.zeros(5, dtype=torch.long), torch.zeros(3, dtype=torch.long)
        by_rank = row_median(rows_f, pair_ranks(scores, rows_f, f), 1) >= row_median(rows_v, pair_ranks(scores, rows_v, v), 1)
        by_score = row_median(rows_f, -scores[0, f], 1) >= row_median(rows_v, -scores[0, v], 1)
        assert bool(by_rank) == bool(by_score)
