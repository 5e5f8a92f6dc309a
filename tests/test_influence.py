"""Ground-truth tests for the L2UnRank numerics (recbole_unrank.influence), float64, tiny."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from recbole_unrank.influence import (
    batched_block_solve,
    conjugate_gradient,
    entity_influence,
    flat,
    gauss_newton_operator,
    gauss_newton_vp,
    gaussian_calibrate,
    hvp,
    hvp_operator,
    influence_scope,
    influence_weights,
    semantic_scores,
    sigmoid_curvature,
    structural_scores,
    unflat,
)

DT = torch.float64


def _long(xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.long)


def _set(t: torch.Tensor) -> list[int]:
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# Stage 1: scope
# ---------------------------------------------------------------------------------------------

# A chain u0-i0, u0-i1, u1-i1, u1-i2, u2-i2, u2-i3 plus a separate component u3-i4, u4-i4,
# u3-i5. Each hop from (u0, i0) walks one interaction further down the chain.
CHAIN_U = _long([0, 0, 1, 1, 2, 2, 3, 4, 3])
CHAIN_I = _long([0, 1, 1, 2, 2, 3, 4, 4, 5])


@pytest.mark.parametrize(
    "hops, scope, hops_done",
    [
        (0, [0], 0),
        (1, [0, 1], 1),  # (u0, i1) shares u0
        (2, [0, 1, 2], 2),  # (u1, i1) shares i1 with the frontier {(u0, i1)}
        (3, [0, 1, 2, 3], 3),
        (10, [0, 1, 2, 3, 4, 5], 5),  # the chain ends: hop 6 adds nothing, early stop
    ],
)
def test_scope_chain(hops, scope, hops_done):
    res = influence_scope(CHAIN_U, CHAIN_I, _long([0]), hops)
    assert _set(res.scope_index) == scope
    assert _set(res.context_index) == scope[1:]
    assert res.hops_done == hops_done
    assert not res.truncated


def test_scope_two_targets_and_duplicates():
    # targets (u0, i0) and (u3, i4) given twice: hop 1 adds (u0, i1), (u4, i4), (u3, i5)
    res = influence_scope(CHAIN_U, CHAIN_I, _long([6, 0, 6]), 1)
    assert _set(res.scope_index) == [0, 1, 6, 7, 8]
    assert _set(res.context_index) == [1, 7, 8]


# Targets 0 = (u0, i0) and 1 = (u1, i1).
# hop 1: 2 = (u0, i2) touches u0; 3 = (u2, i0) touches i0; 4 = (u0, i1) touches u0 AND i1.
# hop 2: 5 = (u2, i2) touches u2 and i2 of hop 1; 6 = (u3, i2) touches i2 only.
# hop 3: 7 = (u3, i3).
CAP_U = _long([0, 1, 0, 2, 0, 2, 3, 3])
CAP_I = _long([0, 1, 2, 0, 1, 2, 2, 3])


@pytest.mark.parametrize(
    "cap, scope, truncated, hops_done",
    [
        (None, [0, 1, 2, 3, 4, 5, 6], False, 2),
        (100, [0, 1, 2, 3, 4, 5, 6], False, 2),
        (7, [0, 1, 2, 3, 4, 5, 6], False, 2),  # exactly the cap
        (6, [0, 1, 2, 3, 4, 5], True, 2),  # in hop 2, (u2, i2) touches two frontier entities
        (5, [0, 1, 2, 3, 4], True, 1),  # hop 1 whole, hop 2 cut away
        (4, [0, 1, 2, 4], True, 1),  # in hop 1, (u0, i1) first, then the lower index
        (3, [0, 1, 4], True, 1),  # (u0, i1) touches u0 and i1
        (2, [0, 1], True, 0),
        (1, [0, 1], True, 0),  # targets are never dropped
        (0, [0, 1], True, 0),
    ],
)
def test_scope_cap(cap, scope, truncated, hops_done):
    res = influence_scope(CAP_U, CAP_I, _long([0, 1]), 2, cap=cap)
    assert _set(res.scope_index) == scope
    assert _set(res.context_index) == scope[2:]
    assert res.truncated == truncated
    assert res.hops_done == hops_done


def test_scope_cap_stops_expanding_once_reached():
    res = influence_scope(CAP_U, CAP_I, _long([0, 1]), 3, cap=4)
    assert res.hops_done == 1 and res.truncated
    assert _set(res.scope_index) == [0, 1, 2, 4]
    # no cap needed: the whole component fits, nothing is cut
    res = influence_scope(CAP_U, CAP_I, _long([0, 1]), 10, cap=8)
    assert _set(res.scope_index) == list(range(8)) and not res.truncated
    # more targets than the cap and no hop: the targets alone, nothing cut
    res = influence_scope(CAP_U, CAP_I, _long([0, 1]), 0, cap=1)
    assert _set(res.scope_index) == [0, 1] and not res.truncated


def test_scope_errors_and_edge_cases():
    with pytest.raises(ValueError, match="hops must be >= 0"):
        influence_scope(CHAIN_U, CHAIN_I, _long([0]), -1)
    with pytest.raises(ValueError, match="cap must be >= 0"):
        influence_scope(CHAIN_U, CHAIN_I, _long([0]), 1, cap=-1)
    with pytest.raises(ValueError, match=r"target_index must lie in \[0, 9\)"):
        influence_scope(CHAIN_U, CHAIN_I, _long([9]), 1)
    with pytest.raises(ValueError, match="same length"):
        influence_scope(CHAIN_U, CHAIN_I[:-1], _long([0]), 1)
    empty = influence_scope(CHAIN_U, CHAIN_I, _long([]), 2)
    assert empty.scope_index.numel() == 0 and empty.context_index.numel() == 0


def _scope_reference(users: list[int], items: list[int], targets: list[int], hops: int) -> set:
    """The definition, literally: S_h = S_{h-1} U {k : u_k or i_k in F_{h-1}}."""
    scope = set(targets)
    frontier = set(targets)
    for _ in range(hops):
        fu = {users[k] for k in frontier}
        fi = {items[k] for k in frontier}
        new = {k for k in range(len(users)) if users[k] in fu or items[k] in fi} - scope
        if not new:
            break
        scope |= new
        frontier = new
    return scope


@pytest.mark.parametrize("hops", [0, 1, 2, 3])
def test_scope_matches_definition_on_random_graph(hops):
    g = torch.Generator().manual_seed(hops)
    users = torch.randint(0, 60, (200,), generator=g)
    items = torch.randint(0, 80, (200,), generator=g)
    targets = torch.randperm(200, generator=g)[:3]
    res = influence_scope(users, items, targets, hops)
    want = _scope_reference(users.tolist(), items.tolist(), targets.tolist(), hops)
    assert _set(res.scope_index) == sorted(want)
    assert _set(res.context_index) == sorted(want - set(targets.tolist()))


# ---------------------------------------------------------------------------------------------
# Stage 2: weights
# ---------------------------------------------------------------------------------------------

# Scope = all four interactions, target 0 = (u0, i0):
#   0: (u0, i0)  1: (u0, i1)  2: (u0, i2)  3: (u1, i0)
# Pooled V = [u0, u1, i0, i1, i2], degrees [3, 1, 2, 1, 1], T = {u0, i0}.
W_U = _long([0, 0, 0, 1])
W_I = _long([0, 1, 2, 0])
W_USER_EMB = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=DT)
W_ITEM_EMB = torch.tensor([[0.0, 1.0], [0.0, -3.0], [1.0, 1.0]], dtype=DT)


def _gauss(xs: list[float]) -> list[float]:
    mu, sigma = statistics.fmean(xs), statistics.pstdev(xs)
    return [math.exp(-((x - mu) ** 2) / (2 * sigma**2)) for x in xs]


def _hand_str() -> list[float]:
    # s_str = deg / 3 = [1, 1/3, 2/3, 1/3, 1/3]; mu = 8/15, sigma = 4/15, so
    # w = exp(-(15 (s - mu))^2 / 32) with 15 (s - mu) = [7, -3, 2, -3, -3].
    return [math.exp(-49 / 32), math.exp(-9 / 32), math.exp(-4 / 32)] + [math.exp(-9 / 32)] * 2


def _hand_sem() -> list[float]:
    # mean of unit target vectors: ((1, 0) + (0, 1)) / 2 = (1/2, 1/2); s_sem = unit(e_v) . it:
    # u0 (1,0) -> 1/2, u1 (2,0) -> 1/2, i0 (0,1) -> 1/2, i1 (0,-3) -> -1/2, i2 (1,1) -> 1/sqrt 2
    s = [0.5, 0.5, 0.5, -0.5, 1 / math.sqrt(2)]
    return _gauss(s)


def test_entity_scores_by_hand():
    ent = entity_influence(
        W_U, W_I, _long([0]), _long([0, 1, 2, 3]), W_USER_EMB, W_ITEM_EMB
    )
    assert _set(ent.user_ids) == [0, 1] and _set(ent.item_ids) == [0, 1, 2]
    torch.testing.assert_close(
        ent.s_str, torch.tensor([1, 1 / 3, 2 / 3, 1 / 3, 1 / 3], dtype=DT)
    )
    torch.testing.assert_close(ent.w_str, torch.tensor(_hand_str(), dtype=DT))
    torch.testing.assert_close(
        ent.s_sem, torch.tensor([0.5, 0.5, 0.5, -0.5, 1 / math.sqrt(2)], dtype=DT)
    )
    torch.testing.assert_close(ent.w_sem, torch.tensor(_hand_sem(), dtype=DT))
    torch.testing.assert_close(ent.pi, ent.w_str + ent.w_sem)


@pytest.mark.parametrize(
    "use_structural, use_semantic", [(True, True), (True, False), (False, True), (False, False)]
)
def test_interaction_weights_by_hand(use_structural, use_semantic):
    pis = []
    if use_structural:
        pis.append(_hand_str())
    if use_semantic:
        pis.append(_hand_sem())
    pi = [sum(col) for col in zip(*pis)] if pis else [1.0] * 5
    u0, u1, i0, i1, i2 = pi
    want = [1.0, (u0 + i1) / 2, (u0 + i2) / 2, (u1 + i0) / 2]  # target first
    w = influence_weights(
        W_U, W_I, _long([0]), _long([0, 1, 2, 3]), W_USER_EMB, W_ITEM_EMB,
        use_structural=use_structural, use_semantic=use_semantic,
    )
    assert w.dtype == DT and not w.requires_grad
    torch.testing.assert_close(w, torch.tensor(want, dtype=DT))


def test_weights_follow_scope_order_and_subset():
    # scope {0, 3}: V = [u0, u1, i0]; degrees 1, 1, 2 -> s_str = [1/2, 1/2, 1]
    w = influence_weights(
        W_U, W_I, _long([0]), _long([0, 3]), W_USER_EMB, W_ITEM_EMB, use_semantic=False
    )
    ws = _gauss([0.5, 0.5, 1.0])
    torch.testing.assert_close(w, torch.tensor([1.0, (ws[1] + ws[2]) / 2], dtype=DT))


def test_weights_sigma_zero_gives_ones():
    # a 2x2 complete bipartite block: every degree is 2, so sigma_str = 0 -> w_str = 1;
    # all embeddings equal, so sigma_sem = 0 -> w_sem = 1; pi = 2, w_ui = 2 for context.
    users, items = _long([0, 0, 1, 1]), _long([0, 1, 0, 1])
    emb = torch.ones(2, 3, dtype=DT)
    ent = entity_influence(users, items, _long([0]), _long([0, 1, 2, 3]), emb, emb)
    torch.testing.assert_close(ent.w_str, torch.ones(4, dtype=DT))
    torch.testing.assert_close(ent.w_sem, torch.ones(4, dtype=DT))
    w = influence_weights(users, items, _long([0]), _long([0, 1, 2, 3]), emb, emb)
    torch.testing.assert_close(w, torch.tensor([1.0, 2.0, 2.0, 2.0], dtype=DT))
    torch.testing.assert_close(gaussian_calibrate(torch.full((5,), 0.3)), torch.ones(5))


def test_score_helpers():
    torch.testing.assert_close(
        structural_scores(_long([2, 4, 1])), torch.tensor([0.5, 1, 0.25], dtype=DT)
    )
    g = torch.Generator().manual_seed(0)
    ents, tgts = torch.randn(7, 4, generator=g, dtype=DT), torch.randn(3, 4, generator=g, dtype=DT)
    full = F.cosine_similarity(ents[:, None, :], tgts[None, :, :], dim=2).mean(1)  # [V, T]
    torch.testing.assert_close(semantic_scores(ents, tgts), full)


def test_weights_errors():
    with pytest.raises(ValueError, match="inside the scope"):
        influence_weights(W_U, W_I, _long([0]), _long([1, 2]), W_USER_EMB, W_ITEM_EMB)
    with pytest.raises(ValueError, match="use_semantic=False"):
        influence_weights(W_U, W_I, _long([0]), _long([0, 1]))
    w = influence_weights(W_U, W_I, _long([0]), _long([0, 1]), use_semantic=False)
    assert w.shape == (2,)


# ---------------------------------------------------------------------------------------------
# Curvature-vector products
# ---------------------------------------------------------------------------------------------


def _tiny_mf(seed: int = 0):
    """4 users x 5 items x dim 3; BPR triples fixed in advance; float64."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(4, 3, generator=g, dtype=DT)
    V = torch.randn(5, 3, generator=g, dtype=DT)
    u = torch.tensor([0, 0, 1, 2, 3, 3])
    i = torch.tensor([1, 2, 0, 4, 3, 1])
    j = torch.tensor([3, 0, 2, 1, 0, 4])
    reg = 0.1

    def diffs(U, V):  # z = y_ui - y_uj
        return (U[u] * V[i]).sum(1) - (U[u] * V[j]).sum(1)

    def loss(U, V):
        return -F.logsigmoid(diffs(U, V)).sum() + reg * (U.pow(2).sum() + V.pow(2).sum())

    return U, V, diffs, loss


def _flat_fn(fn, shapes):
    sizes = [math.prod(s) for s in shapes]

    def f(theta):
        parts = [p.view(s) for p, s in zip(torch.split(theta, sizes), shapes)]
        return fn(*parts)

    return f


def test_flat_unflat_roundtrip():
    ts = [torch.randn(2, 3), torch.randn(4), torch.randn(1, 1, 2)]
    v = flat(ts)
    assert v.shape == (12,)
    for a, b in zip(unflat(v, ts), ts):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="does not match"):
        unflat(torch.zeros(11), ts)


def test_hvp_equals_dense_hessian():
    U, V, _, loss = _tiny_mf()
    params = [U.clone().requires_grad_(), V.clone().requires_grad_()]
    g = torch.Generator().manual_seed(1)
    vec = [torch.randn(4, 3, generator=g, dtype=DT), torch.randn(5, 3, generator=g, dtype=DT)]
    H = torch.autograd.functional.hessian(_flat_fn(loss, [(4, 3), (5, 3)]), flat([U, V]))
    want = H @ flat(vec)
    got = hvp(lambda: loss(*params), params, vec)
    assert [t.shape for t in got] == [(4, 3), (5, 3)]
    torch.testing.assert_close(flat(got), want, atol=1e-12, rtol=1e-10)
    matvec = hvp_operator(lambda: loss(*params), params)
    for _ in range(2):  # the retained graph serves repeated calls
        torch.testing.assert_close(matvec(flat(vec)), want, atol=1e-12, rtol=1e-10)


def test_hvp_unused_parameter_gives_zeros():
    a = torch.tensor([1.0, 2.0], dtype=DT, requires_grad=True)
    b = torch.tensor([3.0], dtype=DT, requires_grad=True)  # unused
    c = torch.tensor([5.0], dtype=DT, requires_grad=True)  # linear only
    vec = [torch.ones(2, dtype=DT), torch.ones(1, dtype=DT), torch.ones(1, dtype=DT)]
    out = hvp(lambda: (a**3).sum() + 2 * c.sum(), [a, b, c], vec)
    torch.testing.assert_close(flat(out), torch.tensor([6.0, 12.0, 0.0, 0.0], dtype=DT))


def test_gauss_newton_equals_explicit_jacobian():
    U, V, diffs, _ = _tiny_mf()
    params = [U.clone().requires_grad_(), V.clone().requires_grad_()]
    g = torch.Generator().manual_seed(2)
    vec = [torch.randn(4, 3, generator=g, dtype=DT), torch.randn(5, 3, generator=g, dtype=DT)]
    # explicit Jacobian J: [M, P]
    J = torch.autograd.functional.jacobian(_flat_fn(diffs, [(4, 3), (5, 3)]), flat([U, V]))
    z = diffs(U, V)
    c = sigmoid_curvature(z)
    want = J.T @ (c * (J @ flat(vec)))
    got = gauss_newton_vp(lambda p: diffs(*p), params, vec, sigmoid_curvature)
    torch.testing.assert_close(flat(got), want, atol=1e-12, rtol=1e-10)
    got_tensor_c = gauss_newton_vp(lambda p: diffs(*p), params, vec, c)
    torch.testing.assert_close(flat(got_tensor_c), want, atol=1e-12, rtol=1e-10)
    # positive semi-definite: every Rayleigh quotient is >= 0
    matvec = gauss_newton_operator(lambda p: diffs(*p), params, sigmoid_curvature)
    G = torch.stack([matvec(e) for e in torch.eye(27, dtype=DT)])
    torch.testing.assert_close(G, G.T)
    assert torch.linalg.eigvalsh(G).min() > -1e-12


def test_gauss_newton_of_no_outputs_is_zero():
    # a user request leaves its users no retained row: the curvature's row set is empty, yet the
    # (empty) outputs still carry a graph to the tables; J = 0, so the product is 0, not an error
    U, V, _, _ = _tiny_mf()
    params = [U.clone().requires_grad_(), V.clone().requires_grad_()]
    rows = torch.zeros(0, dtype=torch.long)

    def outputs(p):  # pair scores of the rows and their users' scores over all items
        return torch.cat([(p[0][rows] * p[1][rows]).sum(1), (p[0][rows] @ p[1].T).reshape(-1)])

    assert outputs(params).requires_grad and outputs(params).numel() == 0
    matvec = gauss_newton_operator(outputs, params, sigmoid_curvature)
    v = torch.randn(27, generator=torch.Generator().manual_seed(4), dtype=DT)
    torch.testing.assert_close(matvec(v), torch.zeros_like(v))


def test_gauss_newton_is_exact_hessian_for_linear_outputs():
    # logistic regression: z = X w is linear in w, so J^T diag(f'') J = Hessian exactly
    g = torch.Generator().manual_seed(3)
    X = torch.randn(10, 4, generator=g, dtype=DT)
    w = torch.randn(4, generator=g, dtype=DT, requires_grad=True)
    v = [torch.randn(4, generator=g, dtype=DT)]
    gn = gauss_newton_vp(lambda p: X @ p[0], [w], v, sigmoid_curvature)
    h = hvp(lambda: -F.logsigmoid(X @ w).sum(), [w], v)
    torch.testing.assert_close(gn[0], h[0])


# ---------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=DT)
    return M @ M.T + 0.1 * torch.eye(n, dtype=DT)


@pytest.mark.parametrize("damping", [1e-2, 1.0])
def test_cg_equals_dense_solve(damping):
    A = _spd(12, 0)
    b = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=DT)
    res = conjugate_gradient(lambda v: A @ v, b, damping, max_iter=100, tol=1e-12)
    want = torch.linalg.solve(A + damping * torch.eye(12, dtype=DT), b)
    torch.testing.assert_close(res.x, want, atol=1e-8, rtol=0)
    assert res.converged and not res.negative_curvature
    assert len(res.residual_norms) == res.iterations + 1
    assert res.residual_norms[0] == pytest.approx(float(b.norm()))
    assert res.residual_norms[-1] <= 1e-12 * float(b.norm())


def test_cg_stops_on_tolerance_before_max_iter():
    # three distinct eigenvalues: exact CG converges in three steps
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(9, 9, generator=g, dtype=DT))
    A = Q @ torch.diag(torch.tensor([1.0, 1, 1, 4, 4, 4, 9, 9, 9], dtype=DT)) @ Q.T
    b = torch.randn(9, generator=g, dtype=DT)
    res = conjugate_gradient(lambda v: A @ v, b, 1e-3, max_iter=30, tol=1e-8)
    assert res.converged and res.iterations <= 4
    res2 = conjugate_gradient(lambda v: A @ v, b, 1e-3, max_iter=2, tol=1e-14)
    assert res2.stop_reason == "max_iter" and res2.iterations == 2


def test_cg_detects_negative_curvature():
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, -10.0], dtype=DT))
    b = torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=DT)
    res = conjugate_gradient(lambda v: A @ v, b, 1e-2, max_iter=30)
    assert res.negative_curvature and not res.converged
    assert res.iterations < 4 and torch.isfinite(res.x).all()
    first = conjugate_gradient(lambda v: A @ v, torch.tensor([0, 0, 0, 1.0], dtype=DT), 1e-2)
    assert first.negative_curvature and first.iterations == 0
    torch.testing.assert_close(first.x, torch.zeros(4, dtype=DT))


def test_cg_edge_cases():
    A = _spd(5, 2)
    with pytest.raises(ValueError, match="damping"):
        conjugate_gradient(lambda v: A @ v, torch.ones(5, dtype=DT), 0.0)
    with pytest.raises(ValueError, match="damping"):
        conjugate_gradient(lambda v: A @ v, torch.ones(5, dtype=DT), -1.0)
    zero = conjugate_gradient(lambda v: A @ v, torch.zeros(5, dtype=DT), 1e-2)
    assert zero.converged and zero.iterations == 0 and not zero.x.any()
    nan = conjugate_gradient(lambda v: v * float("nan"), torch.ones(5, dtype=DT), 1e-2)
    assert nan.stop_reason == "non_finite" and not nan.x.any()
    # H = 0 (the "no curvature" ablation): Delta = b / lambda, a plain gradient step
    step = conjugate_gradient(torch.zeros_like, torch.arange(5, dtype=DT), 0.5)
    torch.testing.assert_close(step.x, torch.arange(5, dtype=DT) / 0.5)


def test_batched_block_solve_matches_per_block():
    g = torch.Generator().manual_seed(5)
    M = torch.randn(6, 4, 4, generator=g, dtype=DT)
    A = M @ M.transpose(1, 2)
    b = torch.randn(6, 4, generator=g, dtype=DT)
    x = batched_block_solve(A, b, 0.3)
    for k in range(6):
        want = torch.linalg.solve(A[k] + 0.3 * torch.eye(4, dtype=DT), b[k])
        torch.testing.assert_close(x[k], want)
    with pytest.raises(ValueError, match="damping"):
        batched_block_solve(A, b, -1.0)
    with pytest.raises(ValueError, match=r"\[B, d, d\]"):
        batched_block_solve(A, b[:, :3], 0.1)


# ---------------------------------------------------------------------------------------------
# Influence versus reality: leave-one-out retraining on a tiny MF
# ---------------------------------------------------------------------------------------------


def test_influence_predicts_leave_one_out_retraining():
    """Delta theta = H^{-1} grad l(z) predicts how the removed pair's score moves when the
    model is retrained without z (from the converged point).

    8 users x 8 items, dim 2, 75% of pairs observed with a +-1 label from a rank-2 truth,
    pointwise loss -log sigmoid(+-y_ui), L2 0.5 * ||theta||^2, trained by full-batch LBFGS to
    a gradient norm below 1e-6 (float64 line searches stall near 1e-7). MF keeps flat rotation
    directions, (U R, V R), so H is singular; CG from 0 stays orthogonal to them because every
    gradient does. The first-order step under-predicts the size of the change (a removed pair
    has high leverage in so small a problem) but ranks the removals right.
    """
    n, d, reg = 8, 2, 0.5
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(n, 2, generator=g, dtype=DT) @ torch.randn(n, 2, generator=g, dtype=DT).T
    truth = truth + 0.3 * torch.randn(n, n, generator=g, dtype=DT)
    users, items = (torch.rand(n, n, generator=g) < 0.75).nonzero().unbind(1)
    sign = torch.where(truth[users, items] > 0, 1.0, -1.0).to(DT)

    def loss(U, V, keep=None):
        per = -F.logsigmoid(sign * (U[users] * V[items]).sum(1))
        if keep is not None:
            per = per * keep
        return per.sum() + reg * (U.pow(2).sum() + V.pow(2).sum())

    def train(U, V, keep=None):
        U, V = U.clone().requires_grad_(), V.clone().requires_grad_()
        opt = torch.optim.LBFGS(
            [U, V], lr=1, max_iter=500, tolerance_grad=1e-11, tolerance_change=0,
            history_size=20, line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            out = loss(U, V, keep)
            out.backward()
            return out

        opt.step(closure)
        grad = flat(torch.autograd.grad(loss(U, V, keep), [U, V]))
        assert grad.norm() < 1e-6, f"training did not converge: |grad| = {grad.norm():.2e}"
        return U.detach(), V.detach()

    U, V = train(0.5 * torch.randn(n, d, generator=g, dtype=DT),
                 0.5 * torch.randn(n, d, generator=g, dtype=DT))
    params = [U.clone().requires_grad_(), V.clone().requires_grad_()]
    matvec = hvp_operator(lambda: loss(*params), params)

    def matvec_plain(v):  # the one-shot hvp gives the same operator
        return flat(hvp(lambda: loss(*params), params, unflat(v, params)))

    predicted, predicted_plain, actual = [], [], []
    for z in range(15):
        theta = [U.clone().requires_grad_(), V.clone().requires_grad_()]
        score = (theta[0][users[z]] * theta[1][items[z]]).sum()
        loss_z = -F.logsigmoid(sign[z] * score)
        grad_z = flat(torch.autograd.grad(loss_z, theta, retain_graph=True))
        grad_score = flat(torch.autograd.grad(score, theta))
        delta = conjugate_gradient(matvec, grad_z, 1e-6, max_iter=100).x
        predicted.append(float(grad_score @ delta))
        delta_plain = conjugate_gradient(matvec_plain, grad_z, 1e-6, max_iter=100).x
        predicted_plain.append(float(grad_score @ delta_plain))

        keep = torch.ones(len(users), dtype=DT)
        keep[z] = 0
        U2, V2 = train(U, V, keep)
        actual.append(float((U2[users[z]] * V2[items[z]]).sum() - score.detach()))

    pred, real = torch.tensor(predicted), torch.tensor(actual)
    pearson = torch.corrcoef(torch.stack([pred, real]))[0, 1]
    assert pearson > 0.9, f"Pearson {pearson:.3f}: {predicted} vs {actual}"
    # the direction is right too: a removed positive pair loses score, a negative one gains
    assert (torch.sign(pred) == torch.sign(real)).all()
    torch.testing.assert_close(torch.tensor(predicted_plain), pred, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# CUDA: the same numerics on the GPU agree with the CPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(7)
    users = torch.randint(0, 300, (5000,), generator=g)
    items = torch.randint(0, 400, (5000,), generator=g)
    targets = torch.randperm(5000, generator=g)[:20]
    ue, ie = torch.randn(300, 8, dtype=DT, generator=g), torch.randn(400, 8, dtype=DT, generator=g)
    for cap in (None, 700):
        cpu = influence_scope(users, items, targets, 2, cap=cap)
        gpu = influence_scope(users.to(dev), items.to(dev), targets.to(dev), 2, cap=cap)
        assert gpu.scope_index.device.type == "cuda"
        assert torch.equal(gpu.scope_index.cpu(), cpu.scope_index)
        assert torch.equal(gpu.context_index.cpu(), cpu.context_index)
    scope = influence_scope(users, items, targets, 1).scope_index
    w_cpu = influence_weights(users, items, targets, scope, ue, ie)
    w_gpu = influence_weights(
        users.to(dev), items.to(dev), targets.to(dev), scope.to(dev), ue.to(dev), ie.to(dev)
    )
    assert w_gpu.device.type == "cuda"
    torch.testing.assert_close(w_gpu.cpu(), w_cpu)

    A = _spd(20, 3)
    b = torch.randn(20, dtype=DT, generator=g)
    x_cpu = conjugate_gradient(lambda v: A @ v, b, 1e-2, max_iter=100).x
    A_d = A.to(dev)
    x_gpu = conjugate_gradient(lambda v: A_d @ v, b.to(dev), 1e-2, max_iter=100).x
    assert x_gpu.device.type == "cuda"
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, atol=1e-8, rtol=0)

    U, V, _, loss = _tiny_mf()
    vec = [torch.ones(4, 3, dtype=DT), torch.ones(5, 3, dtype=DT)]
    p_cpu = [U.clone().requires_grad_(), V.clone().requires_grad_()]
    p_gpu = [U.to(dev).requires_grad_(), V.to(dev).requires_grad_()]
    h_cpu = flat(hvp(lambda: loss(*p_cpu), p_cpu, vec))
    h_gpu = flat(hvp(lambda: loss(*p_gpu), p_gpu, [v.to(dev) for v in vec]))
    torch.testing.assert_close(h_gpu.cpu(), h_cpu)


def test_cg_can_run_through_negative_curvature_like_the_paper():
    # Indefinite A: the default stops at once; the paper's fixed-T mode keeps iterating.
    A = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    stopped = conjugate_gradient(lambda v: A @ v, b, damping=1e-3, max_iter=5)
    assert stopped.negative_curvature
    plain = conjugate_gradient(lambda v: A @ v, b, damping=1e-3, max_iter=5,
                               stop_on_negative_curvature=False)
    assert plain.stop_reason in ("converged", "max_iter_negative_curvature")
    # Plain CG on a 3x3 system still solves it exactly (3 steps in exact arithmetic).
    expected = torch.linalg.solve(A + 1e-3 * torch.eye(3, dtype=torch.float64), b)
    assert torch.allclose(plain.x, expected, atol=1e-6)
