"""LightGCN adapter: propagation over an explicit edge set, exact user blocks, local updates.

LightGCN is linear in its base embeddings ``E0``: ``F = M E0`` with
``M = (1/(L+1)) sum_{k=0..L} A_hat^k`` (``A_hat = D^-1/2 A D^-1/2`` over the bipartite graph).
So for a user ``u`` the Jacobian of ``y_ui = f_u . f_i`` with respect to ``e0_u`` is exactly
``M_uu f_i + M_iu f_u``, and a change ``Delta`` of the request users' base embeddings moves
every final embedding by ``M[:, U] Delta``: scores under a tentative step are exact and cheap.

Local propagation (issue 15). The adapter keeps, on the model, the per-layer embeddings
``X_k = A_hat^k E0`` and their mean ``F`` for the model's current graph (:class:`LocalGraph`),
built once per loaded model by one full propagation. A request then changes them where they
change only, exactly (the propagation is linear):

* dropping edges changes ``A_hat`` in the rows and columns of their endpoints ``T`` only
  (their degrees change): ``X'_k - X_k = A_hat' (X'_{k-1} - X_{k-1}) + (A_hat' - A_hat) X_{k-1}``,
  a recursion over sparse row sets: the work is the edges of the ``L - 1``-hop neighbourhood
  of ``T``, never the whole graph;
* a change of some base rows propagates the same way (``A_hat`` fixed);
* the columns ``M[:, U]`` for the Jacobians and the step calibration come from ``L`` sparse
  products over ``U``'s neighbourhood.

The model's adjacency stays one coalesced sparse tensor (RecBole's forward reads it): a dropped
edge becomes an explicit zero entry in place (no sort, no copy of the ``2|D|`` entries), and
the entries of ``T``'s rows and columns get the new normalisation. RecBole's cached final
embeddings (``restore_user_e`` / ``restore_item_e``) are views of ``F``, so they follow.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from recbole_unrank.adapters.base import AdapterError, ModelAdapter, TrainingLoss
from recbole_unrank.influence.index import known_index

__all__ = ["LightGCNAdapter", "LocalGraph", "drop_edges", "live_edges", "normalized_adjacency"]


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
    keep = vals != 0  # explicit zeros (edges dropped in place by LocalGraph) are not edges
    if not bool(keep[pos].all()):
        return None
    keep[pos] = False
    idx = idx[:, keep]
    deg = torch.bincount(idx[0], minlength=n).to(vals.dtype) + 1e-7
    inv = deg.pow(-0.5)
    new_vals = inv[idx[0]] * inv[idx[1]]
    return torch.sparse_coo_tensor(idx, new_vals, (n, n), device=adj.device, is_coalesced=True,
                                   check_invariants=False)



def live_edges(adj: torch.Tensor) -> int:
    """Entries of ``adj`` that are edges (non-zero): dropped edges stay as explicit zeros."""
    return int((adj.coalesce()._values() != 0).sum())


# ------------------------------------------------------------------------ sparse row sets
def _row_entries(crow: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of every entry of ``rows`` in a row-sorted sparse matrix with row pointers
    ``crow``, and for each the index of its row in ``rows``."""
    start = crow[rows]
    counts = crow[rows + 1] - start
    owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    offset = torch.arange(owner.numel(), device=rows.device) - first[owner]
    return start[owner] + offset, owner


def _find_entries(crow: torch.Tensor, cols: torch.Tensor, r: torch.Tensor, c: torch.Tensor,
                  steps: int) -> torch.Tensor:
    """Position of entry ``(r, c)`` (columns sorted within a row: a coalesced tensor), -1 where
    absent: a vectorised binary search over each row's slice, ``steps`` >= log2(max row + 1)."""
    lo, hi = crow[r].clone(), crow[r + 1].clone()
    end = hi.clone()
    last = max(cols.numel() - 1, 0)
    for _ in range(steps):
        mid = (lo + hi) // 2
        right = (lo < hi) & (cols[mid.clamp(max=last)] < c)
        left = (lo < hi) & ~right
        lo = torch.where(right, mid + 1, lo)
        hi = torch.where(left, mid, hi)
    found = (lo < end) & (cols[lo.clamp(max=last)] == c)
    return torch.where(found, lo, torch.full_like(lo, -1))


def _compact(rows: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the rows of ``vals`` that share a row id: (sorted distinct ids, their sums)."""
    if rows.numel() == 0:
        return rows, vals
    uniq, inv = torch.unique(rows, return_inverse=True)
    out = torch.zeros(uniq.numel(), vals.shape[1], device=vals.device, dtype=vals.dtype)
    return uniq, out.index_add_(0, inv, vals)


class LocalGraph:
    """Per-layer embeddings of a LightGCN model over its current graph, updated locally.

    Held by the model (attribute ``_unrank_local``), so every adapter of that model shares it
    and a deep copy of the model carries it. It is *fresh* while the model's adjacency is the
    object it was built on and neither embedding table changed outside it (version counters);
    a stale one is dropped and rebuilt by one full propagation."""

    def __init__(self, model: nn.Module, n_layers: int):
        adj = model.norm_adj_matrix
        device = model.user_embedding.weight.device
        if adj.device != device:  # a model moved to another device left its graph behind
            adj = adj.to(device)
            model.norm_adj_matrix = adj
        if not adj.is_coalesced():  # RecBole's builder leaves it uncoalesced: sort once per model
            adj = adj.coalesce()
            model.norm_adj_matrix = adj
        self.adj = adj
        self.n_layers = n_layers
        self.n_users = int(model.n_users)
        n = adj.shape[0]
        idx, vals = adj._indices(), adj._values()
        self.crow = torch.searchsorted(idx[0], torch.arange(n + 1, device=device))
        live = vals != 0
        self.deg = torch.bincount(idx[0][live], minlength=n)
        self.live = int(live.sum()) // 2  # undirected edges
        counts = self.crow[1:] - self.crow[:-1]
        self.steps = int(math.ceil(math.log2(int(counts.max()) + 2))) + 1 if n else 1
        self.graph_version = 0  # bumped by every in-place change of the adjacency
        ego = torch.cat((model.user_embedding.weight, model.item_embedding.weight), 0).detach()
        self.layers = [ego.clone()]
        csr = self.csr()
        for _ in range(n_layers):
            self.layers.append(torch.sparse.mm(csr, self.layers[-1]))
        self.final = torch.stack(self.layers).mean(0) if n_layers else self.layers[0].clone()
        self._record(model)

    # ---- freshness -----------------------------------------------------------------------
    def _record(self, model) -> None:
        self.weights = (model.user_embedding.weight, model.item_embedding.weight)
        self.versions = tuple(w._version for w in self.weights)

    def fresh(self, model) -> bool:
        w = (model.user_embedding.weight, model.item_embedding.weight)
        return (model.norm_adj_matrix is self.adj and w[0] is self.weights[0] and w[1] is self.weights[1]
                and tuple(t._version for t in w) == self.versions)

    def __deepcopy__(self, memo):
        # A copy is fresh for the copied model iff this one is fresh for this model: version
        # counters of copied tensors restart, so they are re-read from the copies.
        import copy

        new = LocalGraph.__new__(LocalGraph)
        was_fresh = tuple(t._version for t in self.weights) == self.versions
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        new.versions = tuple(t._version for t in new.weights) if was_fresh else (-1, -1)
        return new

    # ---- sparse products -----------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.adj.shape[0]

    def csr(self) -> torch.Tensor:
        """The adjacency as a CSR tensor over the same index and value storage (a coalesced
        COO tensor's entries are in CSR order): no copy, in-place value changes show."""
        import warnings

        idx = self.adj._indices()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, idx[1], self.adj._values(), tuple(self.adj.shape),
                                           check_invariants=False)

    #: A spread whose rows hold more than this share of all entries runs as one CSR product
    #: over the whole graph (a tuned kernel, |T| columns) instead of gathering those entries.
    WIDE_SHARE = 0.125

    def spread(self, rows: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``A_hat @ X`` for ``X`` non-zero on ``rows`` only (``vals = X[rows]``), from those
        rows' entries alone (``A_hat`` is symmetric): the dense [N, w] result and its support
        (sorted rows). Cost: the entries of ``rows`` times ``w``, plus O(N) to find the
        support; when those entries are a large share of the graph (a popular item's
        neighbourhood), one CSR product over the graph with the same ``w`` columns."""
        n = self.n_nodes
        out = vals.new_zeros(n, vals.shape[1])
        if rows.numel() == 0:
            return out, rows
        entries = int((self.crow[rows + 1] - self.crow[rows]).sum())
        if entries > self.WIDE_SHARE * self.adj._nnz():
            dense = vals.new_zeros(n, vals.shape[1])
            dense.index_add_(0, rows, vals)
            out = torch.sparse.mm(self.csr().to(vals.dtype) if self.adj.dtype != vals.dtype else self.csr(), dense)
            return out, (out != 0).any(1).nonzero().squeeze(1)
        pos, owner = _row_entries(self.crow, rows)
        w = self.adj._values()[pos]
        on = w != 0
        pos, owner, w = pos[on], owner[on], w[on].to(vals.dtype)
        target = self.adj._indices()[1][pos]
        out.index_add_(0, target, w[:, None] * vals[owner])
        mark = torch.zeros(n, dtype=torch.bool, device=vals.device)
        mark[target] = True
        return out, mark.nonzero().squeeze(1)

    def _apply(self, changes: list) -> None:
        """Add row-sparse changes ``[(rows, values)]`` to the layers and the final embeddings."""
        scale = 1.0 / (self.n_layers + 1)
        for layer, (rows, vals) in zip(self.layers, changes):
            if rows.numel():
                layer.index_add_(0, rows, vals)
                self.final.index_add_(0, rows, vals * scale)

    # ---- changes -------------------------------------------------------------------------
    @torch.no_grad()
    def change_base(self, model, nodes: torch.Tensor, delta: torch.Tensor) -> None:
        """The base embeddings of ``nodes`` (graph node ids) move by ``delta``: layer ``k``
        moves by ``A_hat^k`` of it, over the nodes' ``k``-hop neighbourhood. The caller then
        changes the tables themselves and calls :meth:`_record`."""
        rows, vals = _compact(nodes, delta.to(self.final.dtype))
        changes = [(rows, vals)]
        for _ in range(self.n_layers):
            dense, rows = self.spread(rows, vals)
            vals = dense[rows]
            changes.append((rows, vals))
        self._apply(changes)

    @torch.no_grad()
    def drop(self, users: torch.Tensor, items: torch.Tensor, low_rank: bool | None = None) -> bool:
        """Drop the edges ``(users, items)`` in place; False (nothing changed) unless every one
        is a live edge of the graph and none is repeated.

        With ``T`` the edges' endpoints, ``A_hat' - A_hat`` holds the entries of ``T``'s rows
        (``R``) and their mirrors in the rows of ``T``'s neighbours (``C``, all in columns of
        ``T``). Layer changes: ``D_k = A_hat' D_{k-1} + R X_{k-1} + C X_{k-1}``. ``R``'s part
        starts on ``T`` (few rows). ``C X = Z X[T]`` with ``Z`` [N, |T|]: carried as
        ``(A_hat'^j Z) X_{k-1-j}[T]``, so the wide part of the graph (``T``'s neighbours'
        rows) is crossed with |T| columns instead of d (``low_rank``, the default when
        |T| < d); otherwise ``C X`` joins ``R X`` (same result)."""
        n_users = self.n_users
        idx = self.adj._indices()
        vals = self.adj._values()
        cols = idx[1]
        r, c = users.to(vals.device), items.to(vals.device) + n_users
        if r.numel() == 0:
            return True
        if torch.unique(r * self.n_nodes + c).numel() != r.numel():
            return False
        p1 = _find_entries(self.crow, cols, r, c, self.steps)
        p2 = _find_entries(self.crow, cols, c, r, self.steps)
        if bool((p1 < 0).any() | (p2 < 0).any()) or bool((vals[p1] == 0).any()):
            return False
        touched = torch.unique(torch.cat((r, c)))
        pos, owner = _row_entries(self.crow, touched)
        tr, tc = touched[owner], cols[pos]
        old = vals[pos].clone()
        vals[p1] = 0
        vals[p2] = 0
        self.deg.index_add_(0, torch.cat((r, c)), torch.full((2 * r.numel(),), -1, dtype=self.deg.dtype,
                                                               device=vals.device))
        dtype = vals.dtype
        inv_r = (self.deg[tr].to(dtype) + 1e-7).pow(-0.5)  # the formula of normalized_adjacency
        inv_c = (self.deg[tc].to(dtype) + 1e-7).pow(-0.5)
        new = torch.where(vals[pos] != 0, inv_r * inv_c, torch.zeros_like(old))
        vals[pos] = new
        mirror = _find_entries(self.crow, cols, tc, tr, self.steps)  # (c, t): present by symmetry
        vals[mirror] = new
        self._propagate_drop(touched, tr, tc, (new - old).to(self.final.dtype), low_rank)
        self.live -= int(r.numel())
        self.graph_version += 1
        return True

    def _propagate_drop(self, touched, tr, tc, d, low_rank) -> None:
        n, dim = self.n_nodes, self.final.shape[1]
        t_of = torch.full((n,), -1, dtype=torch.long, device=d.device)
        t_of[touched] = torch.arange(touched.numel(), device=d.device)
        nz = d != 0
        tr, tc, d = tr[nz], tc[nz], d[nz]
        outside = t_of[tc] < 0  # mirrors (tc, tr) in rows outside T: the C part
        c_rows, c_cols, c_d = tc[outside], tr[outside], d[outside]
        if low_rank is None:
            low_rank = touched.numel() < dim
        old = self.layers  # the layers before the change (they change in _apply, at the end)

        def r_times(x):  # R X: rows of T
            return x.new_zeros(n, dim).index_add_(0, tr, d[:, None] * x[tc])

        zs = []
        if low_rank and c_rows.numel():
            z = self.final.new_zeros(n, touched.numel())
            z.index_put_((c_rows, t_of[c_cols]), c_d, accumulate=True)
            support = torch.unique(c_rows)
            zs.append((z, support))
            for _ in range(self.n_layers - 1):  # powers 0 .. L-1 of A_hat'
                z, support = self.spread(support, z[support])
                zs.append((z, support))
        changes = [(touched[:0], self.final.new_zeros(0, dim))]
        g_rows, g_vals = touched[:0], self.final.new_zeros(0, dim)
        for k in range(1, self.n_layers + 1):
            g, _ = self.spread(g_rows, g_vals)
            g += r_times(old[k - 1])
            if not low_rank:
                g.index_add_(0, c_rows, c_d[:, None] * old[k - 1][c_cols])
            total = g.clone()
            for j in range(k):  # (A'^(k-1-j) Z) X_j[T]
                if k - 1 - j < len(zs):
                    z, support = zs[k - 1 - j]
                    total.index_add_(0, support, z[support] @ old[j][touched])
            mark = g.abs().sum(1) != 0
            g_rows = mark.nonzero().squeeze(1)
            g_vals = g[g_rows]
            rows = (total.abs().sum(1) != 0).nonzero().squeeze(1)
            changes.append((rows, total[rows]))
        self._apply(changes)

    @torch.no_grad()
    def columns(self, nodes: torch.Tensor) -> torch.Tensor:
        """``M[:, nodes]`` as a dense [N, len(nodes)] block, from ``L`` sparse products over
        the nodes' neighbourhood."""
        k = nodes.numel()
        out = self.final.new_zeros(self.n_nodes, k)
        rows, vals = nodes, torch.eye(k, device=nodes.device, dtype=self.final.dtype)
        out.index_add_(0, rows, vals)
        for _ in range(self.n_layers):
            dense, rows = self.spread(rows, vals)
            vals = dense[rows]
            out.index_add_(0, rows, vals)
        return out / (self.n_layers + 1)


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
        st = getattr(self.model, "_unrank_local", None)
        if st is None or not st.fresh(self.model):
            with torch.no_grad():
                st = LocalGraph(self.model, self.n_layers)
            self.model._unrank_local = st
        return st

    def _fresh_local(self) -> LocalGraph | None:
        st = getattr(self.model, "_unrank_local", None)
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
            if getattr(self.model, "_unrank_local", None) is not None:
                self.model._unrank_local = None
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
            st._record(self.model)
        self.invalidate()
