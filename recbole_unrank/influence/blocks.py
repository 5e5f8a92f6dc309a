"""Model-agnostic numerics of the two-sided block update (``l2unrank_twosided``, DESIGN.md 10.2).

Everything here takes tensors; nothing knows a model. A *block* is one user's or one item's
own parameter row ``theta_b`` (``d`` numbers). For a loss that is a sum of per-output terms
``w_k f(z_k)`` (plus an L2 term and, for WMF, an all-entries term), the gradient and the
Gauss-Newton curvature of block ``b`` are::

    g_b = sum_{k touches b} w_k f'(z_k) J_k          J_k = d z_k / d theta_b      [d]
    H_b = sum_{k touches b} w_k f''(z_k) J_k J_k^T                               [d, d]

(:func:`block_gradients`). A block step in difference form solves::

    (H_b + lambda I) Delta_b = -r_b,   r_b = g_b,ret(theta) - g_b,full(theta0)

(:func:`block_step`): at ``theta0`` ``r_b = -g_b,forget``, so the step removes what the
forgotten rows put into the block and nothing else. The damping changes the path of the
sweeps, never their fixed point (``r = 0``).

The scope (:func:`scope_blocks`) picks the blocks: the request's users and items and, hop by
hop, their neighbours on the retained graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_gradients", "block_step", "row_map", "scope_blocks"]


def scope_blocks(users: Tensor, items: Tensor, keep: Tensor, target: Tensor, hops: int,
                 n_users: int, n_items: int) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """Blocks of the scope: boolean masks over users [n_users] and items [n_items].

    Hop 0: the users and items of the forgotten rows ``target``. Each further hop adds the
    users and items of every *retained* row (``keep``) that touches a block already in scope
    (a request user's retained items, a request item's retained users, ...).

    Returns (user mask, item mask, [(users, items) in scope after each hop, hop 0 first]).
    """
    user_in = torch.zeros(n_users, dtype=torch.bool, device=users.device)
    item_in = torch.zeros(n_items, dtype=torch.bool, device=users.device)
    user_in[users[target]] = True
    item_in[items[target]] = True
    sizes = [(int(user_in.sum()), int(item_in.sum()))]
    for _ in range(hops):
        rows = keep & (user_in[users] | item_in[items])
        user_in[users[rows]] = True
        item_in[items[rows]] = True
        sizes.append((int(user_in.sum()), int(item_in.sum())))
    return user_in, item_in, sizes


def row_map(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(ids, row_of)``: the ids where ``mask`` holds (sorted) and, per id, its row among them
    (``-1`` elsewhere)."""
    ids = mask.nonzero().squeeze(1)
    row_of = torch.full((mask.numel(),), -1, dtype=torch.long, device=mask.device)
    row_of[ids] = torch.arange(ids.numel(), device=mask.device)
    return ids, row_of


def block_gradients(rows: Tensor, jac: Tensor, d1: Tensor, d2: Tensor | None, g: Tensor, H: Tensor | None) -> None:
    """Add the terms of outputs ``k`` to the blocks ``rows[k]`` in place.

    Args:
        rows: LongTensor[K], the block (row of ``g``) each output belongs to.
        jac: [K, d], ``d z_k / d theta_{rows[k]}``.
        d1, d2: [K], ``w_k f'(z_k)`` and ``w_k f''(z_k)`` (``d2`` None: no curvature).
        g: [B, d] gradients, ``g[rows[k]] += d1_k J_k``.
        H: [B, d, d] Gauss-Newton blocks, ``H[rows[k]] += d2_k J_k J_k^T`` (None: skipped).
    """
    if rows.numel() == 0:
        return
    g.index_add_(0, rows, d1.to(jac.dtype)[:, None] * jac)
    if H is None or d2 is None:
        return
    # Per block, H_b += J_b^T diag(c) J_b over the block's outputs: one matrix product per block
    # (rows sorted by block), not an outer product per output scattered with index_add (that
    # materialised K d^2 numbers and took 8 of NeuMF's 25 s per two-sided request on ml-100k).
    order = torch.argsort(rows, stable=True)
    j = jac[order]
    jc = j * d2.to(jac.dtype)[order][:, None]
    counts = torch.bincount(rows, minlength=H.shape[0])
    blocks = counts.nonzero().squeeze(1)
    sizes = counts[blocks].tolist()
    for b, seg, seg_c in zip(blocks.tolist(), torch.split(j, sizes), torch.split(jc, sizes)):
        H[b] += seg.T @ seg_c


def block_step(H: Tensor, r: Tensor, damping: float) -> Tensor:
    """``Delta_b = -(H_b + lambda I)^-1 r_b`` for every block at once (batched LU), [B, d]."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0; got {damping}")
    if r.shape[0] == 0:
        return r.clone()
    eye = torch.eye(H.shape[1], dtype=H.dtype, device=H.device)
    return -torch.linalg.solve(H + damping * eye, r.unsqueeze(-1)).squeeze(-1)
