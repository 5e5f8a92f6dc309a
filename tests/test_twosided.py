"""l2unrank_twosided against ground truth on tiny float64 problems built by hand, and end to end
on the tiny RecBole dataset.

(a) one half-sweep equals the dense block solve (autograd gradient of the retained loss in
    difference form, autograd Hessian / Gauss-Newton restricted to each block);
(b) converged sweeps equal the dense joint solution over the scope's parameters (Newton on
    ``grad_scope L_ret(theta) = grad_scope L_full(theta0)``);
(c) WMF at an exact-ALS optimum: one user half-sweep is the ALS re-solve difference, and a
    whole forgotten item goes to 0;
(d) end to end: only scope rows move, the forgotten pairs fall, the item task pushes the
    forgotten items down; bad settings are refused with one line.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_tiny_config
from torch import nn

from recbole_unrank import pipeline
from recbole_unrank.adapters import get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence.blocks import scope_blocks
from recbole_unrank.methods import METHODS
from recbole_unrank.methods.objective import Objective, row_loss
from recbole_unrank.methods.twosided import TwoSidedProblem

DT = torch.float64


# --------------------------------------------------------------------------- tiny models by hand
class WMF(nn.Module):
    """What the adapter reads of RecBole's WMF (named so that get_adapter picks its adapter)."""

    def __init__(self, n_users, n_items, d, alpha=2.0, w0=0.1, reg=0.05, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_users, self.n_items = n_users, n_items
        self.user_embedding = nn.Embedding(n_users, d).to(DT)
        self.item_embedding = nn.Embedding(n_items, d).to(DT)
        with torch.no_grad():
            self.user_embedding.weight.mul_(0.3)
            self.item_embedding.weight.mul_(0.3)
        self.alpha, self.negative_weight, self.reg_weight = alpha, w0, reg


class NeuMF(nn.Module):
    """What the NeuMF adapter reads of RecBole's NeuMF (smooth activation, float64)."""

    def __init__(self, n_users, n_items, d_mf=3, d_mlp=3, hidden=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_users, self.n_items = n_users, n_items
        self.mf_train = self.mlp_train = True
        self.user_mf_embedding = nn.Embedding(n_users, d_mf).to(DT)
        self.item_mf_embedding = nn.Embedding(n_items, d_mf).to(DT)
        self.user_mlp_embedding = nn.Embedding(n_users, d_mlp).to(DT)
        self.item_mlp_embedding = nn.Embedding(n_items, d_mlp).to(DT)
        self.mlp_layers = nn.Sequential(nn.Linear(2 * d_mlp, hidden), nn.Tanh()).to(DT)
        self.predict_layer = nn.Linear(d_mf + hidden, 1).to(DT)
        with torch.no_grad():
            for e in (self.user_mf_embedding, self.item_mf_embedding, self.user_mlp_embedding,
                      self.item_mlp_embedding):
                e.weight.mul_(0.5)


def _data(n_users=7, n_items=9, per_user=4, seed=1):
    """Distinct (u, i) train rows; ids from 1 (0 is RecBole's padding)."""
    g = torch.Generator().manual_seed(seed)
    us, its = [], []
    for u in range(1, n_users):
        chosen = torch.randperm(n_items - 1, generator=g)[:per_user] + 1
        us += [u] * per_user
        its += chosen.tolist()
    users, items = torch.tensor(us), torch.tensor(its)
    neg = torch.randint(1, n_items, (users.numel(), 1), generator=g)
    return users, items, neg


def _problem(model, users, items, neg, target, hops=0, damping=0.0):
    adapter = get_adapter(model)
    keep = torch.ones(users.numel(), dtype=torch.bool)
    keep[target] = False
    obj = Objective(adapter, users, items, neg, "training", 1)
    um, im, _ = scope_blocks(users, items, keep, target, hops, adapter.n_users, adapter.n_items)
    return adapter, obj, keep, TwoSidedProblem(adapter, obj, keep, um, im, damping)


def _tables(adapter, side):
    return adapter.user_tables() if side == "user" else adapter.item_tables()


def _block_grad(loss, tables, ids, retain=False):
    """grad of a scalar with respect to the rows ``ids`` of each table, concatenated: [B, d]."""
    grads = torch.autograd.grad(loss, tables, allow_unused=True, retain_graph=retain)
    return torch.cat([(torch.zeros_like(t) if gr is None else gr)[ids] for t, gr in zip(tables, grads)], -1)


def _dense_block_gn(obj, adapter, index, side, ids, gram):
    """Per block: the exact Hessian of the retained loss (WMF: quadratic blocks) or, for NeuMF,
    the Gauss-Newton matrix from per-output autograd Jacobians: [B, d, d]."""
    tables = _tables(adapter, side)
    if adapter.dot_product:
        loss = obj.loss(index, gram=gram)
        grads = torch.autograd.grad(loss, tables, create_graph=True)
        g = torch.cat([gr[ids] for gr in grads], -1)  # [B, d]
        B, d = g.shape
        H = torch.zeros(B, d, d, dtype=DT)
        for b in range(B):
            for k in range(d):
                row = torch.autograd.grad(g[b, k], tables, retain_graph=True)
                H[b, k] = torch.cat([r[ids[b]] for r in row])
        return H
    B = ids.numel()
    d = sum(t.shape[1] for t in tables)
    H = torch.zeros(B, d, d, dtype=DT)
    s = obj.spec
    for p in obj._pieces(index, None):
        z = obj._z(p)
        c = p.w.to(DT) * row_loss(p.kind, z, s.alpha, s.w0, 2)
        for k in range(z.numel()):
            J = _block_grad(z[k], tables, ids, retain=True)  # [B, d]: nonzero only in the block(s) z_k touches
            H += c[k].detach() * J[:, :, None] * J[:, None, :]
    return H


def _models():
    """A WMF a few ALS sweeps into training (near, not at, its optimum: the difference form's
    case) and a NeuMF at its initialisation."""
    users, items, neg = _data()
    wmf = WMF(7, 9, 3)
    _als(wmf, users, items, sweeps=3)
    neumf = NeuMF(7, 9)
    obj = Objective(get_adapter(neumf), users, items, neg, "training", 1)
    opt = torch.optim.Adam(neumf.parameters(), lr=0.05)
    for _ in range(150):  # part of the way to its optimum, as training with early stopping leaves it
        opt.zero_grad()
        obj.loss(torch.arange(users.numel())).backward()
        opt.step()
    return [("WMF", wmf, users, items, neg), ("NeuMF", neumf, users, items, neg)]


# --------------------------------------------------------------------------- (a) one half-sweep
@pytest.mark.parametrize("name", ["WMF", "NeuMF"])
def test_one_half_sweep_equals_the_dense_block_solve(name):
    _, model, users, items, neg = next(m for m in _models() if m[0] == name)
    target = torch.tensor([0, 1, 5, 9, 10])  # partial users and items only
    damping = 1e-3
    adapter, obj, keep, prob = _problem(model, users, items, neg, target, damping=damping)
    all_rows, ret = torch.arange(users.numel()), keep.nonzero().squeeze(1)
    for side in ("user", "item"):  # users first, then items at the point the users reached
        ids = prob.ids[side]
        assert ids.numel() > 0
        tables = _tables(adapter, side)
        before = torch.cat([t.detach()[ids] for t in tables], -1).clone()
        # The target: grad L_full at theta0 (the problem took it on construction).
        r = _block_grad(obj.loss(ret, gram=True), tables, ids) - prob.g0[side]
        H = _dense_block_gn(obj, adapter, ret, side, ids, gram=True)
        # The side's own blocks have not moved yet: the anchor (no-L2 losses) adds only to the curvature.
        lam = damping + prob.anchor
        expected = -torch.linalg.solve(H + lam * torch.eye(H.shape[1], dtype=DT), r.unsqueeze(-1)).squeeze(-1)
        assert bool((prob.half_sweep(side, line_search=False) == 1).all())
        after = torch.cat([t.detach()[ids] for t in tables], -1)
        torch.testing.assert_close(after - before, expected, rtol=1e-8, atol=1e-10)
        assert expected.abs().max() > 1e-4  # the step is not trivially zero
    # The target at theta0 is the full loss's gradient: the difference form's r(theta0) = -grad L_forget.
    _, obj2, _keep2, prob2 = _problem(copy.deepcopy(model), users, items, neg, target)
    tables = _tables(prob2.a, "item")
    torch.testing.assert_close(prob2.g0["item"], _block_grad(obj2.loss(all_rows, gram=True), tables,
                                                              prob2.ids["item"]), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- (b) converged sweeps
def _dense_joint(model_fn, users, items, neg, target, whole_zero: bool, damping: float):
    """Dense Newton on every scope parameter at once: grad_scope L_ret(theta) = grad_scope L_full(theta0).
    Returns (solution rows per side, the one-step linear influence from theta0)."""
    model = model_fn()
    adapter, obj, keep, prob = _problem(model, users, items, neg, target, damping=damping)
    all_rows, ret = torch.arange(users.numel()), keep.nonzero().squeeze(1)
    tables = adapter.user_tables() + adapter.item_tables()
    sides = ["user"] * len(adapter.user_tables()) + ["item"] * len(adapter.item_tables())

    def scope_vec(grads):
        return torch.cat([gr[prob.ids[s]].reshape(-1) for gr, s in zip(grads, sides)])

    g_full0 = scope_vec(torch.autograd.grad(obj.loss(all_rows, gram=True), tables, allow_unused=True))  # at theta0
    if whole_zero:  # then the blocks with no retained row take 0
        prob.reset_whole_blocks()
    x0 = scope_vec([t.detach() for t in tables]).clone()  # the anchor's centre (no-L2 losses only)

    def F_and_J():
        grads = torch.autograd.grad(obj.loss(ret, gram=True), tables, create_graph=True)
        F = scope_vec(grads)
        J = torch.stack([scope_vec([torch.zeros_like(t) if x is None else x for t, x in zip(
            tables, torch.autograd.grad(F[k], tables, retain_graph=True, allow_unused=True))])
            for k in range(F.numel())])
        anchor = prob.anchor * (scope_vec([t.detach() for t in tables]) - x0)
        return (F - g_full0 + anchor).detach(), J.detach() + prob.anchor * torch.eye(F.numel(), dtype=DT)

    def add(step):
        with torch.no_grad():
            start = 0
            for t, s in zip(tables, sides):
                n = prob.ids[s].numel() * t.shape[1]
                t[prob.ids[s]] += step[start:start + n].view(-1, t.shape[1])
                start += n

    F, J = F_and_J()
    linear = -torch.linalg.solve(J, F)
    for _ in range(100):  # Newton with backtracking on ||F||
        F, J = F_and_J()
        if float(F.norm()) < 1e-13:
            break
        step, t = -torch.linalg.solve(J, F), 1.0
        add(step)
        while float(F_and_J()[0].norm()) >= float(F.norm()) and t > 1e-6:
            add(-0.5 * t * step)
            t *= 0.5
    assert float(F.norm()) < 1e-10
    sol = {s: torch.cat([t.detach()[prob.ids[s]] for t, ss in zip(tables, sides) if ss == s], -1) for s in ("user", "item")}
    return sol, linear


@pytest.mark.parametrize("name,target,damping", [("WMF", [0, 1, 5, 9, 10], 1e-6), ("WMF", [0, 1, 2, 3, 9], 1e-6),
                                                 ("NeuMF", [0, 1, 5, 9, 10], 1.0), ("NeuMF", [0, 1, 2, 3, 9], 1.0)])
def test_converged_sweeps_equal_the_dense_joint_solution(name, target, damping, capsys):
    """WMF: the exact r = 0. NeuMF (no L2 term): r + anchor (theta - theta0) = 0, anchor = the
    damping (its difference-form objective is unbounded below without it)."""
    _, model, users, items, neg = next(m for m in _models() if m[0] == name)
    target = torch.tensor(target)
    m = copy.deepcopy(model)
    sol, linear = _dense_joint(lambda: copy.deepcopy(model), users, items, neg, target, True, damping)
    adapter, _obj, _keep, prob = _problem(m, users, items, neg, target, damping=damping)
    assert prob.anchor == (0.0 if name == "WMF" else damping)
    before = {s: prob.block(s).clone() for s in ("user", "item")}
    info = prob.run(sweeps=1000, tol=1e-10)
    assert info["converged"] and info["sweeps"] > 1
    for s in ("user", "item"):
        torch.testing.assert_close(prob.block(s), sol[s], rtol=1e-7, atol=1e-9)
    # The one-step linear joint influence H_scope^-1 g_forget, for the report.
    moved = torch.cat([(sol[s] - before[s]).reshape(-1) for s in ("user", "item")])
    gap = float((linear - moved).norm() / moved.norm())
    with capsys.disabled():
        print(f"\n[{name} target={target.tolist()}] converged in {info['sweeps']} sweeps; one-step linear joint "
              f"influence differs from the converged update by {gap:.3g} (relative)")
    assert np.isfinite(gap)
    if info["whole_users"] or info["whole_items"]:
        assert info["whole_users"] == 1  # the request [0..3] forgets user 1 whole: a fresh seeded draw
        fresh = adapter.user_block(prob.whole_users)
        gen = torch.Generator().manual_seed(0)
        std = (2.0 / (7 + 3)) ** 0.5 if name == "WMF" else 0.01  # xavier normal (WMF), NeuMF's normal(0.01)
        draw = torch.cat([torch.randn(1, t.shape[1], generator=gen, dtype=DT) * std for t in adapter.user_tables()], -1)
        torch.testing.assert_close(fresh, draw)
        assert not torch.equal(fresh, get_adapter(model).user_block(prob.whole_users))


# --------------------------------------------------------------------------- (c) WMF and exact ALS
def _als(model, users, items, sweeps=400):
    """Exact ALS in float64 for the adapter's WMF loss: sum_obs (1+a)(1-y)^2 - w0 y^2,
    + w0 sum_{u with rows} sum_{i all items} y^2, + reg (|p_u|^2 + |q_i|^2) per observed row."""
    a, w0, reg = model.alpha, model.negative_weight, model.reg_weight
    P, Q = model.user_embedding.weight, model.item_embedding.weight
    d = P.shape[1]
    eye = torch.eye(d, dtype=DT)
    active = torch.unique(users)
    with torch.no_grad():
        for _ in range(sweeps):
            G = Q.T @ Q
            for u in active.tolist():
                qi = Q[items[users == u]]
                A = 2 * (1 + a - w0) * qi.T @ qi + 2 * w0 * G + 2 * reg * qi.shape[0] * eye
                P[u] = torch.linalg.solve(A, 2 * (1 + a) * qi.sum(0))
            GP = P[active].T @ P[active]
            for i in range(Q.shape[0]):
                pu = P[users[items == i]]
                A = 2 * (1 + a - w0) * pu.T @ pu + 2 * w0 * GP + 2 * reg * pu.shape[0] * eye
                Q[i] = torch.linalg.solve(A, 2 * (1 + a) * pu.sum(0))
    return P, Q


def test_wmf_user_half_sweep_is_the_als_resolve_and_a_whole_item_goes_to_zero():
    users, items, neg = _data()
    model = WMF(7, 9, 3)
    P, Q = _als(model, users, items)
    adapter = get_adapter(model)
    obj = Objective(adapter, users, items, neg, "training", 1)
    grads = torch.autograd.grad(obj.loss(torch.arange(users.numel()), gram=True), [P, Q])
    assert max(float(g.abs().max()) for g in grads) < 1e-9  # an ALS-converged optimum
    # Forget every row of one item (it goes whole) and two rows of other users.
    whole_item = int(items[0])
    target = torch.cat(((items == whole_item).nonzero().squeeze(1), torch.tensor([6, 13]))).unique()
    keep = torch.ones(users.numel(), dtype=torch.bool)
    keep[target] = False
    m2 = copy.deepcopy(model)
    _, _, _, prob = _problem(m2, users, items, neg, target, damping=0.0)
    assert prob.whole_items.tolist() == [whole_item]
    P0 = P.detach().clone()
    prob.half_sweep("user")
    # The exact ALS re-solve of each moved user on the retained rows, items fixed.
    a, w0, reg = model.alpha, model.negative_weight, model.reg_weight
    G = Q.detach().T @ Q.detach()
    eye = torch.eye(3, dtype=DT)
    for u in prob.ids["user"].tolist():
        qi = Q.detach()[items[keep & (users == u)]]
        A = 2 * (1 + a - w0) * qi.T @ qi + 2 * w0 * G + 2 * reg * qi.shape[0] * eye
        p_ret = torch.linalg.solve(A, 2 * (1 + a) * qi.sum(0))
        torch.testing.assert_close(m2.user_embedding.weight[u] - P0[u], p_ret - P0[u], rtol=1e-8, atol=1e-11)
        assert float((p_ret - P0[u]).abs().max()) > 1e-4
    # A whole run sends the whole item to 0 (its retained optimum: no row, the all-entries term's minimum).
    m3 = copy.deepcopy(model)
    _, _, _, prob3 = _problem(m3, users, items, neg, target, damping=1e-2)
    info = prob3.run(sweeps=1, tol=0.5)
    assert info["whole_items"] == 1
    assert torch.equal(m3.item_embedding.weight[whole_item].detach(), torch.zeros(3, dtype=DT))


# --------------------------------------------------------------------------- (c2) bcd_diff and sides=users
def _als_block(model, users, items, rows, u=None, i=None):
    """The exact ALS re-solve of one user ``u`` (items fixed) or one item ``i`` (users fixed) on
    the rows ``rows`` (bool), with the all-entries term over the users holding a row in ``rows``."""
    a, w0, reg = model.alpha, model.negative_weight, model.reg_weight
    P, Q = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    eye = torch.eye(P.shape[1], dtype=DT)
    if u is not None:
        other, G = Q[items[rows & (users == u)]], Q.T @ Q
    else:
        act = torch.unique(users[rows])
        other, G = P[users[rows & (items == i)]], P[act].T @ P[act]
    A = 2 * (1 + a - w0) * other.T @ other + 2 * w0 * G + 2 * reg * other.shape[0] * eye
    return torch.linalg.solve(A, 2 * (1 + a) * other.sum(0))


def _resolve_sweep(model, users, items, rows, uids, iids):
    """One exact Gauss-Seidel sweep of ALS re-solves over the given users, then items, in place."""
    with torch.no_grad():
        P, Q = model.user_embedding.weight, model.item_embedding.weight
        new = [(u, _als_block(model, users, items, rows, u=u)) for u in uids]
        for u, p in new:
            P[u] = p
        new = [(i, _als_block(model, users, items, rows, i=i)) for i in iids]
        for i, q in new:
            Q[i] = q


def test_bcd_diff_one_sweep_is_the_difference_of_two_als_sweeps_off_the_optimum():
    """WMF a few ALS sweeps from its initialisation (not at the optimum: grad L_full(theta0) != 0).
    ``bcd_diff`` with one sweep = theta0 + S_ret(theta0) - S_full(theta0), S being one exact ALS
    sweep (scope users, then scope items) on the retained / every row; the ``tilt`` sweep is not
    (it solves grad L_ret = grad L_full(theta0) instead)."""
    users, items, neg = _data()
    model = WMF(7, 9, 3)
    _als(model, users, items, sweeps=1)
    target = torch.tensor([0, 1, 5, 9, 10])
    m = copy.deepcopy(model)
    _, _, keep, prob = _problem(m, users, items, neg, target, damping=0.0)
    assert float(prob.g0["user"].norm()) > 1e-3  # off the optimum: the two forms differ
    uids, iids = prob.ids["user"].tolist(), prob.ids["item"].tolist()
    assert uids and iids and prob.whole_users.numel() == 0 and prob.whole_items.numel() == 0
    info = prob.run(1, 0.5, "bcd_diff")
    assert info["form"] == "bcd_diff" and info["sweeps"] == 1
    ret_m, full_m = copy.deepcopy(model), copy.deepcopy(model)
    _resolve_sweep(ret_m, users, items, keep, uids, iids)
    _resolve_sweep(full_m, users, items, torch.ones_like(keep), uids, iids)
    for name in ("user_embedding", "item_embedding"):
        w0_, wr, wf = (getattr(x, name).weight.detach() for x in (model, ret_m, full_m))
        # float64 batched solves against one-by-one solves: agreement to ~1e-10 relative.
        torch.testing.assert_close(getattr(m, name).weight.detach(), w0_ + wr - wf, rtol=1e-8, atol=1e-10)
    tilt = copy.deepcopy(model)
    _, _, _, prob_t = _problem(tilt, users, items, neg, target, damping=0.0)
    prob_t.run(1, 0.5, "tilt")
    assert float((tilt.item_embedding.weight - m.item_embedding.weight).detach().abs().max()) > 1e-6


def test_bcd_diff_equals_tilt_at_an_optimum():
    """At an ALS optimum grad L_full(theta0) = 0: the full loss's sweeps do not move, and both
    forms are block coordinate descent on the retained loss from theta0: equal after one sweep,
    and run to convergence both reach the same retained stationary point. (In between the
    residual need not fall: block descent lowers the loss, not its gradient's norm; here it goes
    0.88 -> 0.18 -> 0.21 -> 0.28 before converging, and ``tilt`` keeps the iterate of least
    residual, so the two are compared at one sweep and at convergence only.)"""
    users, items, neg = _data()
    model = WMF(7, 9, 3)
    _als(model, users, items)
    target = torch.tensor([0, 1, 5, 9, 10])
    start = torch.cat([model.user_embedding.weight.detach(), model.item_embedding.weight.detach()])
    for sweeps, tol in ((1, 0.5), (2000, 1e-13)):
        out = {}
        for form in ("tilt", "bcd_diff"):
            m = copy.deepcopy(model)
            _, _, _, prob = _problem(m, users, items, neg, target, damping=0.0)
            info = prob.run(sweeps, tol, form)
            if sweeps > 1 and form == "tilt":
                assert info["converged"]
            out[form] = torch.cat([m.user_embedding.weight.detach(), m.item_embedding.weight.detach()])
        # The optimum's gradient is ~1e-12 (ALS to 400 sweeps) and the solves are float64: the two
        # agree to ~1e-9; 1e-7 leaves room for the convergence tolerance.
        torch.testing.assert_close(out["bcd_diff"], out["tilt"], rtol=1e-7, atol=1e-7)
        assert float((out["tilt"] - start).abs().max()) > 1e-4


def test_bcd_scaled_is_bcd_diff_times_each_blocks_shrinkage():
    """``bcd_scaled`` = theta0 + s_b (S_ret - S_full) per block, s_b = <theta0_b, S_full_b> /
    ||S_full_b||^2 clipped to [0, 1] (S: one exact ALS sweep, as in the bcd_diff test). Off the
    optimum the shrinkages differ from 1 and from each other; at the optimum (S_full = theta0)
    every s_b is 1 and the form is bcd_diff."""
    users, items, neg = _data()
    target = torch.tensor([0, 1, 5, 9, 10])
    for sweeps_to, off in ((1, True), (400, False)):
        model = WMF(7, 9, 3)
        _als(model, users, items, sweeps=sweeps_to)
        with torch.no_grad():  # training stopped short: every row at 0.6 of where ALS left it
            if off:
                model.user_embedding.weight.mul_(0.6)
        m = copy.deepcopy(model)
        _, _, keep, prob = _problem(m, users, items, neg, target, damping=0.0)
        uids, iids = prob.ids["user"].tolist(), prob.ids["item"].tolist()
        info = prob.run(1, 0.5, "bcd_scaled")
        assert info["form"] == "bcd_scaled"
        ret_m, full_m = copy.deepcopy(model), copy.deepcopy(model)
        _resolve_sweep(ret_m, users, items, keep, uids, iids)
        _resolve_sweep(full_m, users, items, torch.ones_like(keep), uids, iids)
        scales = []
        for name, ids in (("user_embedding", uids), ("item_embedding", iids)):
            w0_, wr, wf = (getattr(x, name).weight.detach() for x in (model, ret_m, full_m))
            s = ((w0_[ids] * wf[ids]).sum(1, keepdim=True) / wf[ids].pow(2).sum(1, keepdim=True)).clamp(0, 1)
            scales.append(s)
            want = w0_.clone()
            want[ids] = w0_[ids] + s * (wr[ids] - wf[ids])
            torch.testing.assert_close(getattr(m, name).weight.detach(), want, rtol=1e-8, atol=1e-10)
        s = torch.cat(scales)
        if off:
            assert float(s.min()) < 0.9 and float(s.max() - s.min()) > 1e-3
        else:
            torch.testing.assert_close(s, torch.ones_like(s), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- (d) end to end, refusals
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for model in ("WMF", "NeuMF"):
        for request in ("interaction", "item"):
            work = tmp_path_factory.mktemp(f"{model}-{request}")
            config = make_tiny_config(work, model, epochs=8, learning_rate=0.01, unrank_request=request)
            run, _ = pipeline.prepare_run(config)
            run.prepare_original()
            out[model, request] = run
    return out


def _changed_rows(new_model, old_state, n_users, n_items):
    users, items = set(), set()
    for (name, new), old in zip(new_model.state_dict().items(), old_state.values()):
        if not new.dtype.is_floating_point:
            continue
        diff = (new - old).abs()
        if diff.dim() == 2 and diff.shape[0] in (n_users, n_items) and "embedding" in name:
            rows = set(torch.nonzero(diff.sum(1) > 0).view(-1).tolist())
            (users if "user" in name else items).update(rows)
        else:
            assert diff.max() == 0, f"{name} moved: only embedding rows of the scope may"
    return users, items


@pytest.mark.parametrize("model,form,sides", [("WMF", "bcd_diff", "users"), ("NeuMF", "bcd_diff", "users"),
                                              ("WMF", "bcd_diff", "both"), ("NeuMF", "tilt", "both")])
def test_end_to_end_moves_only_scope_rows_and_forgets(runs, model, form, sides):
    """sides=users (the default): only request users' rows move on the interaction task (no
    request item loses every row there); sides=both: request items' rows move too."""
    run = runs[model, "interaction"]
    before = copy.deepcopy(run.original.state_dict())
    settings = {"unrank_twosided_form": form, "unrank_twosided_sides": sides}
    row = run.run_method("l2unrank_twosided", overrides=settings, save=False, label=f"twosided-{form}-{sides}")
    new = row["_model"]
    req_users = set(np.unique(run.request.users).tolist())
    req_items = set(np.unique(run.request.items).tolist())
    moved_u, moved_i = _changed_rows(new, before, new.n_users, new.n_items)
    solve = row["solve"]
    assert moved_u and moved_u <= req_users
    if sides == "both":
        assert moved_i and moved_i <= req_items
    else:
        assert not moved_i and solve["whole_items"] == 0 and solve["items_moved"] == 0
    assert solve["sweeps"] >= 1 and solve["kept_sweep"] >= 1 and solve["form"] == form
    if model == "WMF" and form == "tilt":  # an L2 term: the sweeps lower the residual (NeuMF's may stop where it rose)
        assert solve["residuals"][solve["kept_sweep"]] < solve["residuals"][0] and solve["anchor"] == 0.0
    orig = run.rows[0]
    assert row["forget"]["mean_rank"] > orig["forget"]["mean_rank"]
    u = torch.as_tensor(run.request.users)
    i = torch.as_tensor(run.request.items)
    s0 = get_adapter(run.original).pair_scorer()(u, i)
    s1 = get_adapter(new).pair_scorer()(u, i)
    assert float(s1.mean()) < float(s0.mean())


@pytest.mark.parametrize("model", ["WMF", "NeuMF"])
def test_item_task_pushes_forgotten_items_down_for_every_user(runs, model, capsys):
    """Item task: every forgotten item is a whole block (no retained row) and goes to 0 (the
    exact retained optimum for WMF); then no request user keeps a forgotten item in the top 10,
    and on average their forgotten items rank lower. (A user for whom such an item already
    scored below 0 sees it rise to 0: that is where the retained optimum puts it.)"""
    run = runs[model, "item"]
    row = run.run_method("l2unrank_twosided", save=False, evaluate_test=False)
    forgotten = torch.as_tensor(np.unique(run.request.items))
    assert row["solve"]["whole_items"] == forgotten.numel()
    new = row["_model"]
    for t in get_adapter(new).item_tables():
        assert torch.equal(t.detach()[forgotten], torch.zeros_like(t.detach()[forgotten]))
    u = torch.as_tensor(run.request.users)
    i = torch.as_tensor(run.request.items)
    all_items = torch.arange(1, run.original.n_items)

    def ranks(model_):  # per forgotten pair: items the user scores above it
        score = get_adapter(model_).pair_scorer()
        n = all_items.numel()
        full = score(u.repeat_interleave(n), all_items.repeat(u.numel())).view(u.numel(), n)
        return (full > score(u, i)[:, None]).sum(1).double()

    r0, r1 = ranks(run.original), ranks(new)
    with capsys.disabled():
        print(f"\n[{model} item task] forgotten pairs ranked higher than before: {int((r1 < r0).sum())} of "
              f"{u.numel()} (all were outside the top 10 before: {bool((r0[r1 < r0] >= 10).all())}); "
              f"forget_hit@10 {run.rows[0]['forget']['forget_hit@10']:.3f} -> {row['forget']['forget_hit@10']:.3f}")
    assert int((r0 < 10).sum()) > 0 and bool((r1 >= 10).all())
    assert float(r1.mean()) > float(r0.mean())
    assert row["forget"]["forget_hit@10"] == 0.0


def test_bad_settings_are_refused_with_one_line(runs, tmp_path):
    cls = METHODS["l2unrank_twosided"]
    ok = {"hops": 0, "sweeps": 8, "tol": 1e-3, "damping": 1e-2}
    for bad, key in (({"sweeps": 0}, "unrank_twosided_sweeps"), ({"tol": 0.0}, "unrank_twosided_tol"),
                     ({"tol": 1.0}, "unrank_twosided_tol"), ({"hops": -1}, "unrank_twosided_hops"),
                     ({"damping": 0.0}, "unrank_damping"), ({"form": "newton"}, "unrank_twosided_form"),
                     ({"sides": "items"}, "unrank_twosided_sides"),
                     ({"form": "bcd_diff", "tol": 1e-2}, "unrank_twosided_tol")):
        with pytest.raises(UnrankError, match=key) as exc:
            cls(**{**ok, **bad})
        assert "\n" not in str(exc.value)
    run = runs["WMF", "interaction"]
    task = run._task()
    task.request_index = np.zeros(0, dtype=np.int64)
    with pytest.raises(UnrankError, match="no train interaction"):
        cls(**ok)(task)
    with pytest.raises(UnrankError, match="unrank_twosided_hops=50 acts like"):
        cls(**{**ok, "hops": 50, "sides": "both"})(run._task())
    config = make_tiny_config(tmp_path, "LightGCN", epochs=1)
    lrun, _ = pipeline.prepare_run(config)
    lrun.prepare_original()
    with pytest.raises(UnrankError, match="does not support LightGCN"):
        cls(**ok)(lrun._task())


@pytest.mark.parametrize("model", ["WMF", "NeuMF"])
def test_a_whole_user_goes_exactly_where_retraining_leaves_it(tmp_path, model):
    """User task: a forgotten user keeps no row, so retraining (same config and seed) never
    updates its block: it ends at its value in the initial model. The two-sided update puts it
    there too (ground truth: retraining itself)."""
    from recbole_unrank.training import initial_model

    config = make_tiny_config(tmp_path, model, epochs=8, learning_rate=0.01, unrank_request="user")
    run, _ = pipeline.prepare_run(config)
    run.prepare_original()
    state = torch.get_rng_state()
    init = get_adapter(initial_model(config, run.data.train_ds))
    assert torch.equal(state, torch.get_rng_state())  # the global random state is left as it was
    retrain = run.run_method("retrain", save=False)["_model"]
    twosided = run.run_method("l2unrank_twosided", save=False)
    assert twosided["whole_users"] == {"count": len(np.unique(run.request.users)), "to": "initial model"}
    users = torch.as_tensor(np.unique(run.request.users))
    expected = init.user_block(users)
    torch.testing.assert_close(get_adapter(retrain).user_block(users), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(get_adapter(twosided["_model"]).user_block(users), expected, rtol=0, atol=1e-7)
    # the original had moved them: the update is not a no-op
    assert float((get_adapter(run.original).user_block(users) - expected).abs().max()) > 1e-3
