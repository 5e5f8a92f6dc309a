"""Curvature-vector products, never forming the matrix.

- :func:`hvp`: exact Hessian-vector product ``H v = d/dtheta (grad L(theta) . v)`` by double
  back-propagation (Pearlmutter's trick): one backward pass with ``create_graph=True`` for
  ``grad L``, a second one through it.
- :func:`gauss_newton_vp`: Gauss-Newton (generalised Fisher) product ``G v = J^T diag(f''(z))
  J v`` for a loss ``sum_k f_k(z_k)`` of model outputs ``z = z(theta)``, with ``J = dz/dtheta``.
  ``G`` is positive semi-definite whenever ``f'' >= 0`` (log-sigmoid, squared and
  cross-entropy losses), so CG never meets negative curvature; it drops the term
  ``sum_k f'_k(z_k) d^2 z_k / dtheta^2`` of the true Hessian. ``J v`` comes from the
  double-vjp trick: ``g(u) = J^T u`` is linear in a dummy ``u``, and ``d(g(u) . v)/du = J v``;
  this needs plain autograd only, so ``output_fn`` may close over ``nn.Module`` parameters.
- ``*_operator`` variants run the forward pass and the first backward pass once and reuse the
  graph for every vector: the matvec that conjugate gradient calls 30 times. They hold the
  graph alive until the operator is dropped.

Parameters and vectors are lists of tensors (one per parameter); :func:`flat` and
:func:`unflat` convert to and from the one flat vector that CG works on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "flat",
    "gauss_newton_operator",
    "gauss_newton_vp",
    "hvp",
    "hvp_operator",
    "sigmoid_curvature",
    "unflat",
]

Curvature = Tensor | float | Callable[[Tensor], Tensor]


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one 1-D vector: ``[sum_k numel(t_k)]``."""
    if len(tensors) == 0:
        raise ValueError("flat needs at least one tensor")
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a 1-D vector into tensors shaped like ``like`` (the inverse of :func:`flat`)."""
    sizes = [t.numel() for t in like]
    if vec.dim() != 1 or vec.numel() != sum(sizes):
        raise ValueError(
            f"unflat: vector of shape {tuple(vec.shape)} does not match the {sum(sizes)} "
            "entries of the given tensors"
        )
    return [piece.view_as(t) for piece, t in zip(torch.split(vec, sizes), like)]


def _check_vec(params: Sequence[Tensor], vec: Sequence[Tensor]) -> None:
    if len(vec) != len(params) or any(v.shape != p.shape for v, p in zip(vec, params)):
        raise ValueError(
            "vec must hold one tensor per parameter, shaped like it; got shapes "
            f"{[tuple(v.shape) for v in vec]} for parameters {[tuple(p.shape) for p in params]}"
        )


def _grad(
    out: Tensor,
    inputs: Sequence[Tensor],
    grad_outputs: Tensor | None = None,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> list[Tensor]:
    """``torch.autograd.grad`` with zeros (not None) for inputs the output does not use."""
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        out, inputs, grad_outputs=grad_outputs, create_graph=create_graph,
        retain_graph=retain_graph, allow_unused=True,
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor | None:
    """``sum_k <x_k, y_k>`` over the pairs whose ``x_k`` carries a graph (others are constant
    and contribute no derivative); None when none does."""
    terms = [(x * y).sum() for x, y in zip(xs, ys) if x.requires_grad]
    return torch.stack(terms).sum() if terms else None


def hvp_operator(
    loss_fn: Callable[[], Tensor], params: Sequence[Tensor]
) -> Callable[[Tensor], Tensor]:
    """Flat Hessian-vector product ``v -> H v`` of ``H = d^2 loss_fn() / dparams^2``.

    ``loss_fn()`` (a scalar, built from ``params``) and ``grad`` (``create_graph=True``) are
    computed once here; each call then costs one backward pass.

    Args:
        loss_fn: closure returning the scalar loss; it must use the tensors in ``params``.
        params: tensors with ``requires_grad=True``.

    Returns:
        matvec: Tensor[P] -> Tensor[P], ``P = sum numel(params)``, no graph attached.
    """
    params = list(params)
    loss = loss_fn()
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar; got shape {tuple(loss.shape)}")
    grads = _grad(loss, params, create_graph=True)

    def matvec(v: Tensor) -> Tensor:
        dot = _dot(grads, unflat(v, params))  # grad L . v, still a function of theta
        if dot is None:  # the loss is at most linear in params: H = 0
            return torch.zeros_like(v)
        return flat(_grad(dot, params, retain_graph=True)).detach()

    return matvec


def hvp(
    loss_fn: Callable[[], Tensor], params: Sequence[Tensor], vec: Sequence[Tensor]
) -> list[Tensor]:
    """Hessian-vector product ``H v`` of the scalar ``loss_fn()`` w.r.t. ``params``.

    Args:
        loss_fn: closure returning the scalar loss, built from the tensors in ``params``.
        params: list of tensors with ``requires_grad=True``.
        vec: list of tensors shaped like ``params``.

    Returns:
        list of tensors shaped like ``params``: ``[ (H v)_k ]``, detached.
    """
    params = list(params)
    _check_vec(params, vec)
    matvec = hvp_operator(loss_fn, params)
    return unflat(matvec(flat(vec)), params)


def sigmoid_curvature(z: Tensor) -> Tensor:
    """``f''(z) = sigmoid(z) (1 - sigmoid(z))`` for ``f(z) = -log sigmoid(+-z)`` (pointwise
    log-sigmoid and BPR losses; also binary cross-entropy with logits). For a squared loss
    ``(z - y)^2`` pass the constant ``2.0``."""
    s = torch.sigmoid(z)
    return s * (1 - s)


def gauss_newton_operator(
    output_fn: Callable[[list[Tensor]], Tensor],
    params: Sequence[Tensor],
    curvature: Curvature,
) -> Callable[[Tensor], Tensor]:
    """Flat Gauss-Newton product ``v -> J^T diag(f''(z)) J v``.

    Args:
        output_fn: ``params -> z``, the model outputs (any shape, e.g. Tensor[M] of scores or
            score differences) that the loss ``sum_k f_k(z_k)`` is built on. It is called
            once with ``params``; a closure that ignores its argument and uses the same tensors
            (e.g. a module's own parameters) works as well.
        params: tensors with ``requires_grad=True``.
        curvature: ``f''(z)``: a Tensor shaped like ``z`` (or broadcastable, e.g. a float for a
            squared loss), or a function ``z -> f''(z)`` called once on the detached outputs
            (e.g. :func:`sigmoid_curvature`). Per-output loss weights ``c_k f_k`` go in here as
            ``c_k f''_k``.

    Returns:
        matvec: Tensor[P] -> Tensor[P], no graph attached.
    """
    params = list(params)
    z = output_fn(params)
    c = curvature(z.detach()) if callable(curvature) else curvature
    c = torch.as_tensor(c, dtype=z.dtype, device=z.device)
    if not z.requires_grad or z.numel() == 0:  # no outputs, or none depends on params: J = 0
        return torch.zeros_like
    # g(u) = J^T u for a dummy u; linear in u, so d(g(u) . v)/du = J v for any u.
    u = torch.zeros_like(z, requires_grad=True)
    g = _grad(z, params, grad_outputs=u, create_graph=True)

    def matvec(v: Tensor) -> Tensor:
        dot = _dot(g, unflat(v, params))
        if dot is None:
            return torch.zeros_like(v)
        (jv,) = torch.autograd.grad(dot, u, retain_graph=True)  # J v, shaped like z
        # J^T (f'' * J v): one vector-Jacobian product through the retained forward graph.
        return flat(_grad(z, params, grad_outputs=c * jv, retain_graph=True)).detach()

    return matvec


def gauss_newton_vp(
    output_fn: Callable[[list[Tensor]], Tensor],
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    curvature: Curvature,
) -> list[Tensor]:
    """Gauss-Newton vector product ``J^T diag(f''(z)) J v`` (see :func:`gauss_newton_operator`).

    Args:
        output_fn: ``params -> z`` (Tensor of any shape, ``M`` entries).
        params: list of tensors with ``requires_grad=True``.
        vec: list of tensors shaped like ``params``.
        curvature: ``f''(z)``, Tensor shaped like ``z``, a float, or a function of ``z``.

    Returns:
        list of tensors shaped like ``params``, detached.
    """
    params = list(params)
    _check_vec(params, vec)
    matvec = gauss_newton_operator(output_fn, params, curvature)
    return unflat(matvec(flat(vec)), params)
