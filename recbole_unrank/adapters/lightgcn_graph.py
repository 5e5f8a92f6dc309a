"""LightGCN's graph and its local-propagation engine: model-free sparse numerics over the
normalised adjacency, and :class:`LocalGraph`, the per-layer embeddings of a LightGCN-like model
kept up to date where a change reaches only.

LightGCN is linear in its base embeddings ``E0``: ``F = M E0`` with
``M = (1/(L+1)) sum_{k=0..L} A_hat^k`` (``A_hat = D^-1/2 A D^-1/2`` over the bipartite graph).

Public interface (what :class:`~recbole_unrank.adapters.lightgcn.LightGCNAdapter` and the
benchmarks use):

* :func:`normalized_adjacency`, :func:`drop_edges`, :func:`live_edges`: the adjacency, built,
  with edges dropped (no re-sort), and its live edge count;
* :func:`row_entries`: the positions of some rows' entries in a coalesced adjacency;
* :class:`LocalGraph` (``change_base``, ``drop``, ``columns``, ``spread``, ``neighbour_share``)
  and :func:`local_graph`, :func:`forget_local_graph`: the engine a model holds.

Local propagation (issue 15). The model holds the per-layer embeddings ``X_k = A_hat^k E0`` and
their mean ``F`` for its current graph (:class:`LocalGraph`), built once per loaded model by one
full propagation. A request then changes them where they change only, exactly (the propagation
is linear):

* dropping edges changes ``A_hat`` in the rows and columns of their endpoints ``T`` only
  (their degrees change): ``X'_k - X_k = A_hat' (X'_{k-1} - X_{k-1}) + (A_hat' - A_hat) X_{k-1}``,
  a recursion over sparse row sets: the work is the edges of the ``L - 1``-hop neighbourhood
  of ``T``, never the whole graph;
* a change of some base rows propagates the same way (``A_hat`` fixed);
* the columns ``M[:, U]`` for the Jacobians and the step calibration come from ``L`` sparse
  products over ``U``'s neighbourhood.

The model's adjacency stays one coalesced sparse tensor (RecBole's forward reads it): a dropped
edge becomes an explicit zero entry in place (no sort, no copy of the ``2|D|`` entries), and
the entries of ``T``'s rows and columns get the new normalisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LocalGraph", "local_graph", "forget_local_graph", "LOCAL_ATTR", "drop_edges", "live_edges",
           "normalized_adjacency", "row_entries"]

#: The model attribute that holds its :class:`LocalGraph` (a deep copy of the model carries it).
LOCAL_ATTR = "_unrank_local"


def local_graph(model: nn.Module) -> "LocalGraph | None":
    """The :class:`LocalGraph` ``model`` holds, fresh or not (None when none was built)."""
    return getattr(model, LOCAL_ATTR, None)


def forget_local_graph(model: nn.Module) -> None:
    """Drop the :class:`LocalGraph` ``model`` holds (its next use rebuilds it)."""
    if getattr(model, LOCAL_ATTR, None) is not None:
        setattr(model, LOCAL_ATTR, None)


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
def row_entries(crow: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of every entry of ``rows`` in a row-sorted sparse matrix with row pointers
    ``crow`` (a coalesced tensor's entries: :attr:`LocalGraph.crow`), and for each the index of
    its row in ``rows``."""
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

    Held by the model (attribute :data:`LOCAL_ATTR`), so every adapter of that model shares it
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
        self.record(model)

    # ---- freshness -----------------------------------------------------------------------
    def record(self, model) -> None:
        """Note the embedding tables (and their versions) this graph's layers are for: called
        after a change of the tables that the layers already follow (:meth:`change_base`)."""
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
        pos, owner = row_entries(self.crow, rows)
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
        changes the tables themselves and calls :meth:`record`."""
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
        pos, owner = row_entries(self.crow, touched)
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
    def neighbour_share(self, users, items) -> float:
        """Share of the adjacency's entries in the rows of the neighbours of the edges
        ``(users, items)``' endpoints: what an exact update of the second layer must cross."""
        dev = self.crow.device  # every index lives where the graph does (a CUDA graph on a GPU run)
        u = torch.as_tensor(users, dtype=torch.long, device=dev)
        i = torch.as_tensor(items, dtype=torch.long, device=dev) + self.n_users
        t = torch.unique(torch.cat((u, i)))
        pos, _ = row_entries(self.crow, t)
        nb = torch.unique(self.adj._indices()[1][pos])
        return int((self.crow[nb + 1] - self.crow[nb]).sum()) / max(1, self.adj._nnz())

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
