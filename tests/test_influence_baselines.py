"""The influence baselines ``if``, ``ifru``, ``scif``, ``user_refit`` and their ``+calib``
variants on tiny, for WMF, NeuMF, LightGCN, and the numerics under them.

One trained model per class (module scope); every method runs on a private copy. Checks: the
update is finite, moves exactly the parameters each method promises, its solve converged (its
residual is reported), graph models keep the retained graph with no stale cache; and ground
truths: the objective equals each model's own ``calculate_loss``; its blocks, Gauss-Newton and
Hessian products equal autograd (``torch.autograd.functional.hessian``); CG equals a direct
solve; ``user_refit`` on WMF equals the closed-form ALS solve; ``scif`` at an ALS optimum equals
re-fitting the user (exact retraining of the user's row).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from recbole.model.general_recommender import BPR

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
import recbole_unrank.methods.pipeline as pipeline_module
from recbole_unrank import pipeline
from recbole_unrank.adapters import GenericAdapter, get_adapter, normalized_adjacency
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence.neighbourhood import collaborative_users, khop_importance
from recbole_unrank.methods import METHODS
from recbole_unrank.methods.objective import Objective
from recbole_unrank.request import sample_request, split_train

MODELS = ["WMF", "NeuMF", "LightGCN"]
BASELINES = ["if", "ifru", "scif", "user_refit"]
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
    """Default settings (training loss, Gauss-Newton, CG to convergence): finite, moves only what
    it promises, reports a converged solve, clears caches, keeps the retained graph."""
    run = runs(model_name)
    task = run._task()
    result = METHODS[method](**pipeline.method_settings(run.config, METHODS[method]))(task)
    model = result.model
    assert _finite(model)
    assert {"scope_s", "solve_s"} <= set(result.stages)
    solve = result.info["solve"]
    assert {"iters", "rel_residual", "converged"} <= set(solve)
    if method != "user_refit" or model_name == "WMF":  # BPR / BCE refits need not have a finite optimum
        assert solve["converged"], (method, solve)
        assert solve["rel_residual"] <= (1e-4 if method != "user_refit" else run.config["unrank_refit_tol"]) * 1.0001
    changes = _changes(run.original, model)
    assert any(bool(v) for v in changes.values()), f"{method} changed nothing"
    request_users = set(run.request.users.tolist())
    if method in ("scif", "user_refit"):
        for name, rows in changes.items():
            if name in USER_TABLES:
                assert rows <= request_users, f"{method} moved non-request users {sorted(rows - request_users)[:5]}"
            else:
                assert not rows, f"{method} changed {name}"
    if method == "ifru":
        k_users, k_items = _khop(run, 1)
        for name, rows in changes.items():
            if name in USER_TABLES:
                assert rows <= k_users
            elif name in ITEM_TABLES:
                assert rows <= k_items
            else:
                assert not rows, f"ifru changed the dense parameter {name}"
    if model_name != "LightGCN" and method != "user_refit":
        assert float(run.forget_ranks(model).mean()) > run.rank0, f"{method} did not unrank {model_name}"
    if model_name == "LightGCN":  # the retained graph, no stale cache
        users, items, keep = _pairs(run)
        retained = normalized_adjacency(
            torch.as_tensor(users[keep]), torch.as_tensor(items[keep]), model.n_users, model.n_items
        )
        # (dropped edges may stay as explicit zeros: compare the matrices)
        assert torch.allclose(model.norm_adj_matrix.to_dense(), retained.to_dense(), atol=1e-7)
        u = torch.as_tensor(sorted(request_users)[:4])
        fresh = get_adapter(model).user_scores(u)
        from recbole.data.interaction import Interaction

        with torch.no_grad():
            served = model.full_sort_predict(Interaction({model.USER_ID: u})).view(u.numel(), -1)
        assert torch.allclose(served, fresh, atol=1e-5)


@pytest.mark.parametrize("model_name", MODELS)
def test_calib_variants_report_the_guard_and_keep_it(runs, model_name):
    run = runs(model_name)
    for name in ("if+calib", "ifru+calib", "scif+calib"):
        cls = METHODS[name]
        result = cls(**pipeline.method_settings(run.config, cls))(run._task())
        assert _finite(result.model)
        g = result.info["guard"]
        assert g["met"] and g["request_users_valid_ndcg_ratio"] >= run.config["unrank_utility_guard"] - 1e-9
        # full-parameter updates move everyone: the sampled other users are guarded too
        if name != "scif+calib" or model_name == "LightGCN":
            assert g["others_valid_ndcg_ratio"] >= run.config["unrank_utility_guard"] - 1e-9
        assert result.info["steps"]["step"] == "calibrated"


def test_a_failed_solve_is_refused(runs, monkeypatch):
    from recbole_unrank.influence.cg import CGResult
    from recbole_unrank.methods import pipeline as mod

    def diverging(matvec, b, damping, max_iter, tol, stop_on_negative_curvature=True, callback=None):
        return CGResult(b * 3, max_iter, [float(b.norm()), 2.5 * float(b.norm())], "max_iter")

    monkeypatch.setattr(mod, "conjugate_gradient", diverging)
    run = runs("WMF")
    with pytest.raises(UnrankError, match="stopped at its cap .*raise unrank_baseline_cg_steps or unrank_damping"):
        METHODS["if"](**pipeline.method_settings(run.config, METHODS["if"]))(run._task())
    with pytest.raises(UnrankError, match="solve failed"):  # negative curvature with the exact Hessian
        monkeypatch.setattr(mod, "conjugate_gradient",
                            lambda *a, **k: CGResult(a[1] * 0, 1, [1.0, 0.5], "negative_curvature"))
        METHODS["if"](curvature="hessian")(run._task())


@pytest.mark.parametrize("model_name", ["WMF", "NeuMF"])
def test_scif_hessian_is_gauss_newton_where_scores_are_piecewise_linear_in_user_rows(runs, monkeypatch, model_name):
    """scif moves only the request users' rows; WMF's scores are linear in them and NeuMF's
    piecewise linear (GMF, and an MLP of linear and ReLU layers), so over those rows the exact
    Hessian is the Gauss-Newton matrix: with the refusal set aside the two updates agree (up to
    the CG's tolerance, 1e-4 of the residual: measured 1.3e-7 on NeuMF); so the key is refused."""

    run = runs(model_name)
    with pytest.raises(UnrankError, match="unrank_baseline_curvature=hessian has no effect in scif"):
        METHODS["scif"](curvature="hessian")(run._task())
    gn = METHODS["scif"](cg_tol=1e-8, cg_steps=2000)(run._task())
    monkeypatch.setattr(pipeline_module, "check_model_settings", lambda *a, **k: None)
    exact = METHODS["scif"](curvature="hessian", cg_tol=1e-8, cg_steps=2000)(run._task())
    a, b = gn.model.state_dict(), exact.model.state_dict()
    moved = max(float((a[k] - run.original.state_dict()[k]).abs().max()) for k in a if torch.is_floating_point(a[k]))
    assert moved > 1e-3
    for k in a:
        if torch.is_floating_point(a[k]):
            torch.testing.assert_close(b[k], a[k], rtol=0.0, atol=1e-5 * moved, msg=lambda m, k=k: f"{k}: {m}")


def test_ifru_zero_hops_moves_only_request_rows_and_graph_term(runs):
    run = runs("LightGCN")
    result = METHODS["ifru"](ifru_hops=0, ifru_keep=1.0)(run._task())
    changes = _changes(run.original, result.model)
    assert changes["user_embedding"] and changes["user_embedding"] <= set(run.request.users.tolist())
    assert changes["item_embedding"] <= set(run.request.items.tolist())
    assert result.info["graph_term_norm"] > 0  # the forgotten edges change others' propagation
    wmf = METHODS["ifru"](ifru_hops=0)(runs("WMF")._task())
    assert "graph_term_norm" not in wmf.info  # no graph, no spillover term


def test_ifru_pruning_keeps_a_share_of_the_khop_nodes(runs):
    run = runs("WMF")
    full = METHODS["ifru"](ifru_hops=1, ifru_keep=1.0)(run._task()).info
    pruned = METHODS["ifru"](ifru_hops=1, ifru_keep=0.5)(run._task()).info
    k_users, k_items = _khop(run, 1)
    assert full["khop_nodes"] == len(k_users) + len(k_items)
    assert full["rows_users"] + full["rows_items"] == full["khop_nodes"]
    assert pruned["rows_users"] + pruned["rows_items"] < full["khop_nodes"]


# ------------------------------------------------------------------------------ ground truth
def _objective(run, model, kind="training", n_neg=1):
    a = get_adapter(model)
    feat = run.data.train_ds.inter_feat
    users, items = feat[run.data.train_ds.uid_field], feat[run.data.train_ds.iid_field]
    neg = torch.randint(1, a.n_items, (users.numel(), n_neg), generator=torch.Generator().manual_seed(5))
    return a, Objective(a, users, items, neg, kind, run.config["train_batch_size"]), users, items, neg


def test_training_loss_equals_each_models_calculate_loss(runs):
    """The summed training loss is the model's own calculate_loss (one batch of all train rows)."""
    from recbole.data.interaction import Interaction

    for name in MODELS:
        run = runs(name)
        model = copy.deepcopy(run.original).double()
        if name == "LightGCN":  # RecBole's exact per-row form of the L2 term
            model.require_pow = True
            model.norm_adj_matrix = model.norm_adj_matrix.double()
        a, obj, users, items, neg = _objective(run, model)
        idx = torch.arange(users.numel())
        ours = float(obj.loss(idx, gram=True))
        n = users.numel()
        if name == "WMF":
            theirs = float(model.calculate_loss(Interaction({model.USER_ID: users, model.ITEM_ID: items}))) * n
        elif name == "NeuMF":
            model.eval()  # dropout off: the loss of the trained parameters
            inter = Interaction({model.USER_ID: torch.cat((users, users)), model.ITEM_ID: torch.cat((items, neg[:, 0])),
                                 model.LABEL: torch.cat((torch.ones(n), torch.zeros(n))).double()})
            theirs = float(model.calculate_loss(inter)) * 2 * n
        else:
            inter = Interaction({model.USER_ID: users, model.ITEM_ID: items, model.NEG_ITEM_ID: neg[:, 0]})
            theirs = float(model.calculate_loss(inter)) * n
        assert ours == pytest.approx(theirs, rel=1e-6), name


@pytest.mark.parametrize("model_name", MODELS)
def test_blocks_equal_autograd(runs, model_name):
    """Per-user gradient and Gauss-Newton blocks of the training loss against autograd; for WMF
    (linear in p_u) the block is the exact Hessian (torch.autograd.functional.hessian)."""
    run = runs(model_name)
    model = copy.deepcopy(run.original).double()
    if model_name == "LightGCN":
        model.norm_adj_matrix = model.norm_adj_matrix.double()
    a, obj, users, items, _ = _objective(run, model)
    # LightGCN: one request user, whose block is then exact (with several, each block leaves out
    # how the other request users' rows reach it through propagation)
    req = torch.as_tensor(np.unique(run.request.users))[: 1 if model_name == "LightGCN" else 3]
    row_of = torch.full((a.n_users,), -1, dtype=torch.long)
    row_of[req] = torch.arange(req.numel())
    idx = torch.nonzero(row_of[users] >= 0).squeeze(1)
    g, H = obj.blocks(idx, None, True, row_of, req.numel())
    tables = a.user_tables()
    grads = torch.autograd.grad(obj.loss(idx, gram=True), tables)
    want = torch.cat([gr[req] for gr in grads], -1)
    assert torch.allclose(g, want, atol=1e-8)
    if model_name == "WMF":
        u = int(req[0])
        P = model.user_embedding.weight

        P0 = P.detach()

        def loss_of(pu):  # the adapter scores through a.P: a function of pu here
            a.P = torch.cat((P0[:u], pu[None], P0[u + 1:]))
            return obj.loss(idx[users[idx] == u], gram=True)

        exact = torch.autograd.functional.hessian(loss_of, P0[u].clone())
        a.P = P
        assert torch.allclose(H[0], exact, atol=1e-8)


def _small_wmf(run, dim: int = 3):
    """An untrained WMF with ``dim``-wide embeddings on tiny (dense matrices stay small)."""
    from recbole_unrank.models.wmf import WMF

    saved = run.config["embedding_size"]
    run.config["embedding_size"] = dim
    try:
        torch.manual_seed(3)
        return WMF(run.config, run.data.train_ds).double()
    finally:
        run.config["embedding_size"] = saved


def test_curvature_products_equal_dense_autograd(runs):
    """Hessian- and Gauss-Newton-vector products of the objective, against dense matrices from
    torch.autograd.functional (WMF, float64, every parameter)."""
    run = runs("WMF")
    model = _small_wmf(run)
    a, obj, users, items, _ = _objective(run, model)
    idx = torch.as_tensor(np.flatnonzero(_pairs(run)[2]))
    P, Q = model.user_embedding.weight, model.item_embedding.weight
    shapes = [P.shape, Q.shape]
    x0 = torch.cat([P.detach().reshape(-1), Q.detach().reshape(-1)])

    def loss_flat(x):  # the adapter scores through a.P, a.Q: functions of x here
        a.P, a.Q = x[: P.numel()].view(shapes[0]), x[P.numel():].view(shapes[1])
        return obj.loss(idx, gram=True)

    dense = torch.autograd.functional.hessian(loss_flat, x0)
    a.P, a.Q = P, Q  # the model's own parameters again
    params = [P, Q]
    v = torch.randn(x0.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hv = obj.hessian(idx, None, True, params)(v)
    assert torch.allclose(hv, dense @ v, rtol=1e-8, atol=1e-8)
    # Gauss-Newton: J^T C J + reg Hessian, J = d(outputs)/dx from autograd.functional.jacobian
    gn = obj.gauss_newton(idx, None, True, params)(v)
    uu = torch.unique(users[idx])

    def outputs(x):
        Pm, Qm = x[: P.numel()].view(shapes[0]), x[P.numel():].view(shapes[1])
        return torch.cat(((Pm[users[idx]] * Qm[items[idx]]).sum(-1), (Pm[uu] @ Qm.T).reshape(-1)))

    J = torch.autograd.functional.jacobian(outputs, x0)
    s = obj.spec
    c = torch.cat((torch.full((idx.numel(),), 2 * (1 + s.alpha) - 2 * s.w0, dtype=torch.float64),
                   torch.full((uu.numel() * Q.shape[0],), 2 * s.w0, dtype=torch.float64)))
    def reg_flat(x):
        a.P, a.Q = x[: P.numel()].view(shapes[0]), x[P.numel():].view(shapes[1])
        return obj._reg(idx, None)

    reg = torch.autograd.functional.hessian(reg_flat, x0)
    a.P, a.Q = P, Q
    want = J.T @ (c[:, None] * (J @ v[:, None])).squeeze(-1) + reg @ v
    assert torch.allclose(gn, want, rtol=1e-8, atol=1e-8)


def test_cg_solve_equals_a_direct_solve(runs):
    """``if`` with Gauss-Newton: its step solves (G + lambda I) Delta = g to the reported residual;
    checked against torch.linalg.solve on the dense G (WMF, float64)."""
    run = runs("WMF")
    small = _small_wmf(run)
    task = run._task(small)
    before = [p.detach().clone() for p in task.model.parameters()]
    result = METHODS["if"](damping=1e-1, cg_steps=2000, cg_tol=1e-10)(task)
    delta = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(task.model.parameters(), before)])
    model = copy.deepcopy(small)
    a, obj, users, items, _ = _objective(run, model)
    params = a.params()
    idx_r = torch.as_tensor(np.flatnonzero(_pairs(run)[2]))
    op = obj.gauss_newton(idx_r, None, True, params)
    n = sum(p.numel() for p in params)
    G = torch.stack([op(e) for e in torch.eye(n, dtype=torch.float64)], 1)
    t = torch.as_tensor(run.request.index)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(obj.loss(t), params)])
    direct = torch.linalg.solve(G + 1e-1 * torch.eye(n, dtype=torch.float64), g)
    assert result.info["solve"]["converged"]
    assert torch.allclose(delta, direct, rtol=1e-6, atol=1e-8 * float(direct.abs().max()))


def _als(model, users, items, index, n_items):
    """Closed-form WMF user rows on the rows ``index`` (items fixed): exact ALS."""
    P, Q = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    a, w0, reg = 1.0 + model.alpha, model.negative_weight, model.reg_weight
    G = Q.T @ Q
    out = P.clone()
    for u in torch.unique(users[index]).tolist():
        its = items[index][users[index] == u]
        A = w0 * G + (a - w0) * Q[its].T @ Q[its] + reg * its.numel() * torch.eye(Q.shape[1], dtype=Q.dtype)
        out[u] = torch.linalg.solve(A, a * Q[its].sum(0))
    return out


def test_user_refit_on_wmf_is_exact_als(runs):
    run = runs("WMF")
    task = run._task()
    task.model.double()
    result = METHODS["user_refit"](damping=1e-2, refit_steps=20, refit_tol=1e-10)(task)
    users, items, keep = _pairs(run)
    users, items = torch.as_tensor(users), torch.as_tensor(items)
    want = _als(copy.deepcopy(run.original).double(), users, items, torch.as_tensor(np.flatnonzero(keep)), 0)
    req = torch.as_tensor(np.unique(run.request.users))
    got = result.model.user_embedding.weight.detach()
    assert torch.allclose(got[req], want[req], atol=1e-8)
    assert result.info["solve"]["converged"]


def test_scif_at_an_als_optimum_equals_retraining_the_users_rows(runs):
    """WMF with every user row at its exact ALS optimum on the full data: SCIF's influence step
    (H over the request users' retained rows, gradient of D_t, training loss) is the exact
    re-fit of those rows without D_t, i.e. what retraining the users' rows gives."""
    run = runs("WMF")
    users, items, keep = _pairs(run)
    users, items = torch.as_tensor(users), torch.as_tensor(items)
    model = copy.deepcopy(run.original).double()
    with torch.no_grad():
        model.user_embedding.weight.copy_(_als(model, users, items, torch.arange(users.numel()), 0))
    task = run._task(model)
    result = METHODS["scif"](damping=1e-9, cg_steps=2000, cg_tol=1e-12)(task)
    want = _als(model, users, items, torch.as_tensor(np.flatnonzero(keep)), 0)
    req = torch.as_tensor(np.unique(run.request.users))
    got = result.model.user_embedding.weight.detach()
    assert torch.allclose(got[req], want[req], atol=1e-6)


def test_khop_importance_and_neighbours_on_a_chain():
    # u0-i0, u0-i1, u1-i1, u1-i2, u2-i2 ; request: (u0, i0)
    users, items = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 2, 2])
    su, si = khop_importance(users, items, 3, 3, torch.tensor([0]), torch.tensor([0]), 1)
    assert (su > 0).tolist() == [True, False, False]  # u0 (itself), not u1 (2 hops away)
    assert (si > 0).tolist() == [True, True, False]  # i0 (itself), i1 (u0's item)
    su2, si2 = khop_importance(users, items, 3, 3, torch.tensor([0]), torch.tensor([0]), 2)
    assert (su2 > 0).tolist() == [True, True, False] and (si2 > 0).tolist() == [True, True, False]
    assert collaborative_users(users, items, 3, 3, torch.tensor([0]), 0).tolist() == [True, False, False]
    assert collaborative_users(users, items, 3, 3, torch.tensor([0]), 1).tolist() == [True, True, False]
    assert collaborative_users(users, items, 3, 3, torch.tensor([0]), 5).tolist() == [True, True, True]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("ifru", {"ifru_hops": -1}),
        ("ifru", {"ifru_keep": 0.0}),
        ("ifru", {"ifru_keep": 1.5}),
        ("scif", {"neighbors": -2}),
        ("if", {"hessian_data": "all"}),
        ("if", {"curvature": "identity"}),
        ("scif", {"damping": 0.0}),
        ("ifru", {"cg_steps": 0}),
        ("scif", {"hops": 1}),  # not one of its settings
        ("user_refit", {"refit_negatives": 0}),
        ("user_refit", {"cg_steps": 5}),  # not one of its settings
        ("scif+calib", {"utility_guard": 1.5}),
    ],
)
def test_bad_settings_are_refused(name, kwargs):
    with pytest.raises(UnrankError):
        METHODS[name](**kwargs)


def test_settings_come_from_the_config(runs):
    config = runs("WMF").config
    for name in BASELINES + ["if+calib", "ifru+calib", "scif+calib"]:
        cls = METHODS[name]
        values = pipeline.method_settings(config, cls)
        assert all(v is not None for v in values.values()), f"{name}: a key is missing from unrank.yaml"
        cls(**values)
    assert config["unrank_ifru_hops"] == 1 and config["unrank_scif_neighbors"] == 1
    assert config["unrank_if_hessian_data"] == "retained"
    assert config["unrank_baseline_curvature"] == "gauss_newton"
    assert config["unrank_baseline_loss"] == "training"


class PlainBPR(BPR):
    """A BPR that no specific adapter knows: it goes through the GenericAdapter."""


def test_generic_adapter_fallback(runs):
    run = runs("WMF")
    torch.manual_seed(0)
    model = PlainBPR(run.config, run.data.train_ds)
    model.eval()
    assert isinstance(get_adapter(model), GenericAdapter)
    with pytest.raises(UnrankError, match="surrogate"):  # its training loss is unknown: refused
        METHODS["if"]()(run._task(model))
    for name in ("if", "ifru", "scif"):
        result = METHODS[name](loss="surrogate", cg_steps=200)(run._task(model))
        assert _finite(result.model)
        if name == "scif":
            changes = _changes(model, result.model)
            assert changes["user_embedding"] <= set(run.request.users.tolist())
            assert not changes["item_embedding"]
    with pytest.raises(UnrankError, match="blocks"):
        METHODS["user_refit"]()(run._task(model))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_name", MODELS)
def test_baselines_on_cuda(runs, model_name):
    run = runs(model_name)
    for name in BASELINES + ["scif+calib"]:
        task = run._task(copy.deepcopy(run.original).cuda())
        result = METHODS[name](cg_steps=50)(task) if name != "user_refit" else METHODS[name]()(task)
        assert all(p.is_cuda for p in result.model.parameters())
        assert _finite(result.model)


def test_scif_neighbours_matter_only_through_propagation(runs):
    """LightGCN: the neighbours' interactions add curvature in the request users' base rows, so
    the step changes; WMF: they have none there, so the step is the same (up to the summation
    order another BLAS may choose)."""

    def step(model_name, neighbors):
        run = runs(model_name)
        result = METHODS["scif"](neighbors=neighbors)(run._task())
        return result, result.model.user_embedding.weight.detach() - run.original.user_embedding.weight.detach()

    (r0, d0), (r1, d1) = step("LightGCN", 0), step("LightGCN", 1)
    assert r1.info["curvature_rows"] > r0.info["curvature_rows"]
    assert not torch.allclose(d0, d1)
    # WMF: the neighbours add no curvature in the request users' rows, so a non-default value
    # would be silently inert: it is refused, naming the key
    with pytest.raises(UnrankError, match="unrank_scif_neighbors=0 has no effect"):
        step("WMF", 0)


@pytest.mark.parametrize("model_name", ["WMF", "LightGCN"])
def test_a_user_request_leaves_no_retained_row_and_still_runs(runs, model_name):
    """Every train row of two users forgotten (the user task): their retained loss has no row
    left; every influence method still runs (the curvature of no rows is zero, plus damping)."""
    run = runs(model_name)
    users, _, _ = _pairs(run)
    chosen = np.unique(run.request.users)[:2]
    index = np.flatnonzero(np.isin(users, chosen)).astype(np.int64)
    for name in BASELINES + ["scif+calib", "l2unrank"]:
        task = run._task()
        task.request_index = index
        cls = METHODS[name]
        result = cls(**pipeline.method_settings(run.config, cls))(task)
        assert _finite(result.model), name


# ------------------------------------------------------------------------------ a failed solve
@pytest.mark.parametrize("stop, norms, message", [
    ("max_iter", [1.0, 0.9, 2.58], r"conjugate gradient stopped at its cap of \d+ iterations with relative residual "
                                   r"2\.58 > 0\.0001; the step is refused: raise unrank_baseline_cg_steps or "
                                   r"unrank_damping$"),
    ("negative_curvature", [1.0, 0.5], r"the conjugate-gradient solve failed \(negative_curvature, .*the step is "
                                       r"refused: raise unrank_damping$"),
])
def test_diverged_solve_is_refused_never_reported(runs, monkeypatch, stop, norms, message):
    """A CG solve that ends at its cap (here above its starting residual), or meets negative
    curvature, is an error naming what to change, not a results row (the suite records the cell
    as failed); the model it was given is left bit-identical."""
    import recbole_unrank.methods.pipeline as mp
    from recbole_unrank.influence.cg import CGResult

    def fake_cg(matvec, b, *args, **kwargs):
        return CGResult(torch.zeros_like(b), len(norms) - 1, [n * float(b.norm()) for n in norms], stop)

    monkeypatch.setattr(mp, "conjugate_gradient", fake_cg)
    run = runs("NeuMF")
    task = run._task()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with pytest.raises(UnrankError, match=r"^if: " + message) as info:
        METHODS["if"](**pipeline.method_settings(run.config, METHODS["if"]))(task)
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
