"""Known answers for the headline path, on tiny float64 problems.

* ``l2unrank``'s user-block step (``unrank_calibrate: False``) equals, per request user, the
  dense solve ``Delta_u = (H_u + lambda I)^{-1} g_u`` with ``g_u`` and ``H_u`` taken by
  autograd (gradient and Hessian of the same weighted loss, restricted to ``p_u``), on WMF and
  on a dot-product BPR; for these models the Gauss-Newton block is the exact Hessian.
* ``unrank_update: all`` runs end to end: its CG solve converges, and the applied step equals a
  dense solve with the Gauss-Newton matrix built column by column.
* The solve contracts: a block solve whose residual is above ``BLOCK_RESIDUAL_TOL`` is refused
  and a CG solve (``cg``, "to convergence") stopped at its cap is refused, each with one line
  naming the setting to raise and the model left bit-identical; the paper's fixed-step
  ``cg_fixed`` is flagged, not refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_config

from recbole_unrank import pipeline
from recbole_unrank.adapters import get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence import influence_scope, influence_weights
from recbole_unrank.methods import METHODS
from recbole_unrank.methods import pipeline as influence_pipeline
from recbole_unrank.methods.objective import Objective


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained WMF and BPR on tiny, each with its request."""
    out = {}
    for key, model, over in (("WMF", "WMF", {}), ("BPR", "BPR", {}), ("WMF8", "WMF", {"embedding_size": 8})):
        config = make_tiny_config(tmp_path_factory.mktemp(key), model, epochs=4, learning_rate=0.01, **over)
        run, _ = pipeline.prepare_run(config)
        run.prepare_original()
        out[key] = run
    return out


def _method(run, name, **over):
    cls = METHODS[name]
    s = pipeline.method_settings(run.config, cls)
    s.update(over)
    return cls(**s)


def _double_task(run):
    """The run's task on a float64 copy of the original."""
    return run._task(copy.deepcopy(run.original).double())


def _rows(run, task):
    feat = task.train_ds.inter_feat
    users = feat[task.train_ds.uid_field]
    items = feat[task.train_ds.iid_field]
    target = torch.as_tensor(task.request_index, dtype=torch.long)
    return users, items, target


def _negatives(task, n):
    """The negatives the pipeline samples (one per train row, seeded by the task's seed)."""
    gen = torch.Generator(device="cpu").manual_seed(int(task.seed))
    return torch.randint(1, get_adapter(task.model).n_items, (n, 1), generator=gen)


@pytest.mark.parametrize("model", ["WMF", "BPR"])
def test_user_block_step_equals_a_dense_weighted_solve(runs, model):
    run = runs[model]
    task = _double_task(run)
    fresh = copy.deepcopy(task.model)  # the float64 original, untouched by the method
    result = _method(run, "l2unrank_nocalib")(task)
    assert result.info["solve"]["converged"] and result.info["solve"]["method"] == "block"
    adapter = get_adapter(fresh)
    P = adapter.user_tables()[0]
    assert P.dtype == torch.float64
    applied = get_adapter(result.model).user_tables()[0].detach() - P.detach()

    users, items, target = _rows(run, task)
    req = torch.unique(users[target])
    scope = influence_scope(users, items, target, 1).scope_index
    ue, ie = adapter.final_embeddings()
    w = influence_weights(users, items, target, scope, ue, ie, True, True).to(torch.float32)
    mine = torch.isin(users[scope], req)
    h_index, h_w = scope[mine], w[mine].to(torch.float64)
    assert not torch.allclose(h_w, torch.ones_like(h_w))  # the weights are not all 1 here
    obj = Objective(adapter, users, items, _negatives(task, users.numel()), "training",
                    int(run.config["train_batch_size"]))
    # g_u: gradient of the request's own loss; H_u: Hessian of the weighted retained-scope loss
    # (WMF's all-entries term included), both with respect to the request users' rows of P.
    (g,) = torch.autograd.grad(obj.loss(target), P)
    (gh,) = torch.autograd.grad(obj.loss(h_index, h_w, gram=True), P, create_graph=True)
    d = P.shape[1]
    H = torch.zeros(req.numel(), d, d, dtype=torch.float64)
    for k in range(d):
        v = torch.zeros_like(P)
        v[req, k] = 1.0  # users' blocks are independent: one product gives column k of every H_u
        (hv,) = torch.autograd.grad(gh, P, v, retain_graph=True)
        H[:, :, k] = hv[req]
    assert torch.allclose(H, H.transpose(1, 2), atol=1e-9)
    lam = float(_method(run, "l2unrank_nocalib").s["damping"])
    expected = torch.linalg.solve(H + lam * torch.eye(d, dtype=torch.float64), g[req].unsqueeze(-1)).squeeze(-1)
    assert expected.norm() > 0
    torch.testing.assert_close(applied[req], expected, rtol=1e-7, atol=1e-10)
    others = torch.ones(P.shape[0], dtype=torch.bool)
    others[req] = False
    assert applied[others].abs().max() == 0


def test_update_all_runs_end_to_end_and_equals_a_dense_solve(runs):
    """``unrank_update: all`` on WMF (float64): CG converges, and the step over every parameter
    equals ``(G + lambda I)^{-1} g`` with the Gauss-Newton matrix ``G`` built densely."""
    run = runs["WMF8"]  # embedding size 8: the Gauss-Newton matrix is small enough to build
    task = _double_task(run)
    fresh = copy.deepcopy(task.model)
    method = _method(run, "l2unrank_nocalib", update="all", cg_tol=1e-12, cg_steps=5000)
    assert method.plan.params == "all" and method.plan.solve == "cg"
    result = method(task)
    solve = result.info["solve"]
    assert solve["method"] == "cg" and solve["converged"] and solve["rel_residual"] <= 1e-12
    adapter = get_adapter(fresh)
    params = adapter.params()
    before = torch.cat([q.detach().reshape(-1) for q in params])
    after = torch.cat([q.detach().reshape(-1) for q in get_adapter(result.model).params()])

    users, items, target = _rows(run, task)
    scope = influence_scope(users, items, target, 0).scope_index  # update all, factor model: 0 hops
    ue, ie = adapter.final_embeddings()
    w = influence_weights(users, items, target, scope, ue, ie, True, True).to(torch.float32).to(torch.float64)
    obj = Objective(adapter, users, items, _negatives(task, users.numel()), "training",
                    int(run.config["train_batch_size"]))
    grads = torch.autograd.grad(obj.loss(target), params)
    g = torch.cat([gr.reshape(-1) for gr in grads])
    op = obj.gauss_newton(scope, w, True, params)
    n = g.numel()
    assert n <= 4000, "the dense check is for tiny problems"
    eye = torch.eye(n, dtype=torch.float64)
    G = torch.stack([op(eye[k]) for k in range(n)], 1)
    lam = float(method.s["damping"])
    expected = torch.linalg.solve(G + lam * eye, g)
    assert expected.norm() > 0
    torch.testing.assert_close(after - before, expected, rtol=1e-6, atol=1e-10)


# ------------------------------------------------------------------------- solve contracts
def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, state):
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_block_solve_above_the_residual_tolerance_is_refused(runs, monkeypatch):
    """A block solve whose residual is above BLOCK_RESIDUAL_TOL is refused (one line, naming
    unrank_damping) before anything is applied."""
    run = runs["WMF"]
    real = influence_pipeline.batched_block_solve
    monkeypatch.setattr(influence_pipeline, "batched_block_solve", lambda H, g, lam: 0.9 * real(H, g, lam))
    task = run._task()
    state = _state(task.model)
    with pytest.raises(UnrankError, match=r"relative residual .* above 0\.001.*raise unrank_damping") as err:
        _method(run, "l2unrank")(task)
    assert "\n" not in str(err.value)
    _assert_same(task.model, state)
    monkeypatch.setattr(influence_pipeline, "batched_block_solve", real)  # the exact solve passes
    result = _method(run, "l2unrank")(run._task())
    assert result.info["solve"]["rel_residual"] < influence_pipeline.BLOCK_RESIDUAL_TOL


@pytest.mark.parametrize("name, over, key", [
    ("l2unrank_nocalib", {"update": "all", "cg_steps": 2}, "unrank_cg_steps"),
    ("if", {"cg_steps": 2}, "unrank_baseline_cg_steps"),
])
def test_a_cg_solve_stopped_at_its_cap_is_refused(runs, name, over, key):
    """``cg`` runs "to convergence": stopped at the cap above the tolerance, the step is
    refused with one line naming the setting to raise, and the model is left bit-identical."""
    run = runs["WMF"]
    task = run._task()
    state = _state(task.model)
    with pytest.raises(UnrankError, match=rf"cap of 2 iterations.*raise {key} or unrank_damping") as err:
        _method(run, name, **over)(task)
    assert "\n" not in str(err.value)
    _assert_same(task.model, state)


def test_the_papers_fixed_step_solve_is_flagged_not_refused(runs):
    """``cg_fixed`` (the paper's T = 30 steps) stopped above its tolerance: applied, flagged."""
    run = runs["WMF"]
    task = run._task()
    state = _state(task.model)
    method = _method(run, "l2unrank_paper")
    assert method.plan.solve == "cg_fixed"
    result = method(task)
    solve = result.info["solve"]
    assert solve["iters"] == 30 and not solve["converged"] and solve["unconverged"] is True
    assert any(not torch.equal(v, state[k]) for k, v in result.model.state_dict().items())


# ------------------------------------------------------------ LightGCN's L2 surrogate
@pytest.fixture(scope="module")
def lightgcn(tmp_path_factory):
    config = make_tiny_config(tmp_path_factory.mktemp("LightGCN"), "LightGCN", epochs=3, learning_rate=0.01)
    run, _ = pipeline.prepare_run(config)
    run.prepare_original()
    return run


def test_lightgcn_l2_surrogate_gradient_equals_recboles_loss(lightgcn):
    """The surrogate's stated relation to RecBole's ``LightGCN.calculate_loss`` (adapters/
    lightgcn.py ``training_loss``): with RecBole's batch-norm L2 term, the per-row surrogate
    ``lam ||e||^2`` with ``lam = reg / (2 sqrt(B m))`` has the batch term's gradient wherever a
    batch's Frobenius norm is ``sqrt(B m)``. On the batch of every train row, with negatives
    that are a permutation of the positive items, that holds exactly for all three tables, so
    the summed surrogate's gradient equals ``B`` x RecBole's (mean) loss gradient, at the
    trained point, float64, same rows and negatives."""
    from recbole.data.interaction import Interaction

    run = lightgcn
    model = copy.deepcopy(run.original).double()
    model.norm_adj_matrix = model.norm_adj_matrix.double()
    assert not getattr(model, "require_pow", False) and float(model.reg_weight) > 0
    model.train()
    users, items, _ = _rows(run, run._task())
    B = users.numel()
    neg = items[torch.randperm(B, generator=torch.Generator().manual_seed(0))]
    params = [model.user_embedding.weight, model.item_embedding.weight]

    batch = Interaction({model.USER_ID: users, model.ITEM_ID: items, model.NEG_ITEM_ID: neg})
    recbole = torch.autograd.grad(model.calculate_loss(batch), params)
    adapter = get_adapter(model)
    obj = Objective(adapter, users, items, neg[:, None], "training", B)
    assert obj.spec.reg_user > 0 and obj.spec.reg_item > 0
    ours = torch.autograd.grad(obj.loss(torch.arange(B)), params)
    for name, a, b in zip(("user", "item"), ours, recbole):
        assert b.abs().max() > 0
        # BPRLoss's gamma = 1e-10 inside the log: a relative difference of that order
        torch.testing.assert_close(a, B * b, rtol=1e-7, atol=1e-9, msg=name)
    # The L2 term matters here: without it the gradients differ.
    plain = Objective(adapter, users, items, neg[:, None], "surrogate", B)
    no_l2 = torch.autograd.grad(plain.loss(torch.arange(B)), params)
    assert not torch.allclose(no_l2[0], B * recbole[0], rtol=1e-5, atol=1e-9)
