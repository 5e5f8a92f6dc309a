"""The model adapter: the one place that knows a model.

An adapter scores (u, i) pairs (differentiably), exposes final embeddings, and refreshes the
model after its parameters or graph change. Two optional capabilities make L2UnRank fast:

* **user blocks**: the parameters that belong to one user (``theta_u``, e.g. ``p_u``), the
  Jacobian ``d y_ui / d theta_u`` of a batch of pairs, adding a per-user delta, and scores of
  a few users over all items under a tentative delta (for the step calibration);
* **graph**: propagate over a given edge set (the scope subgraph) during an update.

Every tensor stays on the model's device.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["ModelAdapter", "AdapterError"]


class AdapterError(ValueError):
    """The model lacks something the adapter needs (message names the model and what)."""


class ModelAdapter:
    """Base adapter. ``pairwise``: the model is trained with a pairwise (BPR) loss."""

    pairwise: bool = False
    supports_user_blocks: bool = False
    is_graph: bool = False
    #: A user-block step also changes other users' scores (graph propagation): the step
    #: calibration's utility guard must then look at other users too.
    moves_other_users: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.n_users = int(model.n_users)
        self.n_items = int(model.n_items)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- scoring -------------------------------------------------------------------------
    def params(self) -> list[torch.Tensor]:
        """Trainable parameters, in a fixed order (the theta of the full influence function)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Differentiable scores ``y_ui`` of pairs, shape [B]."""
        raise NotImplementedError

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings [n_users, d], [n_items, d], without gradients."""
        raise AdapterError(f"{type(self.model).__name__} exposes no embeddings to the adapter")

    @torch.no_grad()
    def user_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` over all items, [U, n_items] (item 0 is RecBole's padding)."""
        raise NotImplementedError

    # ---- user blocks ---------------------------------------------------------------------
    def user_dim(self) -> int:
        raise AdapterError(f"{type(self.model).__name__} has no per-user parameter block")

    def user_block_jacobian(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``d y_ui / d theta_u`` for each pair, [B, user_dim]."""
        raise AdapterError(f"{type(self.model).__name__} has no per-user parameter block")

    def prepare_user_delta(self, users: torch.Tensor, delta: torch.Tensor, others: torch.Tensor | None = None):
        """Precompute what :meth:`scores_with_delta` needs for a direction ``delta`` [U, dim]
        (and :meth:`other_scores_with_delta` for ``others`` when ``moves_other_users``)."""
        return delta

    @torch.no_grad()
    def other_scores_with_delta(self, prepared, scale: torch.Tensor) -> torch.Tensor:
        """Scores [O, n_items] of the ``others`` of :meth:`prepare_user_delta` under the step."""
        raise NotImplementedError

    @torch.no_grad()
    def scores_with_delta(self, users: torch.Tensor, prepared, scale: torch.Tensor) -> torch.Tensor:
        """Scores [U, n_items] of ``users`` if ``theta_u += scale_u * delta_u`` (scale: [U])."""
        raise NotImplementedError

    @torch.no_grad()
    def apply_user_delta(self, users: torch.Tensor, delta: torch.Tensor) -> None:
        """``theta_u += delta_u`` in place, then :meth:`invalidate`."""
        raise NotImplementedError

    # ---- state ---------------------------------------------------------------------------
    def set_graph(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Give a graph model the interaction graph made of these pairs (no-op otherwise)."""

    def remove_edges(self, users: torch.Tensor, items: torch.Tensor, n_edges: int) -> bool:
        """Drop these edges from a graph model's current graph in place of a rebuild, when the
        adapter can tell its graph is the one of ``n_edges`` train pairs holding them; False
        when it cannot (the caller then calls :meth:`set_graph` with the retained pairs)."""
        return False

    @contextmanager
    def propagate_over(self, users: torch.Tensor, items: torch.Tensor):
        """Within the block, a graph model propagates over these edges only."""
        yield

    def invalidate(self) -> None:
        """Clear every cache that a parameter change made stale. The one place it happens."""
        for name in ("restore_user_e", "restore_item_e"):
            if hasattr(self.model, name):
                setattr(self.model, name, None)
