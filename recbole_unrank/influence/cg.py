"""Linear solvers for the influence step ``(H + lambda I) Delta = g``.

- :func:`conjugate_gradient`: matrix-free CG (Hestenes & Stiefel 1952; the loop follows
  Shewchuk, "An Introduction to the Conjugate Gradient Method Without the Agonizing Pain",
  B2), driven only by a matvec such as :func:`~recbole_unrank.influence.hvp.hvp_operator`.
- :func:`batched_block_solve`: exact solves of many small independent systems (per-user blocks
  of ``d x d``), for models whose Hessian is block diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["CGResult", "batched_block_solve", "conjugate_gradient"]


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        x: Tensor[P], the solution estimate (the last one before a stop).
        iterations: number of accepted CG steps (``x`` is the iterate after that many).
        residual_norms: ``||r_k||`` for ``k = 0..iterations`` (``r_0 = b``), python floats.
        stop_reason: ``"converged"`` (``||r|| <= tol ||b||``), ``"max_iter"``,
            ``"negative_curvature"`` (``p^T (A + lambda I) p <= 0``: the damped operator is not
            positive definite; ``x`` is the last iterate before that direction) or
            ``"non_finite"`` (the matvec returned NaN/Inf; ``x`` is the last finite iterate).
    """

    x: Tensor
    iterations: int
    residual_norms: list[float] = field(default_factory=list)
    stop_reason: str = "max_iter"

    @property
    def converged(self) -> bool:
        return self.stop_reason == "converged"

    @property
    def negative_curvature(self) -> bool:
        return self.stop_reason == "negative_curvature"


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    damping: float,
    max_iter: int = 30,
    tol: float = 1e-10,
    stop_on_negative_curvature: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> CGResult:
    """Solve ``(A + damping I) x = b`` by conjugate gradient from ``x_0 = 0``.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A`` (Tensor[P] -> Tensor[P]), e.g. a
            Hessian-vector product. The damping is added here; do not add it in ``matvec``.
        b: Tensor[P], right-hand side (e.g. the weighted forget gradient).
        damping: ``lambda > 0``; makes a positive semi-definite ``A`` positive definite.
        max_iter: at most this many CG steps (``T`` in the paper; 30).
        tol: stop once ``||r_k|| <= tol * ||b||`` (relative residual).
        stop_on_negative_curvature: stop (returning the last iterate) when ``p^T A p <= 0``.
            ``False`` runs plain CG through it, as a fixed-T influence-function solver does
            (the paper's preset); the stop reason is still recorded.
        callback: ``callback(k, rel_residual)`` before step ``k`` (``||r_k|| / ||b||``), e.g. to
            advance a progress bar.

    Returns:
        CGResult. One host synchronisation per iteration (the stop tests need it): the two
        scalars it reads (``p^T A p`` and ``||r||^2``) travel together.
    """
    if not damping > 0:
        raise ValueError(
            f"damping (lambda) must be > 0 to keep H + lambda I positive definite; got {damping}"
        )
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0; got {max_iter}")
    if b.dim() != 1:
        raise ValueError(f"b must be a 1-D vector (flatten it first); got {tuple(b.shape)}")

    seen_negative = False
    x = torch.zeros_like(b)  # x_0 = 0
    r = b.clone()  # r_0 = b - (A + lambda I) x_0 = b
    p = r.clone()  # p_0 = r_0: first search direction
    rs = r @ r  # ||r_0||^2
    b_norm = float(rs.sqrt())
    norms = [b_norm]
    if b_norm == 0.0:  # b = 0: x = 0 is exact
        return CGResult(x, 0, norms, "converged")
    if not math.isfinite(b_norm):
        return CGResult(x, 0, norms, "non_finite")
    threshold = tol * b_norm

    for k in range(max_iter):
        if callback is not None:
            callback(k, norms[-1] / b_norm)
        ap = matvec(p) + damping * p  # (A + lambda I) p_k
        p_ap = p @ ap  # curvature along p_k: p_k^T (A + lambda I) p_k
        alpha = rs / p_ap  # step length: alpha_k = r_k^T r_k / p_k^T A p_k
        x_next = x + alpha * p  # x_{k+1} = x_k + alpha_k p_k
        r_next = r - alpha * ap  # r_{k+1} = r_k - alpha_k A p_k
        rs_next = r_next @ r_next  # ||r_{k+1}||^2
        # one sync for both stop tests
        p_ap_val, rs_next_val = torch.stack([p_ap, rs_next]).tolist()
        if not (math.isfinite(p_ap_val) and math.isfinite(rs_next_val)):
            return CGResult(x, k, norms, "non_finite")
        if p_ap_val <= 0:  # not positive definite along p_k: CG's step is meaningless
            if stop_on_negative_curvature:
                return CGResult(x, k, norms, "negative_curvature")
            seen_negative = True
        x, r = x_next, r_next
        norms.append(rs_next_val**0.5)
        if norms[-1] <= threshold:  # relative residual small enough
            return CGResult(x, k + 1, norms, "converged")
        beta = rs_next / rs  # beta_{k+1} = r_{k+1}^T r_{k+1} / r_k^T r_k
        p = r + beta * p  # p_{k+1} = r_{k+1} + beta_{k+1} p_k: A-conjugate to p_0..p_k
        rs = rs_next
    return CGResult(x, max_iter, norms, "max_iter_negative_curvature" if seen_negative else "max_iter")


def batched_block_solve(A: Tensor, b: Tensor, damping: float = 0.0) -> Tensor:
    """Solve ``(A_k + damping I) x_k = b_k`` exactly for each of ``B`` small blocks.

    Args:
        A: Tensor[B, d, d], e.g. the per-user ``d x d`` Hessian blocks.
        b: Tensor[B, d].
        damping: ``lambda >= 0`` added to every diagonal; with 0 every block must be
            non-singular.

    Returns:
        Tensor[B, d]. Batched LU (``torch.linalg.solve``) on the input's device.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0; got {damping}")
    if A.dim() != 3 or A.shape[1] != A.shape[2] or b.shape != A.shape[:2]:
        raise ValueError(
            "batched_block_solve needs A of shape [B, d, d] and b of shape [B, d]; got "
            f"{tuple(A.shape)} and {tuple(b.shape)}"
        )
    eye = torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(A + damping * eye, b.unsqueeze(-1)).squeeze(-1)
