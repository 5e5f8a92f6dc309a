"""The loss an influence step differentiates, over rows of the train split.

Two kinds (``loss`` step of :mod:`.pipeline`):

* ``training``: the loss the model was trained with, L2 term included, in summed form
  (:meth:`ModelAdapter.training_loss`): WMF's whole-data squared loss, NeuMF's BCE with one
  sampled negative per row, LightGCN's BPR + L2 (a gradient-matched surrogate of RecBole's
  batch-norm L2 term, see the LightGCN adapter), BPR's BPR loss.
* ``surrogate``: the paper's ``-log sigmoid(z)`` per row (``z = y_ui - y_uj`` for pairwise
  models, ``y_ui`` otherwise), no L2 term.

A row set ``S`` with weights ``w`` gives::

    L(S, w) = sum_{k in S} w_k [ f(z_k) + (negatives) f_neg(y_{u_k j_k}) + reg rows ]
              + (gram) w0 sum_{u in users(S)} sum_i y_ui^2

The all-entries term (``gram``) is part of a retained loss (curvature, refit), never of a
removal gradient: removing an observed entry of WMF drops its row term only.

Three views of the same ``L``: a differentiable scalar over any parameters (:meth:`loss`), a
Gauss-Newton product (:meth:`gauss_newton`, ``J^T diag(w f'') J`` plus the L2 term's exact
Hessian), and per-user blocks (:meth:`blocks`: gradient and Gauss-Newton ``d x d`` block of
each request user's ``theta_u``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_unrank.adapters import AdapterError, ModelAdapter
from recbole_unrank.adapters.base import TrainingLoss
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence import gauss_newton_operator, hvp_operator

__all__ = ["Objective", "row_loss", "per_row_gram"]


def row_loss(kind: str, z: Tensor, alpha: float = 0.0, w0: float = 0.0, order: int = 0) -> Tensor:
    """``f(z)`` (order 0), ``f'(z)`` (1) or ``f''(z)`` (2) of a per-row loss, elementwise.

    kinds: ``logsig`` ``-log sigmoid(z)``; ``softplus`` ``-log sigmoid(-z)`` (label 0);
    ``wmf`` ``(1 + alpha)(1 - z)^2 - w0 z^2``; ``square`` ``w0 z^2``."""
    if kind == "logsig":
        return (-F.logsigmoid(z), -torch.sigmoid(-z), torch.sigmoid(z) * torch.sigmoid(-z))[order]
    if kind == "softplus":
        return (F.softplus(z), torch.sigmoid(z), torch.sigmoid(z) * torch.sigmoid(-z))[order]
    a = 1.0 + alpha
    if kind == "wmf":
        if order == 0:
            return a * (1 - z) ** 2 - w0 * z**2
        if order == 1:
            return -2 * a * (1 - z) - 2 * w0 * z
        return torch.full_like(z, 2 * a - 2 * w0)
    if kind == "square":
        return (w0 * z**2, 2 * w0 * z, torch.full_like(z, 2 * w0))[order]
    raise ValueError(f"unknown row loss {kind!r}")


def per_row_gram(rows: Tensor, jac: Tensor, c: Tensor, n_rows: int, budget: int = 1 << 24) -> Tensor:
    """``H[r] = sum_{p: rows[p] = r} c_p J_p J_p^T`` as a [n_rows, d, d] tensor.

    Pairs are grouped by row and zero-padded to the longest group, then each block is one
    batched matrix product (``(c J)^T J``); rows go in chunks so the padded tensor stays near
    ``budget`` elements. Never materialises the [pairs, d, d] outer products."""
    d = jac.shape[1]
    H = torch.zeros(n_rows, d, d, device=jac.device, dtype=jac.dtype)
    if rows.numel() == 0:
        return H
    order = torch.argsort(rows, stable=True)
    rows, jac, c = rows[order], jac[order], c[order]
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    width = max(1, int(counts.max()))
    chunk = max(1, budget // (width * d))
    for lo in range(0, n_rows, chunk):
        hi = min(n_rows, lo + chunk)
        sel = (rows >= lo) & (rows < hi)
        padded = torch.zeros(hi - lo, width, d, device=jac.device, dtype=jac.dtype)
        padded[rows[sel] - lo, pos[sel]] = jac[sel]
        weighted = torch.zeros_like(padded)
        weighted[rows[sel] - lo, pos[sel]] = jac[sel] * c[sel, None]
        H[lo:hi] = weighted.transpose(1, 2) @ padded
    return H


@dataclass
class _Piece:
    """One family of outputs: ``z = y(u, i) [- y(u, j)]`` with per-row loss ``kind``."""

    users: Tensor
    items: Tensor
    minus: Tensor | None  # the pair (u, minus) is subtracted (BPR)
    kind: str
    w: Tensor


class Objective:
    """``L(S, w)`` over train rows (see the module docstring).

    Args:
        adapter: the model's adapter.
        users, items: LongTensor[N], the train rows.
        neg: LongTensor[N, n_neg] sampled negatives per row (pairwise models and NeuMF), or None, or a
            function that draws them (called only when the loss reads negatives).
        kind: ``training`` or ``surrogate``.
        batch_size: the training batch size (LightGCN's L2 term is defined per batch).
    """

    def __init__(self, adapter: ModelAdapter, users: Tensor, items: Tensor, neg: Tensor | None,
                 kind: str, batch_size: int):
        self.adapter, self.users, self.items, self.neg, self.kind = adapter, users, items, neg, kind
        if kind == "training":
            try:
                self.spec = adapter.training_loss(users, items, batch_size)
            except AdapterError as exc:
                raise UnrankError(str(exc)) from None
        elif kind == "surrogate":
            self.spec = TrainingLoss("logsig", pairwise=adapter.pairwise, note="paper's log-sigmoid surrogate")
        else:
            raise UnrankError(f"loss {kind!r}: use training or surrogate")
        needs = self.spec.pairwise or self.spec.negatives
        if callable(neg):  # drawn only when the loss reads negatives (an O(N) draw otherwise wasted)
            self.neg = neg = neg() if needs else None
        if needs and neg is None:
            raise ValueError("this loss needs sampled negatives")

    @property
    def has_gram(self) -> bool:
        return self.spec.w0 > 0

    # ---- pieces ----------------------------------------------------------------------------
    def _pieces(self, index: Tensor, w: Tensor | None) -> list[_Piece]:
        s = self.spec
        u, i = self.users[index], self.items[index]
        w = torch.ones(index.numel(), device=u.device) if w is None else w
        if not (s.pairwise or s.negatives):
            return [_Piece(u, i, None, s.row, w)]
        n_neg = self.neg.shape[1]
        negs = self.neg[index]  # [S, n_neg]
        uu = u.repeat_interleave(n_neg)
        ww = w.repeat_interleave(n_neg) / n_neg
        jj = negs.reshape(-1)
        if s.pairwise:
            return [_Piece(uu, i.repeat_interleave(n_neg), jj, s.row, ww)]
        return [_Piece(u, i, None, s.row, w), _Piece(uu, jj, None, "softplus", ww)]

    def _z(self, p: _Piece) -> Tensor:
        z = self.adapter.pair_scores(p.users, p.items)
        if p.minus is not None:
            z = z - self.adapter.pair_scores(p.users, p.minus)
        return z

    def _reg_counts(self, index: Tensor, w: Tensor | None):
        """Per user / item row: summed weight of the L2 occurrences in the row set, summed in
        the parameters' dtype (float32 weights of a float64 model are not summed in float32)."""
        a, s = self.adapter, self.spec
        tables = a.reg_tables()
        dtype = tables[0].dtype if tables is not None else torch.float32
        w = torch.ones(index.numel(), device=self.users.device, dtype=dtype) if w is None else w.to(dtype)
        cu = torch.zeros(a.n_users, device=w.device, dtype=w.dtype).index_add_(0, self.users[index], w)
        ci = torch.zeros(a.n_items, device=w.device, dtype=w.dtype).index_add_(0, self.items[index], w)
        if s.pairwise:  # the negative's base row is regularised too
            n_neg = self.neg.shape[1]
            ci.index_add_(0, self.neg[index].reshape(-1), w.repeat_interleave(n_neg) / n_neg)
        return cu, ci

    def _reg(self, index: Tensor, w: Tensor | None) -> Tensor | None:
        s = self.spec
        tables = self.adapter.reg_tables()
        if tables is None or (s.reg_user == 0 and s.reg_item == 0):
            return None
        cu, ci = self._reg_counts(index, w)
        P, Q = tables
        return s.reg_user * (cu.to(P.dtype) * P.pow(2).sum(1)).sum() + s.reg_item * (ci.to(Q.dtype) * Q.pow(2).sum(1)).sum()

    def _gram(self, index: Tensor) -> Tensor:
        a = self.adapter
        users = torch.unique(self.users[index])
        P = a.user_tables()[0][users]
        return self.spec.w0 * ((P @ a.gram()) * P).sum()

    # ---- views -----------------------------------------------------------------------------
    def loss(self, index: Tensor, w: Tensor | None = None, gram: bool = False) -> Tensor:
        """The scalar ``L(S, w)``, differentiable in the model's parameters."""
        s = self.spec
        total = sum((p.w * row_loss(p.kind, self._z(p), s.alpha, s.w0)).sum() for p in self._pieces(index, w))
        reg = self._reg(index, w)
        if reg is not None:
            total = total + reg
        if gram and self.has_gram:
            total = total + self._gram(index)
        return total

    def hessian(self, index: Tensor, w: Tensor | None, gram: bool, params):
        """Exact Hessian-vector product of ``L(S, w)`` (double back-propagation)."""
        return hvp_operator(lambda: self.loss(index, w, gram), params)

    def gauss_newton(self, index: Tensor, w: Tensor | None, gram: bool, params):
        """``v -> J^T diag(w f''(z)) J v`` over every output (the all-entries term as the outputs
        ``y_ui`` of its users over all items) plus the L2 term's exact Hessian: positive
        semi-definite, and exact wherever the outputs are linear in the parameters."""
        s = self.spec
        pieces = self._pieces(index, w)

        def outputs(_p=None):
            zs = [self._z(p) for p in pieces]
            if gram and self.has_gram:
                users = torch.unique(self.users[index])
                zs.append((self.adapter.user_tables()[0][users] @ self.adapter.reg_tables()[1].T).reshape(-1))
            return torch.cat(zs)

        def curvature(z):
            cs = []
            start = 0
            for p in pieces:
                n = p.users.numel()
                cs.append(p.w.to(z.dtype) * row_loss(p.kind, z[start:start + n], s.alpha, s.w0, order=2))
                start += n
            if start < z.numel():
                cs.append(torch.full((z.numel() - start,), 2 * s.w0, dtype=z.dtype, device=z.device))
            return torch.cat(cs)

        gn = gauss_newton_operator(outputs, params, curvature)
        if self._reg(index, w) is None:
            return gn
        reg_h = hvp_operator(lambda: self._reg(index, w), params)
        return lambda v: gn(v) + reg_h(v)

    @torch.no_grad()
    def blocks(self, index: Tensor, w: Tensor | None, gram: bool, row_of: Tensor, n_rows: int,
               hessian: bool = True) -> tuple[Tensor, Tensor | None]:
        """Per request user (``row_of[u] >= 0``): the gradient of ``L(S, w)`` with respect to
        ``theta_u`` [U, d] and its Gauss-Newton block [U, d, d] (exact for dot-product models:
        their scores are linear in ``theta_u``). Rows of other users are dropped (their
        outputs do not depend on ``theta_u`` in a factor model; for LightGCN this is the
        block-diagonal part)."""
        a, s = self.adapter, self.spec
        d = a.user_dim()
        g = None
        H = None
        for p in self._pieces(index, w):
            mine = row_of[p.users] >= 0
            if not bool(mine.any()):  # e.g. a user request: no retained row is left to these users
                continue
            u, i, wk = p.users[mine], p.items[mine], p.w[mine]
            jac = a.user_block_jacobian(u, i)
            z = a.pair_scores(u, i)
            if p.minus is not None:
                j = p.minus[mine]
                jac = jac - a.user_block_jacobian(u, j)
                z = z - a.pair_scores(u, j)
            if g is None:
                g = torch.zeros(n_rows, d, device=jac.device, dtype=jac.dtype)
                H = torch.zeros(n_rows, d, d, device=jac.device, dtype=jac.dtype) if hessian else None
            wk = wk.to(jac.dtype)
            g.index_add_(0, row_of[u], (wk * row_loss(p.kind, z, s.alpha, s.w0, 1))[:, None] * jac)
            if hessian:
                H += per_row_gram(row_of[u], jac, wk * row_loss(p.kind, z, s.alpha, s.w0, 2), n_rows)
        req = (row_of >= 0).nonzero().squeeze(1)
        req = req[torch.argsort(row_of[req])]  # request users in row order
        theta = a.user_block(req)
        if g is None:
            g = torch.zeros(n_rows, d, device=theta.device, dtype=theta.dtype)
            H = torch.zeros(n_rows, d, d, device=theta.device, dtype=theta.dtype) if hessian else None
        if a.reg_tables() is not None and s.reg_user > 0:
            cu, _ = self._reg_counts(index, w)
            c = cu[req].to(theta.dtype)
            g += 2 * s.reg_user * c[:, None] * theta
            if hessian:
                H += 2 * s.reg_user * c[:, None, None] * torch.eye(d, device=theta.device, dtype=theta.dtype)
        if gram and self.has_gram:
            # Every request user has the all-entries term (also one with no row left in S).
            G = a.gram().detach().to(theta.dtype)
            g += 2 * s.w0 * (theta @ G)
            if hessian:
                H += 2 * s.w0 * G
        return g, H

    @torch.no_grad()
    def per_user_loss(self, index: Tensor, gram: bool, row_of: Tensor, n_rows: int) -> Tensor:
        """``L`` split by request user (the terms that depend on ``theta_u``), [U]."""
        a, s = self.adapter, self.spec
        out = None
        for p in self._pieces(index, None):
            mine = row_of[p.users] >= 0
            if not bool(mine.any()):
                continue
            sub = _Piece(p.users[mine], p.items[mine], None if p.minus is None else p.minus[mine], p.kind, p.w[mine])
            val = sub.w * row_loss(p.kind, self._z(sub), s.alpha, s.w0)
            if out is None:
                out = torch.zeros(n_rows, device=val.device, dtype=val.dtype)
            out.index_add_(0, row_of[sub.users], val)
        req = (row_of >= 0).nonzero().squeeze(1)
        req = req[torch.argsort(row_of[req])]
        theta = a.user_block(req)
        if out is None:
            out = torch.zeros(n_rows, device=theta.device, dtype=theta.dtype)
        if a.reg_tables() is not None and s.reg_user > 0:
            cu, _ = self._reg_counts(index, None)
            out += s.reg_user * cu[req].to(theta.dtype) * theta.pow(2).sum(1)
        if gram and self.has_gram:
            out += s.w0 * ((theta @ a.gram().detach()) * theta).sum(1)
        return out
