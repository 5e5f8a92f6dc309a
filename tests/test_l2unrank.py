"""L2UnRank on real RecBole models (tiny data): adapters against autograd, the update's
contract (only request users move, no NaN, caches cleared), demotion, presets, ablations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import make_tiny_config
from recbole_unrank import pipeline
from recbole_unrank.adapters import LightGCNAdapter, get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence import RankProbe
from recbole_unrank.methods import METHODS
from recbole_unrank.metrics import pair_ranks

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
    assert row["forget"]["rdr"] > 0
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
    assert changed_rows <= set(req_users.tolist())
    # LightGCN: no stale cache, and the retained graph is in place.
    if model == "LightGCN":
        # Evaluation refilled the cache: it must be that of the updated parameters.
        fresh_u, fresh_i = get_adapter(unlearned).final_embeddings()
        if unlearned.restore_user_e is not None:
            assert torch.allclose(unlearned.restore_user_e, fresh_u, atol=1e-6)
            assert torch.allclose(unlearned.restore_item_e, fresh_i, atol=1e-6)
        from recbole_unrank.adapters.lightgcn import live_edges  # dropped edges: explicit zeros

        assert live_edges(unlearned.norm_adj_matrix) == 2 * len(run.retain_ds.inter_feat)


def test_calibration_meets_the_viewing_threshold_where_the_guard_allows(prepared):
    run = prepared["WMF"]
    row = run.run_method("l2unrank", save=False, evaluate_test=False, overrides={"unrank_utility_guard": 0.0})
    # Without a guard every user's forgotten items leave the top 10 (the grid reaches far enough).
    assert row["users_meeting_view"] == 1.0
    assert row["forget"]["forget_hit@10"] == 0.0


@pytest.mark.parametrize("model", MODELS)
def test_paper_preset_and_ablations_run(prepared, model):
    run = prepared[model]
    for name in ["l2unrank_paper", "l2unrank_noscope", "l2unrank_noweights", "l2unrank_nocurv",
                 "l2unrank_context", "l2unrank_nosem", "l2unrank_nostruct", "l2unrank_nocalib"]:
        row = run.run_method(name, save=False, evaluate_test=False)
        assert all(torch.isfinite(p).all() for p in row["_model"].parameters()), name
        assert np.isfinite(row["forget"]["mean_rank"]), name


def test_nan_update_is_refused_and_nothing_saved(prepared, tmp_path, monkeypatch):
    run = prepared["WMF"]
    run_dir_before = run.run_dir
    run.run_dir = str(tmp_path)
    from recbole_unrank.methods import l2unrank as mod

    original = mod.batched_block_solve
    monkeypatch.setattr(mod, "batched_block_solve", lambda A, b, d: original(A, b, d) * float("nan"))
    try:
        with pytest.raises(UnrankError, match="NaN/Inf"):
            run.run_method("l2unrank", overrides={"unrank_calibrate": False})
    finally:
        run.run_dir = run_dir_before
    assert list(tmp_path.iterdir()) == []


def test_bad_settings_are_refused():
    with pytest.raises(UnrankError, match="negative"):
        METHODS["l2unrank"](hops=-1)
    with pytest.raises(UnrankError, match="> 0"):
        METHODS["l2unrank"](damping=0)


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
        tables = ([net.user_embedding] if model != "NeuMF" else [net.user_mf_embedding, net.user_mlp_embedding])
        y = adapter.pair_scores(users[b : b + 1], items[b : b + 1]).sum()
        gs = torch.autograd.grad(y, [t.weight for t in tables])
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


def test_retrain_demotes_the_request_on_a_small_dataset(prepared):
    """Issue 3: the retrained model's forget_hit@10 is at most the original's, and the
    request sinks on average (the model never saw it)."""
    run = prepared["WMF"]
    row = run.run_method("retrain", save=False)
    orig = run.rows[0]
    assert row["forget"]["forget_hit@10"] <= orig["forget"]["forget_hit@10"]
    assert row["forget"]["mean_rank"] > orig["forget"]["mean_rank"]


def test_per_row_gram_equals_summed_outer_products():
    from recbole_unrank.methods.l2unrank import per_row_gram

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


def test_context_term_with_an_empty_context_is_a_no_op(prepared):
    """Regression (found by the tuner): LightGCN, 0 hops and the context term on raised an
    IndexError, because 0 hops leaves no context pair."""
    run = prepared["LightGCN"]
    row = run.run_method("l2unrank", save=False, evaluate_test=False,
                         overrides={"unrank_hops": 0, "unrank_use_context": True})
    assert np.isfinite(row["forget"]["mean_rank"])
