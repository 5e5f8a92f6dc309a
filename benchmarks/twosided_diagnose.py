"""Why ``l2unrank_twosided``'s sweeps do not contract on the interaction task (issue 22), on a
tiny float64 WMF built by hand, against exact ground truth.

    python benchmarks/twosided_diagnose.py [--out benchmarks/results/twosided_diagnose.md]

Two originals of the same WMF on the same rows: ``adam`` (a few Adam epochs from the
initialisation, as RecBole trains WMF: not at an optimum of the full loss) and ``als`` (exact
ALS run to convergence: an optimum). For an interaction request (some rows of some users) it
reports, per original:

* the smallest eigenvalue of the dense Hessian of the full and of the retained loss over the
  scope's parameters at ``theta0`` (block Gauss-Seidel on a symmetric system with positive
  definite diagonal blocks contracts iff the whole matrix is positive definite: Ostrowski-Reich);
* the residual ``||grad L_ret(theta) - grad L_full(theta0)||`` after each ``tilt`` sweep;
* the distance of each variant's update to two references: ``diff`` = ``theta0 +
  ALS_ret(theta0) - ALS_full(theta0)`` (exact ALS of every block, warm-started from ``theta0``,
  to convergence: what the forgotten rows change, with "finishing training" cancelled) and
  ``resolve`` = ``ALS_ret(theta0)`` (warm-started retraining to convergence); measured on the
  forgotten pairs' scores (relative error of the score change and Pearson correlation of the
  scores).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from recbole_unrank.adapters import get_adapter  # noqa: E402 (after the sys.path line)
from recbole_unrank.influence.blocks import scope_blocks  # noqa: E402 (after the sys.path line)
from recbole_unrank.methods.objective import Objective  # noqa: E402 (after the sys.path line)
from recbole_unrank.methods.twosided import TwoSidedProblem  # noqa: E402 (after the sys.path line)
from recbole_unrank.report import write_text  # noqa: E402 (after the sys.path line)

DT = torch.float64


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


def data(n_users, n_items, per_user, seed=1):
    """Distinct (u, i) rows, popularity-skewed items; ids from 1 (0 is RecBole's padding)."""
    g = torch.Generator().manual_seed(seed)
    pop = 1.0 / torch.arange(1, n_items).double() ** 0.8
    us, its = [], []
    for u in range(1, n_users):
        chosen = torch.multinomial(pop, per_user, replacement=False, generator=g) + 1
        us += [u] * per_user
        its += chosen.tolist()
    users, items = torch.tensor(us), torch.tensor(its)
    return users, items, torch.randint(1, n_items, (users.numel(), 1), generator=g)


def als(model, users, items, rows, sweeps=2000, tol=1e-12):
    """Exact ALS on the rows ``rows`` (bool), every block, warm-started from the model."""
    a, w0, reg = model.alpha, model.negative_weight, model.reg_weight
    P, Q = model.user_embedding.weight, model.item_embedding.weight
    d = P.shape[1]
    eye = torch.eye(d, dtype=DT)
    u_r, i_r = users[rows], items[rows]
    active = torch.unique(u_r)
    with torch.no_grad():
        for _ in range(sweeps):
            before = torch.cat([P.reshape(-1), Q.reshape(-1)]).clone()
            G = Q.T @ Q
            for u in active.tolist():
                qi = Q[i_r[u_r == u]]
                A = 2 * (1 + a - w0) * qi.T @ qi + 2 * w0 * G + 2 * reg * qi.shape[0] * eye
                P[u] = torch.linalg.solve(A, 2 * (1 + a) * qi.sum(0))
            GP = P[active].T @ P[active]
            for i in range(Q.shape[0]):
                pu = P[u_r[i_r == i]]
                A = 2 * (1 + a - w0) * pu.T @ pu + 2 * w0 * GP + 2 * reg * pu.shape[0] * eye
                Q[i] = torch.linalg.solve(A, 2 * (1 + a) * pu.sum(0))
            if float((torch.cat([P.reshape(-1), Q.reshape(-1)]) - before).norm()) < tol:
                break


def adam(model, users, items, neg, epochs, lr=0.05):
    obj = Objective(get_adapter(model), users, items, neg, "training", 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        obj.loss(torch.arange(users.numel()), gram=True).backward()
        opt.step()


def wmf_loss(model, P, Q, users, items, rows):
    """The adapter's WMF loss by hand (checked against Objective.loss): sum over ``rows`` of
    (1+a)(1-y)^2 - w0 y^2 + reg (|p_u|^2 + |q_i|^2), + w0 sum_{u with a row} sum_{all i} y^2."""
    a, w0, reg = model.alpha, model.negative_weight, model.reg_weight
    u, i = users[rows], items[rows]
    y = (P[u] * Q[i]).sum(1)
    active = torch.unique(u)
    return (((1 + a) * (1 - y) ** 2 - w0 * y ** 2).sum() + reg * (P[u].pow(2).sum() + Q[i].pow(2).sum())
            + w0 * (P[active] @ Q.T).pow(2).sum())


def scope_hessian_min_eig(model, users, items, neg, rows, um, im):
    """Smallest eigenvalue of the dense Hessian of the loss over ``rows`` w.r.t. the scope's
    user and item rows."""
    P0, Q0 = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    obj = Objective(get_adapter(model), users, items, neg, "training", 1)
    check = float(obj.loss(rows.nonzero().squeeze(1), gram=True))
    by_hand = float(wmf_loss(model, P0, Q0, users, items, rows))
    assert abs(check - by_hand) <= 1e-9 * max(1.0, abs(check)), (check, by_hand)
    uid, iid = um.nonzero().squeeze(1), im.nonzero().squeeze(1)
    nu = uid.numel() * P0.shape[1]

    def f(x):
        P = P0.index_put((uid,), x[:nu].view(uid.numel(), -1))
        Q = Q0.index_put((iid,), x[nu:].view(iid.numel(), -1))
        return wmf_loss(model, P, Q, users, items, rows)

    x0 = torch.cat([P0[uid].reshape(-1), Q0[iid].reshape(-1)])
    H = torch.autograd.functional.hessian(f, x0)
    return float(torch.linalg.eigvalsh(H).min())


def problem(model, users, items, neg, keep, target, sides="both", damping=1e-9):
    adapter = get_adapter(model)
    obj = Objective(adapter, users, items, neg, "training", 1)
    um, im, _ = scope_blocks(users, items, keep, target, 0, adapter.n_users, adapter.n_items)
    if sides == "users":
        im = im & (torch.bincount(items[keep], minlength=adapter.n_items) == 0)
    return TwoSidedProblem(adapter, obj, keep, um, im, damping), um, im


def scores(model, users, items):
    return (model.user_embedding.weight[users] * model.item_embedding.weight[items]).sum(1).detach()


def compare(s0, s, ref):
    """(relative error of the score change against ref's, Pearson correlation of the scores)."""
    d, dr = s - s0, ref - s0
    err = float((d - dr).norm() / dr.norm().clamp(min=1e-30))
    c = torch.corrcoef(torch.stack([s, ref]))[0, 1]
    return err, float(c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=40)
    p.add_argument("--items", type=int, default=30)
    p.add_argument("--per-user", type=int, default=8)
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--adam-epochs", type=int, default=60)
    p.add_argument("--out", default=os.path.join(HERE, "results", "twosided_diagnose.md"))
    a = p.parse_args()
    command = "python benchmarks/twosided_diagnose.py " + " ".join(sys.argv[1:])
    users, items, neg = data(a.users, a.items, a.per_user)
    # Interaction request: 20% of the rows of 25% of the users (users 1, 5, 9, ...).
    g = torch.Generator().manual_seed(7)
    target = []
    for u in range(1, a.users, 4):
        own = (users == u).nonzero().squeeze(1)
        target += own[torch.randperm(own.numel(), generator=g)[:max(1, own.numel() // 5)]].tolist()
    target = torch.tensor(sorted(target))
    keep = torch.ones(users.numel(), dtype=torch.bool)
    keep[target] = False
    every = torch.ones_like(keep)
    fu, fi = users[target], items[target]
    lines = ["# Why the two-sided sweeps do not contract (tiny float64 WMF)\n",
             f"Command: `{command}`. {a.users - 1} users, {a.items - 1} items, {a.per_user} rows per user, d={a.d}; "
             f"request: {target.numel()} rows of {torch.unique(fu).numel()} users touching "
             f"{torch.unique(fi).numel()} items (interaction task). Distances are on the forgotten pairs' scores: "
             "`err` = ||change - reference change|| / ||reference change||, `corr` = Pearson correlation of the "
             "scores with the reference's.\n"]
    for state in ("adam", "als"):
        base = WMF(a.users, a.items, a.d)
        if state == "adam":
            adam(base, users, items, neg, a.adam_epochs)
        else:
            als(base, users, items, every)
        prob0, um, im = problem(copy.deepcopy(base), users, items, neg, keep, target)
        gfull = float(torch.cat([prob0.g0["user"].reshape(-1), prob0.g0["item"].reshape(-1)]).norm())
        eig_full = scope_hessian_min_eig(base, users, items, neg, every, um, im)
        eig_ret = scope_hessian_min_eig(base, users, items, neg, keep, um, im)
        s0 = scores(base, fu, fi)
        # References: exact ALS of every block, warm-started, to convergence.
        ret_m, full_m = copy.deepcopy(base), copy.deepcopy(base)
        als(ret_m, users, items, keep)
        als(full_m, users, items, every)
        s_resolve = scores(ret_m, fu, fi)
        s_diff = s0 + s_resolve - scores(full_m, fu, fi)
        lines.append(f"\n## original: {state}\n\n||grad L_full(theta0)|| over the scope: {gfull:.3g}; smallest "
                     f"eigenvalue of the scope Hessian at theta0: full loss {eig_full:.3g}, retained loss "
                     f"{eig_ret:.3g} ({'indefinite: a saddle' if eig_full < 0 else 'positive definite'}).\n")
        rows = []
        for label, sides, form, sweeps in (("tilt, 1 sweep", "both", "tilt", 1), ("tilt, 8 sweeps (previous default)", "both", "tilt", 8),
                                           ("tilt, 50 sweeps", "both", "tilt", 50),
                                           ("bcd_diff, 1 sweep", "both", "bcd_diff", 1),
                                           ("bcd_diff, 4 sweeps", "both", "bcd_diff", 4),
                                           ("bcd_diff, 50 sweeps", "both", "bcd_diff", 50),
                                           ("users only, tilt, 1 sweep", "users", "tilt", 1),
                                           ("users only, bcd_diff, 1 sweep (new default)", "users", "bcd_diff", 1)):
            m = copy.deepcopy(base)
            prob, _, _ = problem(m, users, items, neg, keep, target, sides)
            info = prob.run(sweeps, 1e-12, form)
            s = scores(m, fu, fi)
            e_d, c_d = compare(s0, s, s_diff)
            e_r, c_r = compare(s0, s, s_resolve)
            res = info["residuals"]
            traj = ", ".join(f"{x:.3g}" for x in res[:6]) + (f", ... {res[-1]:.3g}" if len(res) > 6 else "")
            rows.append(f"| {label} | {traj} | {info['kept_sweep']} | {e_d:.3f} | {c_d:.3f} | {e_r:.3f} | {c_r:.3f} |")
        lines += ["| variant | residual per sweep (start first) | kept sweep | err vs diff | corr vs diff | "
                  "err vs resolve | corr vs resolve |", "|---|---|---|---|---|---|---|"] + rows
    md = "\n".join(lines) + "\n"
    write_text(a.out, md)
    print(md)


if __name__ == "__main__":
    main()
