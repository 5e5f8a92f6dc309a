"""The model adapter: the one place that knows a model.

An adapter scores (u, i) pairs (differentiably), exposes final embeddings, and refreshes the
model after its parameters or graph change. Two optional capabilities make L2UnRank fast:

* **user blocks**: the parameters that belong to one user (``theta_u``, e.g. ``p_u``), the
  Jacobian ``d y_ui / d theta_u`` of a batch of pairs, adding a per-user delta, and scores of
  a few users over all items under a tentative delta (for the step calibration);
* **graph**: propagate over a given edge set (the scope subgraph) during an update.

It also owns the model's data-derived state (the graph, WMF's per-user degrees: given the
retained pairs by :meth:`ModelAdapter.use_training_data`), which of its tables are user or
item embedding rows, and what a checkpoint stores beside the ``state_dict``
(:meth:`ModelAdapter.checkpoint_extras`, :meth:`ModelAdapter.load_extras`).

Every tensor stays on the model's device.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from recbole.data.interaction import Interaction
from torch import nn

from recbole_unrank.device import model_device, move_tensor_attributes
from recbole_unrank.models import extras as _extras
from recbole_unrank.models.extras import CACHES

__all__ = ["ModelAdapter", "AdapterError", "TrainingLoss", "CACHES"]

#: Pairs scored per ``predict`` call by :meth:`ModelAdapter.pair_scorer`.
PAIR_CHUNK = 1 << 16


@dataclass(frozen=True)
class TrainingLoss:
    """The loss a model was trained with, in summed form over train rows (what an influence
    step differentiates when it follows the model's own training; see methods/objective.py).

    Attributes:
        row: per-row loss of the output ``z``: ``"logsig"`` (``-log sigmoid(z)``: BCE with label
            1, or BPR on ``z = y_ui - y_uj``) or ``"wmf"`` (``(1 + alpha)(1 - z)^2 - w0 z^2``,
            WMF's observed entry minus its share of the all-entries term).
        pairwise: ``z = y_ui - y_uj`` with a sampled negative ``j`` (BPR).
        negatives: a sampled negative ``j`` per row enters as BCE with label 0,
            ``-log sigmoid(-y_uj)`` (NeuMF's pointwise training with one negative).
        alpha, w0: WMF's confidence boost and unobserved weight; ``w0 > 0`` adds the all-entries
            term ``w0 sum_u sum_i y_ui^2`` over the users of a row set.
        reg_user, reg_item: L2 weight per row occurrence on the user's / item's (and the
            negative's) base embedding row (``reg * ||e||^2``).
        note: how the summed form relates to the model's ``calculate_loss``.
    """

    row: str
    pairwise: bool = False
    negatives: bool = False
    alpha: float = 0.0
    w0: float = 0.0
    reg_user: float = 0.0
    reg_item: float = 0.0
    note: str = ""


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
    #: ``predict`` is the dot product of :meth:`final_embeddings` (WMF, BPR, LightGCN).
    dot_product: bool = False
    #: A user's scores are linear, or piecewise linear (ReLU), in that user's own rows and no
    #: other user's score depends on them (WMF, BPR, NeuMF; not a graph model): over those rows
    #: the exact Hessian of a loss of the scores is its Gauss-Newton matrix.
    user_rows_piecewise_linear: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.n_users = int(model.n_users)
        self.n_items = int(model.n_items)
        # A model moved with .to() / .cuda() (a checkpoint trained on another device) leaves its
        # plain tensor attributes behind (LightGCN's graph): bring them to its parameters.
        move_tensor_attributes(model)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

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

    def pair_scorer(self):
        """``score(users, items) -> [n]`` (float, no gradients), equal to ``model.predict``, for
        scoring many pairs with a fixed model: from the final embeddings, computed once, for a
        :attr:`dot_product` model (LightGCN's ``predict`` would propagate the graph on every
        call); else ``predict`` in chunks."""
        if self.dot_product:
            user_e, item_e = self.final_embeddings()
            return lambda users, items: (user_e[users] * item_e[items]).sum(-1).float()
        model = self.model

        @torch.no_grad()
        def score(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            model.eval()
            out = [model.predict(Interaction({model.USER_ID: users[s:s + PAIR_CHUNK],
                                              model.ITEM_ID: items[s:s + PAIR_CHUNK]})).view(-1).float()
                   for s in range(0, users.numel(), PAIR_CHUNK)]
            return torch.cat(out) if out else users.new_zeros(0, dtype=torch.float)

        return score

    def row_tables(self, params: list[torch.Tensor]) -> list[tuple[int, str]]:
        """The embedding tables among ``params`` whose rows are users or items: ``(index into
        params, "user" | "item")`` for each ``nn.Embedding`` with ``n_users`` or ``n_items`` rows
        (when ``n_users == n_items`` the module name decides)."""
        where = {id(p): k for k, p in enumerate(params)}
        found = []
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.Embedding) or id(module.weight) not in where:
                continue
            rows, lname = module.num_embeddings, name.lower()
            if rows == self.n_users and rows != self.n_items:
                kind = "user"
            elif rows == self.n_items and rows != self.n_users:
                kind = "item"
            elif rows == self.n_users == self.n_items and ("user" in lname) != ("item" in lname):
                kind = "user" if "user" in lname else "item"
            else:
                continue
            found.append((where[id(module.weight)], kind))
        return found

    def training_loss(self, users: torch.Tensor, items: torch.Tensor, batch_size: int) -> TrainingLoss:
        """The model's own training loss (summed over rows; ``users``/``items``: the train rows,
        ``batch_size``: the training batch size, for losses defined per batch)."""
        raise AdapterError(
            f"{type(self.model).__name__}: its training loss is not known to the adapter; use the "
            "surrogate loss (unrank_baseline_loss: surrogate)"
        )

    def reg_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (user, item) base embedding tables the training loss's L2 term acts on."""
        return None

    def gram(self) -> torch.Tensor:
        """``Q^T Q`` over all item rows (WMF's all-entries term), differentiable."""
        raise AdapterError(f"{type(self.model).__name__} has no all-entries term")

    # ---- user blocks ---------------------------------------------------------------------
    def user_tables(self) -> list[torch.Tensor]:
        """The tables whose rows make a user's block, in block order (``theta_u`` is the
        concatenation of row ``u`` of each)."""
        raise AdapterError(f"{type(self.model).__name__} has no per-user parameter block")

    @torch.no_grad()
    def user_block(self, users: torch.Tensor) -> torch.Tensor:
        """``theta_u`` of ``users``, [U, user_dim]."""
        return torch.cat([t[users] for t in self.user_tables()], -1).detach()

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
        """Scores [O, n_items] of the ``others`` of :meth:`prepare_user_delta` under the step (a new
        tensor: the caller may change it in place)."""
        raise NotImplementedError

    @torch.no_grad()
    def scores_with_delta(self, users: torch.Tensor, prepared, scale: torch.Tensor) -> torch.Tensor:
        """Scores [U, n_items] of ``users`` if ``theta_u += scale_u * delta_u`` (scale: [U]); a new
        tensor (the caller may change it in place)."""
        raise NotImplementedError

    @torch.no_grad()
    def apply_user_delta(self, users: torch.Tensor, delta: torch.Tensor) -> None:
        """``theta_u += delta_u`` in place, then :meth:`invalidate`."""
        raise NotImplementedError

    # ---- item blocks (the two-sided update, methods/twosided.py) ---------------------------
    #: The adapter exposes per-item blocks ``theta_i`` (the item side of ``l2unrank_twosided``).
    supports_item_blocks: bool = False

    def item_tables(self) -> list[torch.Tensor]:
        """The tables whose rows make an item's block, in block order."""
        raise AdapterError(f"{type(self.model).__name__} has no per-item parameter block")

    @torch.no_grad()
    def item_block(self, items: torch.Tensor) -> torch.Tensor:
        """``theta_i`` of ``items``, [I, item_dim]."""
        return torch.cat([t[items] for t in self.item_tables()], -1).detach()

    def item_dim(self) -> int:
        return sum(t.shape[1] for t in self.item_tables())

    def init_std(self, table: torch.Tensor) -> float:
        """Standard deviation of the normal draw the model initialises ``table`` with: RecBole's
        ``xavier_normal_initialization`` of an ``nn.Embedding`` [n, d] by default,
        ``sqrt(2 / (n + d))`` (WMF, BPR, LightGCN)."""
        return float((2.0 / (table.shape[0] + table.shape[1])) ** 0.5)

    def item_block_jacobian(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``d y_ui / d theta_i`` for each pair, [B, item_dim]."""
        raise AdapterError(f"{type(self.model).__name__} has no per-item parameter block")

    @torch.no_grad()
    def apply_item_delta(self, items: torch.Tensor, delta: torch.Tensor) -> None:
        """``theta_i += delta_i`` in place (``items`` distinct), then :meth:`invalidate`."""
        start = 0
        for t in self.item_tables():
            t.index_add_(0, items, delta[:, start:start + t.shape[1]].to(t.dtype))
            start += t.shape[1]
        self.invalidate()

    # ---- state ---------------------------------------------------------------------------
    def use_training_data(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Make the model's data-derived state that of these train pairs (the retained ones,
        before training goes on): a graph model's graph; then :meth:`invalidate`."""
        self.set_graph(users, items)
        self.invalidate()

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
        _extras.clear_caches(self.model)

    # ---- checkpoints ---------------------------------------------------------------------
    def checkpoint_extras(self) -> dict:
        """What a checkpoint stores in ``other_parameter``: the model's own
        ``other_parameter()`` without caches, plus the (retained) graph of a RecBole graph model
        (``norm_adj_matrix``), on the model's device like the ``state_dict`` (RecBole's
        ``load_data_and_model`` restores it there; :meth:`load_extras` moves it)."""
        return _extras.checkpoint_extras(self.model)

    def load_extras(self, extras: dict | None) -> None:
        """RecBole's ``load_other_parameter`` of a checkpoint's ``extras``, tensors on the
        model's device, caches left out (and cleared)."""
        if not extras:
            return
        _extras.load_extras(self.model, extras)
        self.invalidate()
