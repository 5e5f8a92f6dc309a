"""LightGCN adapter: propagation over an explicit edge set, exact user blocks.

LightGCN is linear in its base embeddings ``E0``: ``F = M E0`` with
``M = (1/(L+1)) sum_{k=0..L} A_hat^k`` (``A_hat = D^-1/2 A D^-1/2`` over the bipartite graph).
So for a user ``u`` the Jacobian of ``y_ui = f_u . f_i`` with respect to ``e0_u`` is exactly
``M_uu f_i + M_iu f_u``, and a change ``Delta`` of the request users' base embeddings moves
every final embedding by ``M[:, U] Delta``: scores under a tentative step are exact and cheap.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from recbole_unrank.adapters.base import AdapterError, ModelAdapter

__all__ = ["LightGCNAdapter", "drop_edges", "normalized_adjacency"]


def normalized_adjacency(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph of these pairs, sparse [N, N], N = users + items.
    Vectorised (RecBole's own builder goes through a dok matrix, slow at millions of edges)."""
    device = users.device
    n = n_users + n_items
    rows = torch.cat((users, items + n_users))
    cols = torch.cat((items + n_users, users))
    deg = torch.bincount(rows, minlength=n).to(dtype) + 1e-7
    inv = deg.pow(-0.5)
    vals = inv[rows] * inv[cols]
    return torch.sparse_coo_tensor(torch.stack((rows, cols)), vals, (n, n), device=device,
                                   check_invariants=False).coalesce()


def drop_edges(adj: torch.Tensor, users: torch.Tensor, items: torch.Tensor, n_users: int) -> torch.Tensor | None:
    """``normalized_adjacency`` of the graph of ``adj`` without the edges ``(users, items)``,
    from ``adj`` itself (coalesced, as :func:`normalized_adjacency` returns it).

    Scale (issue 7): a rebuild coalesces, i.e. sorts, ``2 |D|`` entries (1.5 s at 5M
    interactions on 2 cores). Dropping entries from a coalesced tensor keeps it sorted, so this
    takes a few vectorised passes over the entries and no sort; only the degrees of the
    request's users and items change, and every value is re-derived from the new degrees, so
    the result equals the rebuild (same entries, same values). Returns None when ``adj`` is
    not coalesced or lacks one of the edges (the caller rebuilds)."""
    if not adj.is_coalesced():
        return None
    n = adj.shape[0]
    idx, vals = adj._indices(), adj._values()
    key = idx[0] * n + idx[1]  # sorted: adj is coalesced
    cols = items.to(idx.device) + n_users
    rows = users.to(idx.device)
    drop = torch.unique(torch.cat((rows * n + cols, cols * n + rows)))
    pos = torch.searchsorted(key, drop).clamp(max=key.numel() - 1)
    if not bool((key[pos] == drop).all()):
        return None
    keep = torch.ones(key.numel(), dtype=torch.bool, device=key.device)
    keep[pos] = False
    idx = idx[:, keep]
    deg = torch.bincount(idx[0], minlength=n).to(vals.dtype) + 1e-7
    inv = deg.pow(-0.5)
    new_vals = inv[idx[0]] * inv[idx[1]]
    return torch.sparse_coo_tensor(idx, new_vals, (n, n), device=adj.device, is_coalesced=True,
                                   check_invariants=False)


class LightGCNAdapter(ModelAdapter):
    """RecBole's LightGCN (``user_embedding``, ``item_embedding``, ``n_layers``, ``norm_adj_matrix``)."""

    pairwise = True
    supports_user_blocks = True
    is_graph = True

    def __init__(self, model: nn.Module):
        super().__init__(model)
        for name in ("user_embedding", "item_embedding", "n_layers", "norm_adj_matrix"):
            if not hasattr(model, name):
                raise AdapterError(f"{type(model).__name__} has no '{name}': not a LightGCN-like model")
        self.n_layers = int(model.n_layers)
        self._cols_key = None
        self._cols = None
        self._final_key = None  # (adjacency, parameter versions) of the cached final embeddings
        self._final_cache = None

    # ---- propagation ---------------------------------------------------------------------
    def _propagate(self, adj: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        out, cur = ego, ego
        for _ in range(self.n_layers):
            cur = torch.sparse.mm(adj, cur)
            out = out + cur
        return out / (self.n_layers + 1)

    def _ego(self) -> torch.Tensor:
        return torch.cat((self.model.user_embedding.weight, self.model.item_embedding.weight), 0)

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
        """Drop the edges ``(users, items)`` from the model's graph, when that graph is the
        coalesced normalised graph of ``n_edges`` distinct edges holding all of them (checked:
        entry count and presence of every edge); False otherwise (the caller rebuilds with
        :meth:`set_graph`). Same result as a rebuild, without its sort (see :func:`drop_edges`)."""
        adj = self.model.norm_adj_matrix
        if adj._nnz() != 2 * int(n_edges):
            return False
        if not adj.is_coalesced():  # RecBole's own builder leaves it uncoalesced: sort once here,
            adj = adj.coalesce()  # later requests on this model (successive ones) skip it
        new = drop_edges(adj, users.to(self.device), items.to(self.device), self.n_users)
        if new is None:
            return False
        ui = new._indices()[:, : new._nnz() // 2]  # rows < n_users come first: the user->item half
        self._install_graph(new, ui[0], ui[1] - self.n_users)
        return True

    @contextmanager
    def propagate_over(self, users, items):
        saved = self.model.norm_adj_matrix
        self.model.norm_adj_matrix = normalized_adjacency(users, items, self.n_users, self.n_items,
                                                          self.model.user_embedding.weight.dtype)
        self.invalidate()
        try:
            yield
        finally:
            self.model.norm_adj_matrix = saved
            self.invalidate()

    def _final(self) -> torch.Tensor:
        """Final embeddings [N, d]. Outside autograd they are cached (scale, issue 7: one
        request used to propagate over the whole graph ~10 times, 7 s of 10 at 5M
        interactions); the key is the adjacency object and both embedding tables' version
        counters, so any in-place change of either table or a new graph recomputes them."""
        adj = self.model.norm_adj_matrix
        if torch.is_grad_enabled():  # differentiable path (full-parameter update): never cached
            return self._propagate(adj, self._ego())
        key = (adj, self.model.user_embedding.weight._version, self.model.item_embedding.weight._version)
        if self._final_key is None or self._final_key[0] is not adj or self._final_key[1:] != key[1:]:
            self._final_cache = self._propagate(adj, self._ego())
            self._final_key = key  # holds adj, so its id cannot be reused while cached
        return self._final_cache

    def invalidate(self) -> None:
        super().invalidate()
        self._final_key = self._final_cache = None

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

    @torch.no_grad()
    def _columns(self, uniq: torch.Tensor) -> torch.Tensor:
        """``M[:, uniq]`` as a dense [N, U] block: L sparse products of U one-hot columns."""
        adj = self.model.norm_adj_matrix
        key = (id(adj), uniq.numel(), int(uniq.sum()), int(uniq[0]), int(uniq[-1]))
        if self._cols_key != key:
            n = self.n_users + self.n_items
            onehot = torch.zeros(n, uniq.numel(), device=self.device, dtype=self.model.user_embedding.weight.dtype)
            onehot[uniq, torch.arange(uniq.numel(), device=self.device)] = 1.0
            self._cols = self._propagate(self.model.norm_adj_matrix, onehot)
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
        return final_r, cols_r, delta, cols_r @ delta, users.numel(), others.numel()

    @torch.no_grad()
    def _moved(self, prepared, scale):
        final_r, cols_r, delta, shift, n_u, n_o = prepared
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
        """Scores of the ``others`` given to :meth:`prepare_user_delta` under the same step."""
        n_u, n_o = prepared[4], prepared[5]
        moved = self._moved(prepared, scale)
        return moved[n_u : n_u + n_o] @ moved[n_u + n_o :].T

    @torch.no_grad()
    def apply_user_delta(self, users, delta):
        self.model.user_embedding.weight.index_add_(0, users, delta.to(self.model.user_embedding.weight.dtype))
        self.invalidate()
