"""Influence-function baselines: ``if``, ``ifru``, ``scif`` (DESIGN.md section 5).

All three are one Newton-type removal step ``theta <- theta + Delta`` with

    (H + lambda I) Delta = g,    solved by conjugate gradient (x_0 = 0, T steps),

on the same losses as L2UnRank (``l(u,i) = -log sigmoid(z)``, ``z = y_ui - y_uj`` with a sampled
negative ``j`` for pairwise models, ``z = y_ui`` otherwise; summed, unweighted). They differ in
one step each, the sub-space the step lives in and the data ``H`` and ``g`` are built from:

==========  ==========================================  =====================================
method      parameters that move                        H over (restricted to those rows)
==========  ==========================================  =====================================
``if``      all trainable parameters                    all retained interactions ``D \\ D_t``
``ifru``    user/item embedding rows within k hops of   all retained interactions
            the request (importance-pruned)             (+ g gets the graph-change term)
``scif``    the request users' embedding rows           retained interactions of the request
                                                        users and their collaborative neighbours
==========  ==========================================  =====================================

``g`` is the gradient of the request's loss ``sum_{D_t} l``. A restricted method solves CG in
the sub-space: every vector is masked to the chosen rows before and after each Hessian-vector
product (``M H M``), and only the tables that hold those rows enter autograd at all.

Graph models (LightGCN): ``g`` and ``H`` are taken at the trained model as it is, i.e. with the
original train graph; the model keeps the retained graph afterwards (``adapter.set_graph``).
IFRU alone also accounts for the graph change (its "spillover" term). Every cache the update
makes stale is cleared once, by ``adapter.invalidate()``.

Curvature (``unrank_baseline_curvature``): ``hessian`` (the default; the papers' exact Hessian,
through Hessian-vector products) or ``gauss_newton`` (its positive semi-definite part,
``J^T diag(f'') J``). The models were not trained to a minimum of these losses, so the exact
Hessian is often indefinite along ``g``; like L2UnRank's Hessian path (the papers' fixed-T
solver) CG then runs its T plain steps through negative curvature (``cg_stop`` reports
``max_iter_negative_curvature``), which is no longer a minimisation and can give large,
erratic steps. Gauss-Newton is positive semi-definite: CG solves the damped system.

Like L2UnRank these methods never read the config: their settings arrive as keyword arguments
(``settings`` maps each to its ``unrank_*`` key).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recbole_unrank.adapters import AdapterError, ModelAdapter, get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence import (
    conjugate_gradient,
    flat,
    gauss_newton_operator,
    hvp_operator,
    sigmoid_curvature,
    unflat,
)
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask
from recbole_unrank.methods.l2unrank import L2UnRank

__all__ = [
    "IFRU",
    "SCIF",
    "SOLVER_SETTINGS",
    "InfluenceFunction",
    "collaborative_users",
    "khop_importance",
    "row_tables",
]

logger = logging.getLogger("recbole_unrank")

SOLVER_SETTINGS = {
    "curvature": "unrank_baseline_curvature",
    "damping": "unrank_damping",
    "cg_steps": "unrank_cg_steps",
    "cg_tol": "unrank_cg_tol",
    "loss": "unrank_loss",
}
SOLVER_DEFAULTS = {
    "curvature": "hessian",
    "damping": 1e-2,
    "cg_steps": 30,
    "cg_tol": 1e-6,
    "loss": "auto",
}


# --------------------------------------------------------------------------- helpers (tensors in)
def row_tables(
    model: nn.Module, params: list[torch.Tensor], n_users: int, n_items: int
) -> list[tuple[int, str]]:
    """The embedding tables among ``params`` whose rows are users or items.

    Returns ``(index into params, "user" | "item")`` for each ``nn.Embedding`` of ``model`` with
    ``n_users`` or ``n_items`` rows (WMF/BPR/LightGCN: ``user_embedding``, ``item_embedding``;
    NeuMF: the GMF and MLP tables of each). When ``n_users == n_items`` the module name decides.
    """
    where = {id(p): k for k, p in enumerate(params)}
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding) or id(module.weight) not in where:
            continue
        rows, lname = module.num_embeddings, name.lower()
        if rows == n_users and rows != n_items:
            kind = "user"
        elif rows == n_items and rows != n_users:
            kind = "item"
        elif rows == n_users == n_items and ("user" in lname) != ("item" in lname):
            kind = "user" if "user" in lname else "item"
        else:
            continue
        found.append((where[id(module.weight)], kind))
    return found


def khop_importance(
    users: torch.Tensor,
    items: torch.Tensor,
    n_users: int,
    n_items: int,
    t_users: torch.Tensor,
    t_items: torch.Tensor,
    hops: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IFRU's node importance after ``hops`` propagation steps, over a bipartite graph.

    Nodes are users ``0..n_users-1`` then items. With a self-loop on every node and
    ``deg(v) = 1 + #edges(v)``, the request's nodes start at ``s_0(v) = c_t(v) / deg(v)``
    (``c_t``: how many request pairs touch ``v``) and each hop spreads them:
    ``s_{h+1}(w) = (s_h(w) + sum_{v ~ w} s_h(v)) / deg(w)``. The nodes with ``s_hops > 0`` are
    exactly those within ``hops`` hops of the request (the self-loops keep earlier hops).

    Args:
        users, items: LongTensor[E], the graph's edges (the retained interactions).
        t_users, t_items: LongTensor[T], the request's pairs.
        hops: ``k >= 0``.

    Returns:
        (user scores [n_users], item scores [n_items]), float64, on ``users.device``.
    """
    n = n_users + n_items
    device = users.device
    src = torch.cat((users, items + n_users))
    dst = torch.cat((items + n_users, users))
    deg = torch.bincount(src, minlength=n).to(torch.float64) + 1.0
    s = torch.zeros(n, dtype=torch.float64, device=device)
    s.index_add_(
        0,
        torch.cat((t_users, t_items + n_users)),
        torch.ones(2 * t_users.numel(), dtype=torch.float64, device=device),
    )
    s = s / deg
    for _ in range(hops):
        s = (s + torch.zeros_like(s).index_add_(0, dst, s[src])) / deg
    return s[:n_users], s[n_users:]


def collaborative_users(
    users: torch.Tensor,
    items: torch.Tensor,
    n_users: int,
    n_items: int,
    seeds: torch.Tensor,
    hops: int,
) -> torch.Tensor:
    """Users reached from ``seeds`` by ``hops`` user -> item -> user steps over the pairs
    ``(users, items)`` (hop 1: the users who share an item with a seed). Bool mask [n_users];
    the seeds themselves are included."""
    reached = torch.zeros(n_users, dtype=torch.bool, device=users.device)
    reached[seeds] = True
    for _ in range(hops):
        item_hit = torch.zeros(n_items, dtype=torch.bool, device=users.device)
        item_hit[items[reached[users]]] = True
        grown = reached.clone()
        grown[users[item_hit[items]]] = True
        if bool((grown == reached).all()):
            break
        reached = grown
    return reached


@dataclass
class _Problem:
    """What every step needs: the train pairs, the request, negatives, and the adapter."""

    adapter: ModelAdapter
    users: torch.Tensor  # [N] train users
    items: torch.Tensor  # [N] train items
    target: torch.Tensor  # [T] indices of D_t in the N pairs
    keep: torch.Tensor  # [N] bool, retained
    neg: torch.Tensor | None  # [N] one sampled negative per train pair (pairwise loss)
    pairwise: bool
    rows: tuple | None = None  # (user rows [n_users], item rows [n_items]) once restricted

    @property
    def retained_index(self) -> torch.Tensor:
        return self.keep.nonzero().squeeze(1)

    def original_graph(self):
        """Within the block a graph model propagates over the original train graph."""
        return self.adapter.propagate_over(self.users, self.items)  # no-op for non-graph models

    def outputs(self, index: torch.Tensor) -> torch.Tensor:
        """``z_k``: ``y_ui - y_uj`` (pairwise) or ``y_ui``; differentiable; current graph."""
        u, i = self.users[index], self.items[index]
        z = self.adapter.pair_scores(u, i)
        if self.pairwise:
            z = z - self.adapter.pair_scores(u, self.neg[index])
        return z

    def loss(self, index: torch.Tensor) -> torch.Tensor:
        """``sum_{k in index} -log sigmoid(z_k)``."""
        return (-F.logsigmoid(self.outputs(index))).sum()


# --------------------------------------------------------------------------- the shared pipeline
class _InfluenceBaseline(UnlearningMethod):
    """Pipeline shared by the three baselines; a subclass fills in :meth:`subspace`,
    :meth:`hessian_index` and, optionally, :meth:`extra_gradient`."""

    settings: ClassVar[dict] = SOLVER_SETTINGS
    defaults: ClassVar[dict] = SOLVER_DEFAULTS
    # The same negative draw as L2UnRank (seeded, one per train pair): with the same data the
    # same H, so that `if` can be checked against l2unrank number for number.
    _negatives = L2UnRank._negatives
    _pairs = L2UnRank._pairs

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        s = dict(self.defaults)
        s.update({k: v for k, v in kwargs.items() if v is not None})
        if not float(s["damping"]) > 0:
            raise UnrankError(f"unrank_damping={s['damping']} must be > 0 (e.g. 1e-2)")
        if int(s["cg_steps"]) < 1:
            raise UnrankError(f"unrank_cg_steps={s['cg_steps']} must be at least 1 (e.g. 30)")
        if s["curvature"] not in ("hessian", "gauss_newton"):
            raise UnrankError(
                f"unrank_baseline_curvature={s['curvature']!r}: use hessian or gauss_newton"
            )
        if s["loss"] not in ("auto", "bpr", "pointwise"):
            raise UnrankError(f"unrank_loss={s['loss']!r}: use auto, bpr or pointwise")
        self.s = self.check(s)

    def check(self, s: dict) -> dict:
        """Validate the method's own settings (override); returns them."""
        return s

    # ---- the steps a method fills in -------------------------------------------------------
    def subspace(self, prob: _Problem, params: list[torch.Tensor], info: dict):
        """``None`` (every parameter moves) or ``(params, masks)``: the tables that move and a
        bool mask per table (True on the rows that move)."""
        return

    def hessian_index(self, prob: _Problem, info: dict) -> torch.Tensor:
        """Indices (into the N train pairs) of the interactions whose loss ``H`` is taken of."""
        return prob.retained_index

    def extra_gradient(self, prob: _Problem, params: list[torch.Tensor]) -> torch.Tensor | None:
        """A term added to ``g`` (flat, over ``params``), or None."""
        return None

    # ---- pipeline ------------------------------------------------------------------------------
    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        s = self.s
        model = task.model
        try:
            adapter = get_adapter(model)
        except AdapterError as exc:
            raise UnrankError(
                f"{task.model_name} cannot be unlearned by {self.name}: {exc}"
            ) from None
        device = adapter.device
        stages: dict[str, float] = {}
        info: dict = {}

        t0 = time.perf_counter()
        users, items = self._pairs(task, device)
        target = torch.as_tensor(task.request_index, device=device, dtype=torch.long)
        keep = torch.ones(users.numel(), dtype=torch.bool, device=device)
        keep[target] = False
        pairwise = adapter.pairwise if s["loss"] == "auto" else s["loss"] == "bpr"
        neg = (
            self._negatives(users.numel(), adapter.n_items, device, task.seed) if pairwise else None
        )
        prob = _Problem(adapter, users, items, target, keep, neg, pairwise)
        # A graph model serves the retained graph from now on (and after the update).
        if adapter.is_graph:
            adapter.set_graph(users[keep], items[keep])

        all_params = adapter.params()
        sub = self.subspace(prob, all_params, info)
        if sub is None:
            params, masks = all_params, None
        else:
            params, masks = sub
        h_index = self.hessian_index(prob, info)
        info["hessian_pairs"] = int(h_index.numel())
        stages["scope_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        delta = self._solve(prob, params, masks, h_index, info)
        with torch.no_grad():
            for p, dp in zip(params, delta):
                p.add_(dp.to(p.dtype))
        adapter.invalidate()
        stages["solve_s"] = time.perf_counter() - t0
        return UnlearnResult(model, stages=stages, info=info)

    def _solve(self, prob: _Problem, params, masks, h_index, info) -> list[torch.Tensor]:
        s = self.s
        mask = None if masks is None else flat(masks)

        def restrict(v: torch.Tensor) -> torch.Tensor:
            # where(), not a product: NaN/Inf outside the sub-space must not leak in.
            return v if mask is None else torch.where(mask, v, torch.zeros_like(v))

        with prob.original_graph():
            grads = torch.autograd.grad(prob.loss(prob.target), params, allow_unused=True)
            g = flat(
                [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]
            ).detach()
            info["grad_norm"] = float(restrict(g).norm())
            extra = self.extra_gradient(prob, params)
            if extra is not None:
                info["graph_term_norm"] = float(restrict(extra).norm())
                g = g + extra
            g = restrict(g)
            if s["curvature"] == "hessian":
                curv = hvp_operator(lambda: prob.loss(h_index), params)
            else:
                curv = gauss_newton_operator(
                    lambda _p: prob.outputs(h_index), params, sigmoid_curvature
                )
            # As L2UnRank: T plain CG steps on the exact Hessian (the papers' fixed-T solver),
            # through negative curvature (reported in cg_stop); a PSD curvature never meets it.
            res = conjugate_gradient(
                lambda v: restrict(curv(restrict(v))),
                g,
                float(s["damping"]),
                int(s["cg_steps"]),
                float(s["cg_tol"]),
                stop_on_negative_curvature=s["curvature"] != "hessian",
            )
        x = restrict(res.x)
        info.update(
            cg_iterations=res.iterations,
            cg_stop=res.stop_reason,
            cg_relative_residual=res.residual_norms[-1] / max(res.residual_norms[0], 1e-30),
            step_norm=float(x.norm()),
        )
        logger.info(
            "[%s] CG: %d iterations, %s, relative residual %.3g, |Delta| %.3g",
            self.name,
            res.iterations,
            res.stop_reason,
            info["cg_relative_residual"],
            info["step_norm"],
        )
        return unflat(x, params)

    # ---- sub-space helpers ---------------------------------------------------------------------
    def _row_subspace(self, prob: _Problem, params, user_rows, item_rows, info):
        """Tables holding user rows (``user_rows``: bool [n_users]) and item rows (bool [n_items]),
        with their masks; None (every parameter) when the model has no such tables."""
        a = prob.adapter
        tables = row_tables(a.model, params, a.n_users, a.n_items)
        chosen, masks = [], []
        for k, kind in tables:
            rows = user_rows if kind == "user" else item_rows
            if rows is None or not bool(rows.any()):
                continue
            p = params[k]
            chosen.append(p)
            masks.append(rows.view(-1, *([1] * (p.dim() - 1))).expand_as(p))
        info.update(
            rows_users=0 if user_rows is None else int(user_rows.sum()),
            rows_items=0 if item_rows is None else int(item_rows.sum()),
        )
        if not chosen:
            logger.warning(
                "[%s] %s has no user/item embedding tables to restrict the update to: "
                "updating every parameter (plain influence function)",
                self.name,
                type(a.model).__name__,
            )
            info["fallback"] = "all_parameters"
            return None
        prob.rows = (user_rows, item_rows)
        return chosen, masks


# --------------------------------------------------------------------------- if
class InfluenceFunction(_InfluenceBaseline):
    """``if``: the classical influence-function removal (Koh & Liang, ICML 2017), every parameter.

    ``Delta = (H + lambda I)^-1 g`` with ``g = grad sum_{D_t} l`` and ``H`` the Hessian of the
    summed, unweighted loss over all retained train data (``hessian_data = "retained"``: the
    Newton step on the retained loss ``sum_{D \\ D_t} l``, taking the trained model's gradient
    of the full loss as zero) or over all train data (``"train"``: the first-order
    up-weighting form, with ``H`` at the trained optimum). No scope, no weights, no step
    calibration. Graph models are differentiated with the original train graph (the forgotten
    edges' effect on propagation is what ``ifru`` adds).

    ``hessian_data = "train"`` is L2UnRank's full-parameter path with no scope, no weights, no
    context term and no calibration (with the same curvature), number for number (same pairs,
    same negatives, same solver); ``"retained"`` differs from it by the request's own curvature.
    """

    name = "if"
    settings: ClassVar[dict] = {**SOLVER_SETTINGS, "hessian_data": "unrank_if_hessian_data"}
    defaults: ClassVar[dict] = {**SOLVER_DEFAULTS, "hessian_data": "retained"}

    def check(self, s):
        if s["hessian_data"] not in ("retained", "train"):
            raise UnrankError(
                f"unrank_if_hessian_data={s['hessian_data']!r}: use retained or train"
            )
        return s

    def hessian_index(self, prob, info):
        if self.s["hessian_data"] == "train":
            return torch.arange(prob.users.numel(), device=prob.users.device)
        return prob.retained_index


# --------------------------------------------------------------------------- ifru
class IFRU(_InfluenceBaseline):
    """``ifru``: IFRU (Zhang, Hu, Bai, Wu, Wang, Feng: "Recommendation Unlearning via Influence
    Function", ACM TORS 2024).

    What is implemented:

    * **Spillover term** (graph models). Removing ``D_t`` also changes the graph that
      propagation runs on, so the retained interactions' loss changes too. IFRU's removal
      gradient is ``g = grad sum_{D_t} l(theta; G) + grad [L_r(theta; G) - L_r(theta; G_r)]``
      with ``L_r`` the retained loss, ``G`` the train graph and ``G_r = G \\ D_t`` (the same
      sampled negatives in both). Factor models have no graph: the term is zero and skipped.
    * **Importance-based pruning**. Only embedding rows of users and items within ``hops`` hops
      of the request in the retained graph move (:func:`khop_importance`; hop 0 = the request's
      own users and items). Of those, the ``keep`` share with the highest importance
      ``s_hops(v)`` is kept (the authors' code keeps the nodes above the 40% quantile, i.e.
      ``keep = 0.6``); the request's own users and items are always kept (a simplification: a
      high-degree request node could otherwise be pruned and its user would not be unlearned).
      Every other parameter (other rows, NeuMF's MLP and output layer) is frozen.
    * ``H``: the Hessian of the retained loss (original graph), restricted to the kept rows:
      CG runs in that sub-space, every Hessian-vector product is masked before and after.

    Simplifications: the system is solved by CG (the authors minimise the same quadratic with
    Adam); losses are the project's (BPR / pointwise log-sigmoid, summed) rather than the
    authors' BCE; for factor models only pairs touching a kept row enter ``H`` (exact: the
    others have no curvature in those rows).
    """

    name = "ifru"
    settings: ClassVar[dict] = {
        **SOLVER_SETTINGS,
        "hops": "unrank_ifru_hops",
        "keep": "unrank_ifru_keep",
    }
    defaults: ClassVar[dict] = {**SOLVER_DEFAULTS, "hops": 1, "keep": 0.6}

    def check(self, s):
        if int(s["hops"]) < 0:
            raise UnrankError(
                f"unrank_ifru_hops={s['hops']} is negative: use 0 (the request's own "
                "users and items) or more"
            )
        if not 0.0 < float(s["keep"]) <= 1.0:
            raise UnrankError(
                f"unrank_ifru_keep={s['keep']} must lie in (0, 1] (1 keeps every node "
                "within the hops)"
            )
        return s

    def subspace(self, prob, params, info):
        a = prob.adapter
        ku, ki = prob.users[prob.keep], prob.items[prob.keep]
        tu, ti = prob.users[prob.target], prob.items[prob.target]
        su, si = khop_importance(ku, ki, a.n_users, a.n_items, tu, ti, int(self.s["hops"]))
        score = torch.cat((su, si))
        reached = score > 0
        n_reached = int(reached.sum())
        n_keep = min(n_reached, math.ceil(float(self.s["keep"]) * n_reached))
        chosen = torch.zeros_like(reached)
        if n_keep > 0:
            chosen[torch.topk(score, n_keep).indices] = True
        chosen &= reached
        chosen[tu] = True  # the request's own nodes always move
        chosen[ti + a.n_users] = True
        info.update(khop_nodes=n_reached)
        return self._row_subspace(prob, params, chosen[: a.n_users], chosen[a.n_users :], info)

    def hessian_index(self, prob, info):
        index = prob.retained_index
        if prob.adapter.is_graph or prob.rows is None:  # graph: every pair can reach the rows
            return index
        user_rows, item_rows = prob.rows
        touch = user_rows[prob.users[index]] | item_rows[prob.items[index]]
        return index[touch]

    def extra_gradient(self, prob, params):
        if not prob.adapter.is_graph:
            return None
        index = prob.retained_index

        def grad_of(loss):
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return flat(
                [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]
            ).detach()

        on_original = grad_of(prob.loss(index))  # called within original_graph()
        with prob.adapter.propagate_over(prob.users[prob.keep], prob.items[prob.keep]):
            on_retained = grad_of(prob.loss(index))
        # propagate_over restored the original graph of the enclosing block on exit.
        return on_original - on_retained


# --------------------------------------------------------------------------- scif
class SCIF(_InfluenceBaseline):
    """``scif``: SCIF (Li, Chen, Zheng, Zhang, Gong, Wang: "Selective and Collaborative Influence
    Function for Efficient Recommendation Unlearning", 2023).

    What is implemented:

    * **Selective**: only the request users' own embedding rows move (every user table of the
      model: WMF/BPR ``user_embedding``, NeuMF its GMF and MLP user tables, LightGCN the base
      ``user_embedding``); items, other users and dense layers are frozen. CG runs in that
      sub-space (masked Hessian-vector products).
    * **Collaborative**: ``H`` is the Hessian, restricted to those rows, of the retained loss
      of the request users *and* of their collaborative neighbours: the users who share a
      retained item with them, expanded ``neighbors`` times (0: the request users only).
      For graph models a user's base embedding reaches its neighbours' scores through
      propagation, so their interactions add curvature that keeps the update from breaking
      the collaborative signal. For factor models (WMF, NeuMF) a neighbour's loss has no
      curvature in another user's rows: the neighbours change nothing there, ``H`` reduces
      to each request user's own retained interactions, and only those are evaluated (exact).
      (A model without user tables falls back to every parameter, neighbours included.)
    * ``g``: the gradient of the request's loss ``sum_{D_t} l``.

    Simplifications: one CG solve for all request users together (the blocks are independent
    for factor models, so this equals per-user solves); the project's losses; the original
    graph for ``g`` and ``H`` (no spillover term, unlike ``ifru``).
    """

    name = "scif"
    settings: ClassVar[dict] = {**SOLVER_SETTINGS, "neighbors": "unrank_scif_neighbors"}
    defaults: ClassVar[dict] = {**SOLVER_DEFAULTS, "neighbors": 1}

    def check(self, s):
        if int(s["neighbors"]) < 0:
            raise UnrankError(
                f"unrank_scif_neighbors={s['neighbors']} is negative: use 0 (the request "
                "users only) or more"
            )
        return s

    def subspace(self, prob, params, info):
        user_rows = torch.zeros(prob.adapter.n_users, dtype=torch.bool, device=prob.users.device)
        user_rows[prob.users[prob.target]] = True
        return self._row_subspace(prob, params, user_rows, None, info)

    def hessian_index(self, prob, info):
        a = prob.adapter
        index = prob.retained_index
        ru, ri = prob.users[index], prob.items[index]
        seeds = torch.unique(prob.users[prob.target])
        group = collaborative_users(ru, ri, a.n_users, a.n_items, seeds, int(self.s["neighbors"]))
        info["neighbor_users"] = int(group.sum()) - int(seeds.numel())
        if prob.rows is not None and not a.is_graph:
            # A neighbour's loss has no curvature in another user's rows: leave it out (exact).
            group = torch.zeros_like(group)
            group[seeds] = True
        return index[group[ru]]
