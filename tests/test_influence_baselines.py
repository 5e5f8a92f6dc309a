"""The influence-function baselines ``if``, ``ifru`` and ``scif`` on tiny, for WMF, NeuMF, LightGCN.

One trained model per class (module scope); every method runs on a private copy. Checks: the
update is finite and moves exactly the parameters each method promises (``scif``: the request
users' rows; ``ifru``: rows within k hops), the request's mean rank rises for the factor
models, graph models keep the retained graph with no stale cache, and two ground truths:
``if`` equals L2UnRank with no scope and no weights, and ``scif`` on WMF equals the exact
per-user ``d x d`` solves.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.model.general_recommender import BPR

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank import pipeline
from recbole_unrank.adapters import GenericAdapter, get_adapter, normalized_adjacency
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import IFRU, METHODS, SCIF, InfluenceFunction, L2UnRank
from recbole_unrank.methods.influence_baselines import collaborative_users, khop_importance
from recbole_unrank.request import sample_request, split_train

MODELS = ["WMF", "NeuMF", "LightGCN"]
BASELINES = ["if", "ifru", "scif"]
USER_TABLES = {"user_embedding", "user_mf_embedding", "user_mlp_embedding"}
ITEM_TABLES = {"item_embedding", "item_mf_embedding", "item_mlp_embedding"}
# Small models keep the module fast; the structure (tables, layers, graph) is the models' own.
SMALL = {
    "WMF": {"embedding_size": 16},
    "NeuMF": {"mf_embedding_size": 16, "mlp_embedding_size": 16, "mlp_hidden_size": [32, 16]},
    "LightGCN": {"embedding_size": 16},
}


# ------------------------------------------------------------------------------ fixtures
def _prepare(model_name: str, workdir, config_maker) -> pipeline.Run:
    """Train a small ``model_name`` on tiny (2 epochs), draw a request, build the loaders."""
    config = config_maker(workdir, model_name, epochs=2, **SMALL[model_name])
    data = pipeline.load_data(config)
    request = sample_request(
        data.train_ds, source="interaction", user_ratio=0.1, inter_ratio=0.2, seed=config["seed"]
    )
    retain_ds, forget_ds = split_train(data.train_ds, request)
    train, valid, _ = pipeline.make_loaders(config, data)
    model, _ = pipeline.train_model(config, train, valid)
    run = pipeline.Run(config, data, request, retain_ds, forget_ds)
    run.original = model
    run.loaders = pipeline.make_loaders(config, data, retain_ds)
    run.forget_loader = pipeline.make_forget_loader(config, retain_ds, forget_ds)
    run.rank0 = float(run.forget_ranks(model).mean())
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, config_maker):
    """``runs(model_name)``: the prepared run of that model (trained once per module)."""
    cache: dict[str, pipeline.Run] = {}
    workdir = tmp_path_factory.mktemp("baselines")

    def get(model_name: str) -> pipeline.Run:
        if model_name not in cache:
            saved = os.getcwd()
            os.chdir(workdir)  # RecBole writes ./log and ./log_tensorboard
            try:
                cache[model_name] = _prepare(model_name, workdir, config_maker)
            finally:
                os.chdir(saved)
        return cache[model_name]

    return get


@pytest.fixture(autouse=True)
def _cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def _pairs(run):
    feat = run.data.train_ds.inter_feat
    users = feat[run.data.train_ds.uid_field].numpy()
    items = feat[run.data.train_ds.iid_field].numpy()
    keep = np.ones(users.size, dtype=bool)
    keep[run.request.index] = False
    return users, items, keep


def _khop(run, hops: int) -> tuple[set, set]:
    """Users and items within ``hops`` hops of the request in the retained graph (plain sets)."""
    users, items, keep = _pairs(run)
    ru, ri = users[keep], items[keep]
    u_set, i_set = set(run.request.users.tolist()), set(run.request.items.tolist())
    for _ in range(hops):
        new_i = set(ri[np.isin(ru, list(u_set))].tolist())
        new_u = set(ru[np.isin(ri, list(i_set))].tolist())
        u_set |= new_u
        i_set |= new_i
    return u_set, i_set


def _changes(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, set | bool]:
    """Per parameter: the set of changed rows (embedding tables) or whether it changed."""
    old = dict(before.named_parameters())
    out: dict[str, set | bool] = {}
    for name, p in after.named_parameters():
        diff = p.detach().cpu() != old[name].detach().cpu()
        table = name.split(".")[0]
        if table in USER_TABLES | ITEM_TABLES:
            out[table] = set(diff.any(dim=1).nonzero().squeeze(1).tolist())
        else:
            out[name] = bool(diff.any())
    return out


def _finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", BASELINES)
def test_baseline_contract(runs, model_name, method):
    """Default settings (the exact Hessian, 10 CG steps): runs, finite, moves only what it promises, clears
    caches; the factor models' request ranks rise where CG met no negative curvature."""
    run = runs(model_name)
    task = run._task()
    result = METHODS[method](cg_steps=10)(task)  # default settings, fewer CG steps: fast
    model = result.model
    assert _finite(model)
    assert {"scope_s", "solve_s"} <= set(result.stages)
    changes = _changes(run.original, model)
    moved = any(bool(v) for v in changes.values())
    assert result.info["cg_iterations"] > 0
    assert moved, f"{method} took {result.info['cg_iterations']} CG steps but changed nothing"
    request_users = set(run.request.users.tolist())
    if method == "scif":
        for name, rows in changes.items():
            if name in USER_TABLES:
                assert rows <= request_users, (
                    f"scif moved non-request users {sorted(rows - request_users)[:5]}"
                )
            else:
                assert not rows, f"scif changed {name}"
    if method == "ifru":
        k_users, k_items = _khop(run, 1)
        for name, rows in changes.items():
            if name in USER_TABLES:
                assert rows <= k_users
            elif name in ITEM_TABLES:
                assert rows <= k_items
            else:
                assert not rows, f"ifru changed the dense parameter {name}"
    if model_name != "LightGCN" and "negative_curvature" not in result.info["cg_stop"]:
        # (CG run through negative curvature, as the papers' fixed-T solver does, minimises
        # nothing: no rank promise for it. With Gauss-Newton, see the next test.)
        assert float(task.forget_ranks(model).mean()) > run.rank0, (
            f"{method} did not unrank {model_name}"
        )
    if model_name == "LightGCN":  # the retained graph, no stale cache
        users, items, keep = _pairs(run)
        retained = normalized_adjacency(
            torch.as_tensor(users[keep]), torch.as_tensor(items[keep]), model.n_users, model.n_items
        )
        assert torch.equal(model.norm_adj_matrix.coalesce().indices(), retained.indices())
        assert torch.allclose(model.norm_adj_matrix.coalesce().values(), retained.values())
        assert model.restore_user_e is None and model.restore_item_e is None
        u = torch.as_tensor(sorted(request_users)[:4])
        fresh = get_adapter(model).user_scores(u)
        from recbole.data.interaction import Interaction

        with torch.no_grad():
            served = model.full_sort_predict(Interaction({model.USER_ID: u})).view(u.numel(), -1)
        assert torch.allclose(served, fresh, atol=1e-5)


@pytest.mark.parametrize("model_name", MODELS)
def test_gauss_newton_curvature_moves_every_model(runs, model_name):
    """With the PSD Gauss-Newton curvature CG never meets negative curvature (it solves the damped
    system): each method takes a real step on every model, and the factor models' request ranks
    rise for all three."""
    run = runs(model_name)
    for method in BASELINES:
        task = run._task()
        result = METHODS[method](curvature="gauss_newton", cg_steps=12)(task)
        assert "negative_curvature" not in result.info["cg_stop"]
        assert result.info["cg_iterations"] > 0
        changes = _changes(run.original, result.model)
        assert any(bool(v) for v in changes.values())
        assert _finite(result.model)
        if method == "scif":
            assert all(not v for k, v in changes.items() if k not in USER_TABLES)
        if model_name != "LightGCN":
            assert float(task.forget_ranks(result.model).mean()) > run.rank0, (
                f"{method} did not unrank"
            )


def test_ifru_zero_hops_moves_only_request_rows_and_graph_term(runs):
    run = runs("LightGCN")
    result = IFRU(hops=0, keep=1.0, curvature="gauss_newton", cg_steps=8)(run._task())
    changes = _changes(run.original, result.model)
    assert changes["user_embedding"] and changes["user_embedding"] <= set(
        run.request.users.tolist()
    )
    assert changes["item_embedding"] <= set(run.request.items.tolist())
    assert result.info["graph_term_norm"] > 0  # the forgotten edges change others' propagation
    wmf = IFRU(hops=0)(runs("WMF")._task())
    assert "graph_term_norm" not in wmf.info  # no graph, no spillover term


def test_ifru_pruning_keeps_a_share_of_the_khop_nodes(runs):
    run = runs("WMF")
    full = IFRU(keep=1.0)(run._task()).info
    pruned = IFRU(keep=0.5)(run._task()).info
    k_users, k_items = _khop(run, 1)
    assert full["khop_nodes"] == len(k_users) + len(k_items)
    assert full["rows_users"] + full["rows_items"] == full["khop_nodes"]
    assert pruned["rows_users"] + pruned["rows_items"] < full["khop_nodes"]


# ------------------------------------------------------------------------------ ground truth
@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_if_equals_l2unrank_without_scope_and_weights(runs, curvature):
    """``if`` with H over the train data is L2UnRank's full-parameter path with no scope, no
    weights, no context and no calibration: same parameters (float64, WMF)."""
    run = runs("WMF")
    t_if, t_l2 = run._task(), run._task()
    t_if.model.double()
    t_l2.model.double()
    kw = {"curvature": curvature, "damping": 1e-2, "cg_steps": 30}
    got = InfluenceFunction(hessian_data="train", **kw)(t_if).model
    want = L2UnRank(
        use_scope=False, use_weights=False, use_context=False, update="all", calibrate=False, **kw
    )(t_l2).model
    moved = False
    for (name, a), (_, b) in zip(got.named_parameters(), want.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name} differs")
        moved |= not torch.equal(a, dict(run.original.named_parameters())[name].double())
    assert moved


def test_if_equals_l2unrank_on_lightgcn(runs):
    """The same on a graph model (float32: loose tolerance), both on the train graph."""
    run = runs("LightGCN")
    kw = {"curvature": "gauss_newton", "damping": 1e-2, "cg_steps": 6}
    got = InfluenceFunction(hessian_data="train", **kw)(run._task()).model
    want = L2UnRank(
        use_scope=False, use_weights=False, use_context=False, update="all", calibrate=False, **kw
    )(run._task()).model
    for (name, a), (_, b) in zip(got.named_parameters(), want.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"{name} differs")


def test_if_retained_solves_the_retained_system(runs):
    """``if`` (default H over D \\ D_t) satisfies (H_r + lambda I) Delta = g, checked with an
    independent Hessian of the retained loss (WMF, float64; GN = PSD so CG converges)."""
    run = runs("WMF")
    task = run._task()
    task.model.double()
    before = [p.detach().clone() for p in task.model.parameters()]
    lam = 1e-1
    InfluenceFunction(curvature="gauss_newton", damping=lam, cg_steps=400, cg_tol=1e-12)(task)
    delta = torch.cat(
        [(p.detach() - b).reshape(-1) for p, b in zip(task.model.parameters(), before)]
    )
    users, items, keep = _pairs(run)
    P = before[0].clone().requires_grad_(True)
    Q = before[1].clone().requires_grad_(True)
    u, i = torch.as_tensor(users), torch.as_tensor(items)
    t = torch.as_tensor(run.request.index)
    z_t = (P[u[t]] * Q[i[t]]).sum(-1)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad((-F.logsigmoid(z_t)).sum(), (P, Q))])
    # Gauss-Newton of the retained pointwise loss: J^T diag(s(1-s)) J, J v by forward differences
    # of the bilinear score (exact: z is bilinear, so J v = dP.Q + P.dQ).
    k = torch.as_tensor(np.flatnonzero(keep))
    dP, dQ = delta[: P.numel()].view_as(P), delta[P.numel() :].view_as(Q)
    z = (P[u[k]] * Q[i[k]]).sum(-1).detach()
    jv = (dP[u[k]] * Q[i[k]]).sum(-1) + (P[u[k]] * dQ[i[k]]).sum(-1)
    c = torch.sigmoid(z) * (1 - torch.sigmoid(z)) * jv.detach()
    gp = torch.zeros_like(P).index_add_(0, u[k], c[:, None] * Q[i[k]].detach())
    gq = torch.zeros_like(Q).index_add_(0, i[k], c[:, None] * P[u[k]].detach())
    lhs = torch.cat([gp.reshape(-1), gq.reshape(-1)]) + lam * delta
    assert float((lhs - g).norm() / g.norm()) < 1e-6


def test_scif_on_wmf_equals_exact_per_user_solves(runs):
    """WMF's score is linear in p_u, so SCIF's system splits into one exact d x d block per
    request user: H_u = sum_{retained (u,i)} s(1-s) q_i q_i^T, g_u = sum_{D_t (u,i)} -s(-z) q_i."""
    run = runs("WMF")
    task = run._task()
    task.model.double()
    P0 = task.model.user_embedding.weight.detach().clone()
    Q = task.model.item_embedding.weight.detach().clone()
    lam = 1e-2
    SCIF(damping=lam, cg_steps=500, cg_tol=1e-13)(task)
    P1 = task.model.user_embedding.weight.detach()
    users, items, keep = _pairs(run)
    t_users, t_items = users[~keep], items[~keep]
    for u in np.unique(t_users):
        mine = (users == u) & keep
        q = Q[items[mine]]
        s = torch.sigmoid(q @ P0[u])
        H = (s * (1 - s))[:, None, None].mul(q[:, :, None] * q[:, None, :]).sum(0)
        qt = Q[t_items[t_users == u]]
        g = (-torch.sigmoid(-(qt @ P0[u])))[:, None].mul(qt).sum(0)
        want = torch.linalg.solve(H + lam * torch.eye(H.shape[0], dtype=H.dtype), g)
        torch.testing.assert_close(P1[u] - P0[u], want, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------ helpers, settings
def test_khop_importance_and_neighbours_on_a_chain():
    # u0-i0, u0-i1, u1-i1, u1-i2, u2-i2 ; request: (u0, i0)
    users, items = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 2, 2])
    su, si = khop_importance(users, items, 3, 3, torch.tensor([0]), torch.tensor([0]), 1)
    assert (su > 0).tolist() == [True, False, False]  # u0 (itself), not u1 (2 hops away)
    assert (si > 0).tolist() == [True, True, False]  # i0 (itself), i1 (u0's item)
    su2, si2 = khop_importance(users, items, 3, 3, torch.tensor([0]), torch.tensor([0]), 2)
    assert (su2 > 0).tolist() == [True, True, False] and (si2 > 0).tolist() == [True, True, False]
    assert collaborative_users(users, items, 3, 3, torch.tensor([0]), 0).tolist() == [
        True,
        False,
        False,
    ]
    assert collaborative_users(users, items, 3, 3, torch.tensor([0]), 1).tolist() == [
        True,
        True,
        False,
    ]
    assert collaborative_users(users, items, 3, 3, torch.tensor([0]), 5).tolist() == [
        True,
        True,
        True,
    ]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (IFRU, {"hops": -1}),
        (IFRU, {"keep": 0.0}),
        (IFRU, {"keep": 1.5}),
        (SCIF, {"neighbors": -2}),
        (InfluenceFunction, {"hessian_data": "all"}),
        (InfluenceFunction, {"curvature": "identity"}),
        (SCIF, {"damping": 0.0}),
        (IFRU, {"cg_steps": 0}),
        (SCIF, {"hops": 1}),  # not one of its settings
    ],
)
def test_bad_settings_are_refused(cls, kwargs):
    with pytest.raises(UnrankError):
        cls(**kwargs)


def test_settings_come_from_the_config(runs):
    config = runs("WMF").config
    for name in BASELINES:
        cls = METHODS[name]
        values = pipeline.method_settings(config, cls)
        assert all(v is not None for v in values.values()), (
            f"{name}: a key is missing from unrank.yaml"
        )
        cls(**values)
    assert config["unrank_ifru_hops"] == 1 and config["unrank_scif_neighbors"] == 1
    assert config["unrank_if_hessian_data"] == "retained"
    assert config["unrank_baseline_curvature"] == "hessian"


class PlainBPR(BPR):
    """A BPR that no specific adapter knows: it goes through the GenericAdapter."""


def test_generic_adapter_fallback(runs):
    run = runs("WMF")
    torch.manual_seed(0)
    model = PlainBPR(run.config, run.data.train_ds)
    model.eval()
    assert isinstance(get_adapter(model), GenericAdapter)
    for name in BASELINES:
        task = run._task(model)
        result = METHODS[name](cg_steps=5)(task)
        assert _finite(result.model)
        if name == "scif":
            changes = _changes(model, result.model)
            assert changes["user_embedding"] <= set(run.request.users.tolist())
            assert not changes["item_embedding"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_name", MODELS)
def test_baselines_on_cuda(runs, model_name):
    run = runs(model_name)
    for name in BASELINES:
        task = run._task(copy.deepcopy(run.original).cuda())
        task.device = torch.device("cuda")
        result = METHODS[name](curvature="gauss_newton", cg_steps=5)(task)
        assert all(p.is_cuda for p in result.model.parameters())
        assert _finite(result.model)
        cpu = METHODS[name](curvature="gauss_newton", cg_steps=5)(run._task()).model
        for a, b in zip(result.model.parameters(), cpu.parameters()):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)


def test_scif_neighbours_matter_only_through_propagation(runs):
    """LightGCN: the neighbours' interactions add curvature in the request users' base rows, so
    the step changes; WMF: they have none there, so the step is the same to the last digit."""

    def step(model_name, neighbors):
        run = runs(model_name)
        result = SCIF(neighbors=neighbors, curvature="gauss_newton", cg_steps=10)(run._task())
        return (
            result,
            result.model.user_embedding.weight.detach()
            - run.original.user_embedding.weight.detach(),
        )

    (r0, d0), (r1, d1) = step("LightGCN", 0), step("LightGCN", 1)
    assert r1.info["neighbor_users"] > 0 and r1.info["hessian_pairs"] > r0.info["hessian_pairs"]
    assert not torch.allclose(d0, d1)
    (_, w0), (_, w1) = step("WMF", 0), step("WMF", 1)
    assert torch.equal(w0, w1)
