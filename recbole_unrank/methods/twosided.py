"""``l2unrank_twosided``: the scoped two-sided block update (DESIGN.md 10.2, issue 22).

``l2unrank`` moves only the request users' own blocks, so a forgotten item's own parameters,
fitted towards its users while the pairs were in the data, never move. This method moves the
blocks of both sides in the scope:

* **scope** (:func:`~recbole_unrank.influence.blocks.scope_blocks`): the request's users and
  items, plus their neighbours on the retained graph for each of ``unrank_twosided_hops``;
* **target, difference form**: with ``theta0`` the model now, each block's residual is
  ``r_b(theta) = grad_b L_ret(theta) - grad_b L_full(theta0)`` (``L``: the model's own training
  loss, L2 included; ``L_ret`` over the retained rows, ``L_full`` over every train row). At
  ``theta0`` ``r_b = -grad_b L_forget(theta0)``: only what the forgotten rows put into a block
  is removed, so a model that training left short of its optimum is not "finished" by the
  update (DESIGN.md 10.2);
* **sweeps** (Gauss-Seidel): every scope user at once (one batched ``d x d`` solve of
  ``(H_b,ret + lambda I) Delta_b = -r_b``, ``H`` the Gauss-Newton block, exact for WMF), then
  every scope item at the point the users reached, then users again ..., until
  ``||r_scope|| <= unrank_twosided_tol * ||r_scope(theta0)||`` or ``unrank_twosided_sweeps``
  sweeps. ``lambda`` (``unrank_twosided_damping``; ``auto``: :data:`AUTO_DAMPING` on NeuMF, else
  ``unrank_damping``) damps the path only: the fixed point is ``r = 0``;
* **whole blocks**: a user with no retained row, an item with no retained (positive) row, has
  no retained data of its own: it goes where retraining leaves it, without a guard. An item:
  0, its retained optimum under WMF (the all-entries term pins it there) and, for losses
  without L2 (NeuMF, RecBole's BPR, whose retained loss meets the item only as a sampled
  negative and has no minimum), the mean of the embeddings' prior. A user: its retained loss
  is empty (no row, no L2 row, and WMF's all-entries term covers users with rows only), so
  retraining never moves it from its initialisation (its gradient is 0, so Adam's step is 0).
  The block returns to that value: the model built as training starts it, with the run's
  config and seed (``task.initial_model``, :func:`recbole_unrank.training.initial_model`), is
  where retraining with that seed leaves the user, exactly. Where no initial model is known, a
  fresh draw from the model's initialisation (seeded by the run's seed). Not 0: a zero user
  scores every item 0, and the ranking is then the tie-break order (measured on tiny: WMF's
  user task gave forget_hit@10 1.0 with 0, against retraining's 0.18).

**Form and sides (issue 22, benchmarks/results/twosided_design.md).** The sweeps above are
``unrank_twosided_form=tilt``. Where the original is not a local minimum of its training loss
(RecBole trains WMF/NeuMF for a few epochs), the loss's Hessian over the scope's users *and*
items is indefinite at ``theta0`` (ml-100k WMF, interaction task: smallest eigenvalue -24.7,
benchmarks/twosided_saddle.py), so ``theta0`` is a saddle of the tilted objective and the sweeps
leave it, training the scope under the tilt (over-forgetting, utility lost). ``form=bcd_diff``
applies ``theta0 + BCD_ret^K(theta0) - BCD_full^K(theta0)`` instead (K sweeps of plain block
minimisation of each loss from ``theta0``; both descend a bounded loss, and their shared part
cancels). ``sides=users`` moves only the scope's users and the whole items (items keep their
rows where some of their rows remain: re-fitting a popular item with its other users frozen
costs utility at hop 0). The defaults (``bcd_diff``, ``users``, one sweep) were chosen on the
design seeds.

Models: dot-product factor models (WMF, RecBole's BPR; analytic Jacobians) and NeuMF (user
rows ``[p_mf ; p_mlp]``, item rows ``[q_mf ; q_mlp]``, per-pair Jacobians by autograd; its MLP
stays fixed). LightGCN is refused (before anything is written: :meth:`TwoSided.check_fit`). What
blocks it: (1) a base row ``E0_b`` reaches every score within ``L`` hops, so a block's gradient and
Gauss-Newton matrix sum over the rows of its ``L``-hop neighbourhood (``J = A_L[u, b] e_i +
A_L[i, b] e_u``, columns of the propagation matrix for the scope's nodes), which on ml-100k is
most of the train rows per block; (2) blocks of one side are coupled through propagation (two
users sharing an item within ``L`` hops), so a simultaneous step on one side is a Jacobi step,
not the block minimiser, and "one sweep equals the dense block solve" must be restated and the
alternation given a line search on the joint objective; (3) removing the request changes the
normalised graph itself, so the difference form's target must say whether the graph's change
(IFRU's spillover term) is removed too, and ground truth needs warm-started retraining on the
retained graph; (4) LightGCN's L2 term is per batch (the adapter's surrogate), which the block
terms must match.
No step search and no influence weights: every setting this method reads acts.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch
from torch import Tensor

from recbole_unrank.adapters import AdapterError, ModelAdapter, get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence.blocks import block_gradients, block_step, row_map, scope_blocks
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask, request_rows
from recbole_unrank.methods.objective import Objective, row_loss

__all__ = ["AUTO_DAMPING", "SUPPORTED", "TWOSIDED_SETTINGS", "TwoSided", "TwoSidedProblem"]

#: RecBole models whose adapters give both user and item blocks (LightGCN: refused, see TwoSided)
SUPPORTED = ("WMF", "BPR", "NeuMF")

TWOSIDED_SETTINGS = {
    "hops": "unrank_twosided_hops",
    "sweeps": "unrank_twosided_sweeps",
    "tol": "unrank_twosided_tol",
    "form": "unrank_twosided_form",
    "sides": "unrank_twosided_sides",
    "damping": "unrank_damping",
    "own_damping": "unrank_twosided_damping",
}

#: ``unrank_twosided_damping: auto``: the damping of the block solves per model where it is not
#: the project-wide ``unrank_damping``. NeuMF's loss has no L2 term, so the damping is what
#: anchors its blocks; 0.1 was chosen on design seeds 101-103 (benchmarks/results/twosided_design.md,
#: "NeuMF: the damping of the users' step": request users 0.843 of retrain's against 0.732 at
#: 0.01, forget_hit@10 within retrain's + 0.01; 1.0 and more forget too little).
AUTO_DAMPING = {"NeuMF": 0.1}

#: ``unrank_twosided_form``: what the sweeps solve (TwoSidedProblem.run)
FORMS = ("tilt", "bcd_diff", "bcd_scaled")
#: ``unrank_twosided_sides``: which non-whole blocks move
SIDES = ("both", "users")


def _whole(value: Any, key: str, least: int, hint: str) -> int:
    """A whole number >= ``least`` (``2.0`` is 2; ``1.5``, ``True``, ``"a"``: refused, one line)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and float(value) == int(value)
    if not ok or int(value) < least:
        raise UnrankError(f"{key}={value!r} is not a whole number >= {least}: {hint}")
    return int(value)


def _real(value: Any, key: str) -> float:
    """A finite real number (``True``, ``"a"``, NaN: refused, one line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UnrankError(f"{key}={value!r} is not a finite number")
    return float(value)


class TwoSidedProblem:
    """The block problem of one request on one model (see the module docstring).

    Args:
        adapter: the model's adapter (user and item blocks).
        obj: the training loss over the train rows (with its sampled negatives).
        keep: bool [N], the retained rows.
        user_mask, item_mask: bool [n_users], [n_items], the scope's blocks.
        damping: ``lambda >= 0`` of the block solves.
        seed: of the fresh draw a whole user's block takes (:meth:`reset_whole_blocks`) where
            ``initial`` is not given.
        initial: the adapter of the model as training starts it (the run's seed): a whole user's
            block returns to its value there, which is where retraining leaves it.

    On construction the targets ``grad_b L_full(theta0)`` are taken at the model as it is;
    :meth:`reset_whole_blocks`, :meth:`half_sweep` and :meth:`run` then move it in place.
    """

    def __init__(self, adapter: ModelAdapter, obj: Objective, keep: Tensor, user_mask: Tensor,
                 item_mask: Tensor, damping: float, seed: int = 0, initial: ModelAdapter | None = None):
        self.a, self.obj, self.damping, self.seed = adapter, obj, float(damping), int(seed)
        self.initial = initial
        users, items = obj.users, obj.items
        device = users.device
        ret_users = torch.bincount(users[keep], minlength=adapter.n_users)
        ret_items = torch.bincount(items[keep], minlength=adapter.n_items)
        self.whole_users = (user_mask & (ret_users == 0)).nonzero().squeeze(1)
        self.whole_items = (item_mask & (ret_items == 0)).nonzero().squeeze(1)
        self.ids, self.row_of, self.rows, self.rows_full = {}, {}, {}, {}
        neg = obj.neg
        for side, mask, ret, ids_of_row in (("user", user_mask, ret_users, users), ("item", item_mask, ret_items, items)):
            ids, row_of = row_map(mask & (ret > 0))
            self.ids[side], self.row_of[side] = ids, row_of
            touch = row_of[ids_of_row] >= 0
            if side == "item" and neg is not None:  # an item block also lives in the rows it is the negative of
                touch = touch | (row_of[neg] >= 0).any(1)
            self.rows_full[side] = touch.nonzero().squeeze(1)
            self.rows[side] = self.rows_full[side][keep[self.rows_full[side]]]
        # Users whose all-entries term (WMF) is in each loss: those with at least one row in it.
        self.active_full = torch.bincount(users, minlength=adapter.n_users) > 0
        self.active_ret = ret_users > 0
        self.g0 = {side: self.terms(side, self.rows_full[side], self.active_full, hessian=False)[0]
                   for side in ("user", "item")}
        # Without an L2 term (NeuMF, BPR) phi_b = L_ret,b - g0 . theta_b can be unbounded below (the
        # loss saturates, the linear term does not): no retained fixed point need exist. There the
        # blocks are anchored at theta0 with (anchor / 2) ||theta_b - theta_b0||^2, anchor =
        # the damping, which bounds every block's problem; with an L2 term the anchor is 0 and
        # the fixed point is the exact r = 0.
        spec = obj.spec
        has_l2 = adapter.reg_tables() is not None and (spec.reg_user > 0 or spec.reg_item > 0)
        self.anchor = 0.0 if (has_l2 or obj.has_gram) else self.damping
        self.theta0 = {side: self.block(side).clone() for side in ("user", "item")}
        self.device = device
        # Which loss the block terms read: "ret" (the retained rows) or "full" (every train row),
        # and whether the target grad L_full(theta0) is subtracted (the tilt: difference form).
        self.loss, self.tilt = "ret", True

    def _rows(self, side: str) -> Tensor:
        return self.rows[side] if self.loss == "ret" else self.rows_full[side]

    def _active(self) -> Tensor:
        return self.active_ret if self.loss == "ret" else self.active_full

    # ---- the block terms ---------------------------------------------------------------------
    def block(self, side: str) -> Tensor:
        return self.a.user_block(self.ids[side]) if side == "user" else self.a.item_block(self.ids[side])

    @torch.no_grad()
    def terms(self, side: str, index: Tensor, active: Tensor, hessian: bool = True) -> tuple[Tensor, Tensor | None]:
        """Gradient [B, d] and Gauss-Newton blocks [B, d, d] of the training loss over rows
        ``index`` with respect to each scope block of ``side`` (``active``: the users whose
        all-entries term the loss holds)."""
        a, obj, s = self.a, self.obj, self.obj.spec
        ids, row_of = self.ids[side], self.row_of[side]
        theta = self.block(side)
        g = torch.zeros_like(theta)
        H = theta.new_zeros(theta.shape[0], theta.shape[1], theta.shape[1]) if hessian else None
        if ids.numel() == 0:
            return g, H
        for p in obj._pieces(index, None):
            z = obj._z(p)
            w = p.w.to(z.dtype)
            d1 = w * row_loss(p.kind, z, s.alpha, s.w0, 1)
            d2 = w * row_loss(p.kind, z, s.alpha, s.w0, 2) if hessian else None
            if side == "user":
                m = row_of[p.users] >= 0
                jac = a.user_block_jacobian(p.users[m], p.items[m])
                if p.minus is not None:
                    jac = jac - a.user_block_jacobian(p.users[m], p.minus[m])
                block_gradients(row_of[p.users[m]], jac, d1[m], None if d2 is None else d2[m], g, H)
                continue
            for its, sign in ((p.items, 1.0), (p.minus, -1.0)):
                if its is None:
                    continue
                m = row_of[its] >= 0
                jac = sign * a.item_block_jacobian(p.users[m], its[m])
                block_gradients(row_of[its[m]], jac, d1[m], None if d2 is None else d2[m], g, H)
        reg = s.reg_user if side == "user" else s.reg_item
        if a.reg_tables() is not None and reg > 0:
            cu, ci = obj._reg_counts(index, None)
            c = (cu if side == "user" else ci)[ids].to(theta.dtype)
            g += 2 * reg * c[:, None] * theta
            if H is not None:
                H += 2 * reg * c[:, None, None] * torch.eye(theta.shape[1], dtype=theta.dtype, device=theta.device)
        if obj.has_gram:  # w0 sum_{u active} sum_i (p_u . q_i)^2
            if side == "user":
                G = a.gram().detach().to(theta.dtype)
            else:
                P = a.user_tables()[0].detach()[active]
                G = (P.T @ P).to(theta.dtype)
            g += 2 * s.w0 * theta @ G
            if H is not None:
                H += 2 * s.w0 * G
        return g, H

    @torch.no_grad()
    def objective(self, side: str, only: Tensor | None = None) -> Tensor:
        """Per scope block of ``side``, the scalar whose gradient is the residual:
        ``phi_b(theta) = L_ret,b(theta) - grad_b L_full(theta0) . theta_b`` [B] (``L_ret,b``: the
        retained loss's terms that touch block ``b``), for the line search of a block step.
        ``only`` (bool [B]): the blocks whose value is wanted; the rows that touch no such block
        are skipped and the other entries are meaningless."""
        a, obj, s = self.a, self.obj, self.obj.spec
        ids, row_of = self.ids[side], self.row_of[side]
        theta = self.block(side)
        out = theta.new_zeros(theta.shape[0])
        if ids.numel() == 0:
            return out
        index = self._rows(side)
        if only is not None:
            owner = row_of[obj.users[index] if side == "user" else obj.items[index]]
            touch = only[owner.clamp(min=0)] & (owner >= 0)
            if side == "item" and obj.neg is not None:
                n_own = row_of[obj.neg[index]]
                touch = touch | (only[n_own.clamp(min=0)] & (n_own >= 0)).any(1)
            index = index[touch]
        for p in obj._pieces(index, None):
            val = p.w.to(theta.dtype) * row_loss(p.kind, obj._z(p).to(theta.dtype), s.alpha, s.w0)
            owners = (p.users,) if side == "user" else tuple(x for x in (p.items, p.minus) if x is not None)
            for who in owners:
                m = row_of[who] >= 0
                out.index_add_(0, row_of[who[m]], val[m])
        reg = s.reg_user if side == "user" else s.reg_item
        if a.reg_tables() is not None and reg > 0:
            cu, ci = obj._reg_counts(index, None)
            out += reg * (cu if side == "user" else ci)[ids].to(theta.dtype) * theta.pow(2).sum(1)
        if obj.has_gram:
            if side == "user":
                G = a.gram().detach().to(theta.dtype)
            else:
                P = a.user_tables()[0].detach()[self._active()]
                G = (P.T @ P).to(theta.dtype)
            out += s.w0 * ((theta @ G) * theta).sum(1)
        if self.tilt:
            out = out - (self.g0[side] * theta).sum(1)
        if self.anchor > 0:
            out = out + 0.5 * self.anchor * (theta - self.theta0[side]).pow(2).sum(1)
        return out

    def residual(self, side: str, hessian: bool = True) -> tuple[Tensor, Tensor | None]:
        """``r_b = grad_b L_ret(theta) - grad_b L_full(theta0)`` and ``H_b,ret(theta)`` (with
        ``self.loss == "full"`` the full loss's terms; with ``self.tilt`` False no target:
        ``r_b = grad_b L(theta)``, the plain block minimisation)."""
        g, H = self.terms(side, self._rows(side), self._active(), hessian)
        r = g - self.g0[side] if self.tilt else g
        if self.anchor > 0:
            r = r + self.anchor * (self.block(side) - self.theta0[side])
            if H is not None:
                H = H + self.anchor * torch.eye(H.shape[1], dtype=H.dtype, device=H.device)
        return r, H

    # ---- moves -------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_whole_blocks(self) -> None:
        """Blocks with no retained row take what retraining leaves them (module docstring): a
        whole item 0; a whole user its value in the initial model (``initial``; retraining
        never updates it), else a fresh seeded draw from the model's initialisation."""
        users = self.whole_users
        if users.numel():
            if self.initial is not None:
                fresh = self.initial.user_block(users).to(device=users.device, dtype=self.a.user_block(users).dtype)
            else:
                gen = torch.Generator(device="cpu").manual_seed(self.seed)
                fresh = torch.cat([torch.randn(users.numel(), t.shape[1], generator=gen, dtype=t.dtype)
                                   * self.a.init_std(t) for t in self.a.user_tables()], -1).to(users.device)
            self.a.apply_user_delta(users, fresh - self.a.user_block(users))
        if self.whole_items.numel():
            self.a.apply_item_delta(self.whole_items, -self.a.item_block(self.whole_items))

    def _apply(self, side: str, delta: Tensor) -> None:
        if side == "user":
            self.a.apply_user_delta(self.ids[side], delta)
        else:
            self.a.apply_item_delta(self.ids[side], delta)

    @torch.no_grad()
    def half_sweep(self, side: str, line_search: bool = True, halvings: int = 30) -> Tensor:
        """One block step on every scope block of ``side`` at the current point; returns the
        scale each block took [B].

        The step ``Delta_b = -(H_b + lambda I)^-1 r_b`` descends ``phi_b`` (:meth:`objective`:
        ``r_b . Delta_b < 0``, ``H`` PSD). Where ``phi_b`` is quadratic in its block (WMF, a
        dot-product model's user side) the whole step is its minimiser; elsewhere (NeuMF, whose
        Gauss-Newton block can be nearly singular where the loss has no L2 term) each block
        halves its step until ``phi_b`` falls by the Armijo rule (a block that finds no
        decrease stays put). ``line_search=False`` takes every whole step (tests)."""
        r, H = self.residual(side)
        if r.shape[0] == 0:
            return r.new_zeros(0)
        delta = block_step(H, r, self.damping)
        t = torch.ones(r.shape[0], dtype=r.dtype, device=r.device)
        if not line_search:
            self._apply(side, delta)
            return t
        before = self.objective(side)
        slope = (r * delta).sum(1)
        applied = torch.zeros_like(t)
        # Where each block's phi_b depends on its own block only (every loss here but a pairwise
        # one, whose row meets two items), a block that passed keeps its step and later halvings
        # evaluate only the rows of the blocks still searching.
        separable = side == "user" or not self.obj.spec.pairwise
        bad = torch.ones_like(t, dtype=torch.bool)
        for _ in range(halvings):
            self._apply(side, (t - applied)[:, None] * delta)
            applied = t.clone()
            value = self.objective(side, only=bad if separable else None)
            fail = ~(value <= before + 1e-4 * t * slope + 1e-12 * before.abs())
            bad = bad & fail if separable else fail
            if not bool(bad.any()):
                return t
            t = torch.where(bad, t / 2, t)
        self._apply(side, (torch.where(bad, torch.zeros_like(t), t) - applied)[:, None] * delta)
        return torch.where(bad, torch.zeros_like(t), t)

    def norm(self) -> float:
        """``||r_scope||`` over both sides at the current point."""
        ru, _ = self.residual("user", hessian=False)
        ri, _ = self.residual("item", hessian=False)
        return math.sqrt(float(ru.pow(2).sum()) + float(ri.pow(2).sum()))

    def _blocks(self) -> dict[str, Tensor]:
        return {side: self.block(side).clone() for side in ("user", "item")}

    def _set(self, blocks: dict[str, Tensor]) -> None:
        for side in ("user", "item"):
            self._apply(side, blocks[side] - self.block(side))

    @staticmethod
    def shrinkage(theta0: Tensor, full: Tensor) -> Tensor:
        """Per block [B, 1]: ``s_b = <theta0_b, F_b> / ||F_b||^2`` clipped to [0, 1], the least-squares
        scale of the full loss's block minimiser ``F_b`` that best gives the block as training left
        it (``form=bcd_scaled``). Training that stopped short of the minimiser leaves a block at
        about ``s_b F_b`` (ml-100k WMF: ``||F_b|| / ||theta0_b||`` 1.9 at the median user, cosine
        0.76), so what the forgotten rows change is taken at that scale too."""
        dot = (theta0 * full).sum(1, keepdim=True)
        sq = full.pow(2).sum(1, keepdim=True)
        return torch.where(sq > 0, dot / sq.clamp_min(torch.finfo(full.dtype).tiny), torch.ones_like(sq)).clamp(0.0, 1.0)

    def run(self, sweeps: int, tol: float, form: str = "tilt") -> dict[str, Any]:
        """Whole blocks reset, then the sweeps of ``form`` (users, then items, per sweep).

        ``tilt`` (the difference form of DESIGN.md 10.2): Gauss-Seidel on
        ``r(theta) = grad L_ret(theta) - grad L_full(theta0) = 0`` until the residual falls to
        ``tol`` of its value at ``theta0``, or ``sweeps`` sweeps are done. Each half-sweep lowers
        the tilted objective ``Phi = L_ret - grad L_full(theta0) . theta``, and ``theta0`` is a
        stationary point of ``L_full - grad L_full(theta0) . theta``; but where the original is
        not a local minimum of the full loss (trained by SGD/Adam for a few epochs) the joint
        Hessian over the scope is indefinite, ``theta0`` is a saddle of the tilted objective and
        block Gauss-Seidel runs away from it (Ostrowski-Reich: the iteration contracts iff that
        Hessian is positive definite; benchmarks/twosided_diagnose.py measures it). Where the
        loss has no L2 term (``anchor > 0``) the sweeps stop at the first one that raises
        ``||r||``; in every case the iterate with the smallest residual after the first sweep is
        kept.

        ``bcd_diff``: ``theta0 + BCD_ret^K(theta0) - BCD_full^K(theta0)``, ``BCD^K`` being
        ``K = sweeps`` sweeps of plain block minimisation (no tilt) of the retained and of the
        full loss over the scope's blocks, both started from ``theta0``. Each sequence lowers
        its own loss (bounded below), so neither runs away; what both share (training left
        unfinished) cancels, what the forgotten rows change is kept. ``tol`` is not read.

        ``bcd_scaled``: ``theta0 + s_b (BCD_ret^K - BCD_full^K)`` per block, ``s_b`` the block's
        :meth:`shrinkage` (a variant of ``bcd_diff`` for models trained short of the minimiser).
        """
        r0 = self.norm()
        residuals = [r0]
        if form in ("bcd_diff", "bcd_scaled"):
            start = self._blocks()
            self.tilt = False
            self.loss = "full"
            for _ in range(sweeps):
                self.half_sweep("user")
                self.half_sweep("item")
            full = self._blocks()
            self._set(start)
            self.reset_whole_blocks()
            self.loss = "ret"
            for _ in range(sweeps):
                self.half_sweep("user")
                self.half_sweep("item")
            ret = self._blocks()
            scale = {side: self.shrinkage(start[side], full[side]) if form == "bcd_scaled"
                     else torch.ones_like(start[side][:, :1]) for side in ("user", "item")}
            self._set({side: start[side] + scale[side] * (ret[side] - full[side]) for side in ("user", "item")})
            self.tilt = True
            residuals.append(self.norm())
            done, best_at, stop, converged = sweeps, sweeps, "sweeps", False
        else:
            self.reset_whole_blocks()
            done, converged, stop = 0, r0 == 0.0, "converged" if r0 == 0.0 else "sweeps"
            best, best_at = None, 0
            while not converged and done < sweeps:
                self.half_sweep("user")
                self.half_sweep("item")
                done += 1
                residuals.append(self.norm())
                converged = residuals[-1] <= tol * r0
                if best is None or residuals[-1] < residuals[best_at]:
                    best = self._blocks()
                    best_at = done
                if converged:
                    stop = "converged"
                elif self.anchor > 0 and done > 1 and residuals[-1] > residuals[-2]:
                    stop = "residual_rose"
                    break
            if best is not None and best_at != done:
                self._set(best)
        return {
            "form": form, "sweeps": done, "kept_sweep": best_at, "stop": stop, "residuals": residuals,
            "rel_residual": residuals[-1 if form != "tilt" else best_at] / r0 if r0 > 0 else 0.0,
            "converged": bool(converged), "users_moved": int(self.ids["user"].numel()),
            "items_moved": int(self.ids["item"].numel()), "whole_users": int(self.whole_users.numel()),
            "whole_items": int(self.whole_items.numel()), "anchor": self.anchor,
            "rows_user_side": int(self.rows["user"].numel()), "rows_item_side": int(self.rows["item"].numel()),
        }


class TwoSided(UnlearningMethod):
    """The project's scoped two-sided block update (module docstring)."""

    name = "l2unrank_twosided"
    settings: ClassVar[dict[str, str]] = dict(TWOSIDED_SETTINGS)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        s = {k: self.kwargs.get(k) for k in self.settings}
        own = s.pop("own_damping")  # auto: AUTO_DAMPING on its models, else the project-wide unrank_damping
        for k, v in s.items():
            if v is None:
                raise UnrankError(f"{self.settings[k]} is not set: {self.name} reads it (see properties/unrank.yaml)")
        s["hops"] = _whole(s["hops"], "unrank_twosided_hops", 0, "use 0 (the request's users and items) or more")
        s["sweeps"] = _whole(s["sweeps"], "unrank_twosided_sweeps", 1, "use at least 1 sweep")
        s["tol"] = _real(s["tol"], "unrank_twosided_tol")
        if not 0.0 < s["tol"] < 1.0:
            raise UnrankError(f"unrank_twosided_tol={s['tol']} must lie in (0, 1) (a share of the starting "
                              "residual, e.g. 1e-3)")
        if s["form"] not in FORMS:
            raise UnrankError(f"unrank_twosided_form={s['form']!r} is not one of {', '.join(FORMS)}")
        if s["sides"] not in SIDES:
            raise UnrankError(f"unrank_twosided_sides={s['sides']!r} is not one of {', '.join(SIDES)}")
        if s["form"] != "tilt" and "tol" in self.given_kwargs:
            raise UnrankError(f"unrank_twosided_tol={s['tol']} has no effect with unrank_twosided_form={s['form']} "
                              "(it runs exactly unrank_twosided_sweeps sweeps): unset it")
        if s["sides"] == "users" and s["hops"] > 0:
            raise UnrankError(f"unrank_twosided_hops={s['hops']} has no effect with unrank_twosided_sides=users: a "
                              "neighbour user keeps every row and the items it meets do not move, so it does not "
                              "move; use hops 0, or sides=both")
        if own != "auto":
            own = _real(own, "unrank_twosided_damping")
            if not own > 0:
                raise UnrankError(f"unrank_twosided_damping={own} must be > 0 (e.g. 0.1), or auto")
        s["damping"] = _real(s["damping"], "unrank_damping")
        if not s["damping"] > 0:
            raise UnrankError(f"unrank_damping={s['damping']} must be > 0 (e.g. 1e-2)")
        s["own_damping"] = own
        if "tol" in self.given_kwargs and s["sweeps"] == 1:
            raise UnrankError(f"unrank_twosided_tol={s['tol']} has no effect with unrank_twosided_sweeps=1 (one "
                              "sweep is taken whatever the residual): unset it, or allow more sweeps")
        self.s = s

    def damping_for(self, model_name: str) -> tuple[float, str]:
        """The block solves' damping on ``model_name`` and where it comes from: the number
        ``unrank_twosided_damping`` where given; with ``auto`` (the default), the project-wide
        ``unrank_damping`` where the user gave it, else AUTO_DAMPING's value for the model, else
        ``unrank_damping``'s default."""
        own = self.s["own_damping"]
        if own != "auto":
            return float(own), "unrank_twosided_damping"
        if model_name in AUTO_DAMPING and "damping" not in self.given_kwargs:
            return AUTO_DAMPING[model_name], f"unrank_twosided_damping=auto ({model_name})"
        return float(self.s["damping"]), "unrank_damping"

    def check_fit(self, model_name: str, train_ds: Any, request_index: Any) -> None:
        """Refuse, before anything is written, a model without both kinds of blocks and a
        request on which a setting would move no block: an empty request, a hop that adds no
        block (the retained graph reaches no further)."""
        if model_name == "LightGCN":
            raise UnrankError(f"{self.name} does not support LightGCN yet: block curvature through graph "
                              "propagation is not implemented; use l2unrank")
        if model_name == "WMF" and self.s["sides"] == "users" and self.s["sweeps"] > 1:
            raise UnrankError(f"unrank_twosided_sweeps={self.s['sweeps']} has no effect on WMF with "
                              "unrank_twosided_sides=users: with the items fixed each user block is quadratic and "
                              "one sweep is its exact solve; use 1, or sides=both")
        if model_name not in SUPPORTED:
            raise UnrankError(f"{model_name} has no per-user and per-item parameter blocks that {self.name} can "
                              f"move (it supports {', '.join(SUPPORTED)}): use l2unrank or if")
        users, items, target, keep = request_rows(train_ds, request_index)
        self._check_scope(users, items, target, keep, int(train_ds.user_num), int(train_ds.item_num))

    def _check_scope(self, users: Tensor, items: Tensor, target: Tensor, keep: Tensor, n_users: int,
                     n_items: int):
        """The scope (:func:`scope_blocks`) of ``target``; an empty request or an idle hop -> one line."""
        name, hops = self.name, int(self.s["hops"])
        if target.numel() == 0:
            raise UnrankError(f"{name}: the request holds no train interaction, so no block would move; check "
                              "unrank_request and its file or ids")
        user_mask, item_mask, sizes = scope_blocks(users, items, keep, target, hops, n_users, n_items)
        idle = [h for h in range(1, hops + 1) if sizes[h] == sizes[h - 1]]
        if idle:  # a hop that adds no block: every later one adds none either
            raise UnrankError(f"unrank_twosided_hops={hops} acts like {idle[0] - 1} on this request (the retained "
                              f"graph reaches no further block): use {idle[0] - 1}")
        return user_mask, item_mask, sizes

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        s, name = self.s, self.name
        try:
            adapter = get_adapter(task.model)
        except AdapterError as exc:
            raise UnrankError(f"{task.model_name} cannot be unlearned by {name}: {exc}") from None
        if adapter.is_graph:
            raise UnrankError(f"{name} does not support {task.model_name} yet: block curvature through graph "
                              "propagation is not implemented; use l2unrank")
        if not (adapter.supports_user_blocks and adapter.supports_item_blocks):
            raise UnrankError(f"{task.model_name} has no per-user and per-item parameter blocks: {name} needs "
                              "both; use l2unrank or if")
        task.model.eval()  # NeuMF's dropout off: scores and Jacobians are deterministic
        device = adapter.device
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        users, items, target, keep = request_rows(task.train_ds, task.request_index, device)
        hops = int(s["hops"])
        user_mask, item_mask, sizes = self._check_scope(users, items, target, keep, adapter.n_users, adapter.n_items)
        gen = torch.Generator(device="cpu").manual_seed(int(task.seed))
        neg = torch.randint(1, adapter.n_items, (users.numel(), 1), generator=gen).to(device)
        obj = Objective(adapter, users, items, neg, "training", int(task.train_batch_size))
        if s["sides"] == "users":  # items move only where whole (no retained row: to their retained optimum)
            ret_items = torch.bincount(items[keep], minlength=adapter.n_items)
            item_mask = item_mask & (ret_items == 0)
        whole_users = bool((user_mask & (torch.bincount(users[keep], minlength=adapter.n_users) == 0)).any())
        initial = get_adapter(task.initial_model()) if whole_users and task.initial_model is not None else None
        damping, damping_from = self.damping_for(task.model_name)
        problem = TwoSidedProblem(adapter, obj, keep, user_mask, item_mask, damping, int(task.seed), initial)
        stages["scope_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        solve = problem.run(int(s["sweeps"]), float(s["tol"]), str(s["form"]))
        adapter.invalidate()
        stages["solve_s"] = time.perf_counter() - t0
        info = {"loss": obj.spec.note, "hops": hops, "form": s["form"], "sides": s["sides"],
                "damping": {"value": damping, "from": damping_from},
                "scope_users": sizes[-1][0], "scope_items": sizes[-1][1],
                "scope_per_hop": sizes, "solve": {"method": "block_gauss_seidel", **solve},
                "train_size": int(users.numel()),
                "whole_users": {"count": int(problem.whole_users.numel()),
                                "to": "initial model" if initial is not None else "seeded draw"}}
        return UnlearnResult(task.model, stages=stages, info=info)
