"""LightGCN adapter: propagation over an explicit edge set, exact user blocks, local updates.

LightGCN is linear in its base embeddings ``E0``: ``F = M E0`` with
``M = (1/(L+1)) sum_{k=0..L} A_hat^k`` (``A_hat = D^-1/2 A D^-1/2`` over the bipartite graph).
So for a user ``u`` the Jacobian of ``y_ui = f_u . f_i`` with respect to ``e0_u`` is exactly
``M_uu f_i + M_iu f_u``, and a change ``Delta`` of the request users' base embeddings moves
every final embedding by ``M[:, U] Delta``: scores under a tentative step are exact and cheap.

The graph numerics and the local-propagation engine (:class:`LocalGraph`: per-layer embeddings
kept up to date where a dropped edge or a moved base row reaches only) are in
:mod:`recbole_unrank.adapters.lightgcn_graph`; this module is the adapter over them. RecBole's
cached final embeddings (``restore_user_e`` / ``restore_item_e``) are views of the engine's
``F``, so they follow.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from recbole_unrank.adapters.base import AdapterError, ModelAdapter, TrainingLoss
from recbole_unrank.adapters.lightgcn_graph import (
    LOCAL_ATTR,
    LocalGraph,
    drop_edges,
    forget_local_graph,
    live_edges,
    local_graph,
    normalized_adjacency,
)
from recbole_unrank.influence.index import known_index

# LocalGraph, drop_edges, live_edges and normalized_adjacency: also importable from here
__all__ = ["LightGCNAdapter", "LocalGraph", "drop_edges", "live_edges", "normalized_adjacency"]


def _mean_row_norm2(table: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean of ``||table[ids[k]]||^2`` over the rows ``k``, from each id's count times its
    squared norm (float64): no [len(ids), d] gather (4 GiB at 16M train rows, d = 64). The
    counts come from the interaction index when ``ids`` is one of its columns (paid once per
    loaded data set), else from one bincount. 1.0 without rows."""
    if ids.numel() == 0:
        return 1.0
    index = known_index(ids)
    if index is not None and ids is index.users:
        counts = index.user_count
    elif index is not None and ids is index.items:
        counts = index.item_count
    else:
        counts = torch.bincount(ids, minlength=table.shape[0])
    norms = table.detach().to(torch.float64).pow(2).sum(1)
    n = min(counts.numel(), norms.numel())
    return float((counts[:n].to(torch.float64) * norms[:n]).sum() / ids.numel())


class LightGCNAdapter(ModelAdapter):
    """RecBole's LightGCN (``user_embedding``, ``item_embedding``, ``n_layers``, ``norm_adj_matrix``)."""

    pairwise = True
    supports_user_blocks = True
    is_graph = True
    dot_product = True

    def __init__(self, model: nn.Module):
        super().__init__(model)
        for name in ("user_embedding", "item_embedding", "n_layers", "norm_adj_matrix"):
            if not hasattr(model, name):
                raise AdapterError(f"{type(model).__name__} has no '{name}': not a LightGCN-like model")
        self.n_layers = int(model.n_layers)
        self._cols_key = None
        self._cols = None
        self._swapped = False  # inside propagate_over: the model's graph is a scope subgraph

    # ---- propagation ---------------------------------------------------------------------
    def _propagate(self, adj: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        out, cur = ego, ego
        for _ in range(self.n_layers):
            cur = torch.sparse.mm(adj, cur)
            out = out + cur
        return out / (self.n_layers + 1)

    def _ego(self) -> torch.Tensor:
        return torch.cat((self.model.user_embedding.weight, self.model.item_embedding.weight), 0)

    def local(self) -> LocalGraph:
        """The model's :class:`LocalGraph`, built (one full propagation) when missing or stale."""
        st = local_graph(self.model)
        if st is None or not st.fresh(self.model):
            with torch.no_grad():
                st = LocalGraph(self.model, self.n_layers)
            setattr(self.model, LOCAL_ATTR, st)
        return st

    def _fresh_local(self) -> LocalGraph | None:
        st = local_graph(self.model)
        return st if st is not None and st.fresh(self.model) else None

    def set_graph(self, users, items) -> None:
        adj = normalized_adjacency(users.to(self.device), items.to(self.device), self.n_users, self.n_items,
                                   self.model.user_embedding.weight.dtype)
        self._install_graph(adj, users, items)

    def _install_graph(self, adj, users, items) -> None:
        self.model.norm_adj_matrix = adj
        # RecBole's own attribute, kept consistent for anything that reads it later.
        import scipy.sparse as sp

        u, i = users.cpu().numpy(), items.cpu().numpy()
        self.model.interaction_matrix = sp.coo_matrix(
            (np.ones(u.size, dtype=np.float32), (u, i)), shape=(self.n_users, self.n_items)
        )
        self._cols_key = None
        self.invalidate()

    def remove_edges(self, users, items, n_edges: int) -> bool:
        """Drop the edges ``(users, items)`` from the model's graph in place, when that graph
        holds ``n_edges`` live edges, all of them among them (checked); False otherwise (the
        caller rebuilds with :meth:`set_graph`). The per-layer embeddings and the final ones
        are updated for the rows that change only (:meth:`LocalGraph.drop`); the values equal
        a rebuild's, dropped edges stay as explicit zeros."""
        if self._swapped:
            return False
        st = self.local()
        if st.live != int(n_edges) or not st.drop(users, items):
            return False
        # RecBole reads ``interaction_matrix`` only to build the adjacency in ``__init__``;
        # rebuilding it would cost O(|D|) per request, a stale one would be a lie.
        self.model.interaction_matrix = None
        self._cols_key = None
        self.invalidate()
        return True

    @contextmanager
    def propagate_over(self, users, items):
        saved = self.model.norm_adj_matrix
        device = self.device
        self.model.norm_adj_matrix = normalized_adjacency(users.to(device), items.to(device), self.n_users,
                                                          self.n_items, self.model.user_embedding.weight.dtype)
        self._swapped = True
        self.invalidate()
        try:
            yield
        finally:
            self.model.norm_adj_matrix = saved
            self._swapped = False
            self.invalidate()

    def _final(self) -> torch.Tensor:
        """Final embeddings [N, d]: differentiable (full propagation) under autograd or over a
        swapped-in subgraph; otherwise the model's :class:`LocalGraph` (kept fresh locally)."""
        if torch.is_grad_enabled() or self._swapped:
            return self._propagate(self.model.norm_adj_matrix, self._ego())
        return self.local().final

    def invalidate(self) -> None:
        """Drop what is stale. A fresh :class:`LocalGraph` stays (it was updated with the
        change), and RecBole's ``restore_user_e`` / ``restore_item_e`` become views of its
        final embeddings, so ``full_sort_predict`` needs no propagation."""
        st = None if self._swapped else self._fresh_local()
        if st is None:
            super().invalidate()
            forget_local_graph(self.model)
            return
        if hasattr(self.model, "restore_user_e"):
            self.model.restore_user_e = st.final[: self.n_users]
            self.model.restore_item_e = st.final[self.n_users :]

    # ---- scoring -------------------------------------------------------------------------
    def pair_scores(self, users, items):
        final = self._final()
        return (final[users] * final[self.n_users + items]).sum(-1)

    @torch.no_grad()
    def final_embeddings(self):
        final = self._final()
        return final[: self.n_users], final[self.n_users :]

    @torch.no_grad()
    def user_scores(self, users):
        final = self._final()
        return final[users] @ final[self.n_users :].T

    # ---- user blocks ---------------------------------------------------------------------
    def user_dim(self) -> int:
        return self.model.user_embedding.weight.shape[1]

    def user_tables(self):
        return [self.model.user_embedding.weight]

    def reg_tables(self):
        return self.model.user_embedding.weight, self.model.item_embedding.weight

    @torch.no_grad()
    def training_loss(self, users, items, batch_size):
        """BPR + ``reg_weight * EmbLoss`` on the base rows of (u, i, j), per batch of ``B``.
        With ``require_pow`` the L2 term is ``sum ||e||^2 / (2B)``: per row ``reg/2``. Without
        it (RecBole's default) it is ``(||E_u||_F + ||E_i||_F + ||E_j||_F) / B`` of the batch
        matrices, not a sum over rows; the stated surrogate is ``lam ||e||^2`` per row with
        ``lam = reg / (2 sqrt(B m))``, ``m`` the mean squared row norm of that table over the
        train rows: its gradient equals the batch term's at the trained point when a batch's
        Frobenius norm is ``sqrt(B m)`` (its expectation to first order)."""
        m = self.model
        reg = float(m.reg_weight)
        if getattr(m, "require_pow", False):
            return TrainingLoss("logsig", pairwise=True, reg_user=reg / 2, reg_item=reg / 2,
                                note="BPR + L2 (require_pow), summed")
        U, I = m.user_embedding.weight, m.item_embedding.weight  # noqa: E741 (users, items)
        mu = _mean_row_norm2(U, users)
        mi = _mean_row_norm2(I, items)
        b = max(1, int(batch_size))
        return TrainingLoss("logsig", pairwise=True,
                            reg_user=reg / (2 * max(b * mu, 1e-12) ** 0.5),
                            reg_item=reg / (2 * max(b * mi, 1e-12) ** 0.5),
                            note="BPR + L2 surrogate of EmbLoss (per-row squared norm, gradient-matched), summed")

    @torch.no_grad()
    def _columns(self, uniq: torch.Tensor) -> torch.Tensor:
        """``M[:, uniq]`` as a dense [N, U] block (local: ``uniq``'s L-hop neighbourhood)."""
        if self._swapped:  # over a scope subgraph: plain sparse products of one-hot columns
            n = self.n_users + self.n_items
            onehot = torch.zeros(n, uniq.numel(), device=self.device, dtype=self.model.user_embedding.weight.dtype)
            onehot[uniq, torch.arange(uniq.numel(), device=self.device)] = 1.0
            return self._propagate(self.model.norm_adj_matrix, onehot)
        st = self.local()
        key = (id(st), st.graph_version, uniq.numel(), int(uniq.sum()), int(uniq[0]), int(uniq[-1]))
        if self._cols_key != key:
            self._cols = st.columns(uniq)
            self._cols_key = key
        return self._cols

    @torch.no_grad()
    def user_block_jacobian(self, users, items):
        uniq, pos = torch.unique(users, return_inverse=True)
        cols = self._columns(uniq)
        final = self._final()
        m_uu = cols[users, pos]
        m_iu = cols[self.n_users + items, pos]
        return m_uu[:, None] * final[self.n_users + items] + m_iu[:, None] * final[users]

    moves_other_users = True  # a base user embedding reaches every user through the items

    @torch.no_grad()
    def prepare_user_delta(self, users, delta, others=None):
        # Only the request users' rows, the item rows, and (for the utility guard) a sample
        # of other users' rows of the final embeddings are scored; their shift under a
        # uniform step s is s * (M[rows, U] delta), computed once here (the step search
        # calls scores_with_delta about 2 log2(G) times).
        final, cols = self._final(), self._columns(users)
        others = users[:0] if others is None else others
        items = torch.arange(self.n_users, self.n_users + self.n_items, device=users.device)
        rows = torch.cat((users, others, items))
        final_r, cols_r = final[rows], cols[rows]
        return final_r, cols_r, delta, cols_r @ delta, users.numel(), others.numel(), {}

    @torch.no_grad()
    def _moved(self, prepared, scale):
        final_r, cols_r, delta, shift, n_u, n_o = prepared[:6]
        if bool((scale == scale[0]).all()):  # one step for everyone: reuse the shift
            return final_r + scale[0] * shift
        return final_r + cols_r @ (scale[:, None] * delta)

    @torch.no_grad()
    def scores_with_delta(self, users, prepared, scale):
        n_u, n_o = prepared[4], prepared[5]
        moved = self._moved(prepared, scale)
        return moved[:n_u] @ moved[n_u + n_o :].T

    @torch.no_grad()
    def other_scores_with_delta(self, prepared, scale):
        """Scores of the ``others`` given to :meth:`prepare_user_delta` under the same step.

        With ``C = M[rows, U]`` and ``D = scale * delta``, the others' rows move by ``C_o D``
        and the items' by ``C_i D``, so their scores are the step-free ``B = F_o F_i^T``
        (one product, kept in ``prepared``) plus a rank-``2U`` term
        ``[C_o | F_o D^T] @ [D (F_i + C_i D)^T ; C_i^T]``: each step of the search costs
        ``O x n_items x 2U`` instead of ``O x n_items x d`` (when ``2U < d``)."""
        final_r, cols_r, delta, shift, n_u, n_o = prepared[:6]
        if n_o == 0:
            return final_r.new_zeros(0, final_r.shape[0] - n_u)
        if 2 * n_u >= final_r.shape[1]:  # many users: the direct product is cheaper
            moved = self._moved(prepared, scale)
            return moved[n_u : n_u + n_o] @ moved[n_u + n_o :].T
        cache = prepared[6]
        f_o, f_i = final_r[n_u : n_u + n_o], final_r[n_u + n_o :]
        c_o, c_i = cols_r[n_u : n_u + n_o], cols_r[n_u + n_o :]
        if "base" not in cache:
            cache["base"] = f_o @ f_i.T
        d = scale[:, None].to(delta.dtype) * delta  # [U, dim]
        moved_i = f_i + c_i @ d
        left = torch.cat((c_o, f_o @ d.T), 1)  # [O, 2U]
        right = torch.cat((d @ moved_i.T, c_i.T), 0)  # [2U, n_items]
        return torch.addmm(cache["base"], left, right)

    @torch.no_grad()
    def apply_user_delta(self, users, delta):
        weight = self.model.user_embedding.weight
        delta = delta.to(weight.dtype)
        st = None if self._swapped else self._fresh_local()
        if st is not None:  # the layers and final embeddings follow, locally
            st.change_base(self.model, users, delta)
        weight.index_add_(0, users, delta)
        if st is not None:
            st.record(self.model)
        self.invalidate()
