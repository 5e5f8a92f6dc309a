"""L2UnRank: scoped, weighted influence-function unranking (Zhao et al., arXiv 2511.06803).

Stage 1, scope: p-hop interaction expansion of the request D_t over the train interactions.
Stage 2, weights: structural + semantic entity influence, Gaussian-calibrated, averaged per
         interaction (``w_ui``; 1 for the request's own interactions).
Stage 3, update: a weighted influence-function step ``Delta = (H + lambda I)^-1 g``.

Two update paths share stages 1 and 2:

* ``update = "all"`` (the paper; preset ``config/l2unrank-paper.yaml``): every parameter;
  ``g`` = gradient of the weighted loss over D_inf, ``H`` = Hessian of the unweighted loss over
  D_inf through Hessian-vector products, conjugate gradient (T steps), ``theta += Delta``.
  Graph models propagate over the scope subgraph during the update.
* ``update = "users"`` (project default): only the request users' own parameter blocks
  ``theta_u``. Per user an exact ``d x d`` Gauss-Newton block over the user's scope pairs,
  each weighted by ``w_ui`` (influential retained interactions resist change the most), the
  gradient of the request's loss, one batched solve, then a per-user step scale ``eta_u``:
  the smallest on a log grid that takes the user's forgotten items out of the top
  ``view_k`` (at most ``view_share`` of them may stay), under a guard: the request users'
  validation NDCG@10 keeps at least ``utility_guard`` of its value before the step.
  Other users' parameters (and, for factor models, their scores) are untouched.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from recbole_unrank.adapters import AdapterError, ModelAdapter, get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence import (
    batched_block_solve,
    conjugate_gradient,
    flat,
    gauss_newton_operator,
    hvp_operator,
    influence_scope,
    influence_weights,
    sigmoid_curvature,
    unflat,
)
from recbole_unrank.influence.probe import RankProbe
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask

__all__ = ["L2UnRank", "l2unrank_variant", "SETTINGS", "default_hops", "per_row_gram"]

logger = logging.getLogger("recbole_unrank")

SETTINGS = {
    "hops": "unrank_hops",
    "scope_cap": "unrank_scope_cap",
    "update": "unrank_update",
    "curvature": "unrank_curvature",
    "damping": "unrank_damping",
    "cg_steps": "unrank_cg_steps",
    "cg_tol": "unrank_cg_tol",
    "loss": "unrank_loss",
    "use_scope": "unrank_use_scope",
    "use_structural": "unrank_use_structural",
    "use_semantic": "unrank_use_semantic",
    "use_weights": "unrank_use_weights",
    "use_context": "unrank_use_context",
    "calibrate": "unrank_calibrate",
    "view_k": "unrank_view_k",
    "view_share": "unrank_view_share",
    "utility_guard": "unrank_utility_guard",
    "step_grid": "unrank_step_grid",
}

DEFAULTS = {
    "hops": None,
    "scope_cap": None,
    "update": "users",
    "curvature": "gauss_newton",
    "damping": 1e-2,
    "cg_steps": 30,
    "cg_tol": 1e-6,
    "loss": "auto",
    "use_scope": True,
    "use_structural": True,
    "use_semantic": True,
    "use_weights": True,
    "use_context": False,
    "calibrate": True,
    "view_k": 10,
    "view_share": 0.0,
    "utility_guard": 0.98,
    "step_grid": [1e-4, 1000.0, 57],
}


def default_hops(adapter: ModelAdapter, update: str = "all") -> int:
    """The paper's default scope: 1 hop for graph models, 0 for latent-factor models. The
    user-block path takes 1 hop for every model: a user's block then holds all of the user's
    train interactions, so the retained ones anchor the step (with 0 hops the block sees only
    the forgotten pairs and the step drags the retained items down with them)."""
    if update == "users":
        return 1
    return 1 if adapter.is_graph else 0


def _check(settings: dict) -> dict:
    s = dict(DEFAULTS)
    s.update({k: v for k, v in settings.items() if v is not None or k in ("hops", "scope_cap")})
    if s["hops"] is not None and int(s["hops"]) < 0:
        raise UnrankError(f"unrank_hops={s['hops']} is negative: use 0 (the request only) or more")
    if not float(s["damping"]) > 0:
        raise UnrankError(f"unrank_damping={s['damping']} must be > 0 (e.g. 1e-2)")
    if int(s["cg_steps"]) < 1:
        raise UnrankError(f"unrank_cg_steps={s['cg_steps']} must be at least 1 (e.g. 30)")
    if s["update"] not in ("users", "all"):
        raise UnrankError(f"unrank_update={s['update']!r}: use 'users' or 'all'")
    if s["curvature"] not in ("gauss_newton", "hessian", "identity"):
        raise UnrankError(f"unrank_curvature={s['curvature']!r}: use gauss_newton, hessian or identity")
    if s["loss"] not in ("auto", "bpr", "pointwise"):
        raise UnrankError(f"unrank_loss={s['loss']!r}: use auto, bpr or pointwise")
    if not 0.0 <= float(s["view_share"]) < 1.0:
        raise UnrankError(f"unrank_view_share={s['view_share']} must lie in [0, 1)")
    if not 0.0 <= float(s["utility_guard"]) <= 1.0:
        raise UnrankError(f"unrank_utility_guard={s['utility_guard']} must lie in [0, 1]")
    if int(s["view_k"]) < 1:
        raise UnrankError(f"unrank_view_k={s['view_k']} must be at least 1")
    return s


class L2UnRank(UnlearningMethod):
    name = "l2unrank"
    settings = SETTINGS
    overrides: dict = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        merged = {**kwargs, **self.overrides}
        self.s = _check(merged)

    # ------------------------------------------------------------------ stage helpers
    def _pairs(self, task: UnlearnTask, device):
        feat = task.train_ds.inter_feat
        users = feat[task.train_ds.uid_field].to(device)
        items = feat[task.train_ds.iid_field].to(device)
        return users, items

    def _negatives(self, n: int, n_items: int, device, seed: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        return torch.randint(1, n_items, (n,), generator=gen).to(device)

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        s = self.s
        model = task.model
        try:
            adapter = get_adapter(model)
        except AdapterError as exc:
            raise UnrankError(f"{task.model_name} cannot be unlearned by l2unrank: {exc}") from None
        device = adapter.device
        pairwise = adapter.pairwise if s["loss"] == "auto" else s["loss"] == "bpr"
        stages: dict[str, float] = {}
        info: dict = {}

        # Stage 1: scope --------------------------------------------------------------
        t0 = time.perf_counter()
        users, items = self._pairs(task, device)
        target = torch.as_tensor(task.request_index, device=device)
        hops = default_hops(adapter, s["update"]) if s["hops"] is None else int(s["hops"])
        if s["use_scope"]:
            scope = influence_scope(users, items, target, hops, s["scope_cap"])
            scope_index, context_index = scope.scope_index, scope.context_index
        else:  # D_inf = D
            scope_index = torch.arange(users.numel(), device=device)
            is_t = torch.zeros(users.numel(), dtype=torch.bool, device=device)
            is_t[target] = True
            context_index = scope_index[~is_t]
        stages["scope_s"] = time.perf_counter() - t0
        info.update(hops=hops, scope_size=int(scope_index.numel()), train_size=int(users.numel()))
        logger.info("[l2unrank] scope: %d hops, %d of %d train interactions (%d context)",
                    hops, scope_index.numel(), users.numel(), context_index.numel())

        # Retained graph first: a graph model's embeddings and scores are those without D_t.
        keep = torch.ones(users.numel(), dtype=torch.bool, device=device)
        keep[target] = False
        if adapter.is_graph:
            # Scale (issue 7): drop D_t's edges from the model's own train graph when it is
            # that graph (no sort of the 2|D| entries); rebuild from the retained pairs otherwise.
            if not adapter.remove_edges(users[target], items[target], users.numel()):
                adapter.set_graph(users[keep], items[keep])

        # Stage 2: weights ------------------------------------------------------------
        t0 = time.perf_counter()
        if s["use_weights"] and (s["use_structural"] or s["use_semantic"]):
            user_e = item_e = None
            if s["use_semantic"]:
                user_e, item_e = adapter.final_embeddings()
            weights = influence_weights(users, items, target, scope_index, user_e, item_e,
                                        s["use_structural"], s["use_semantic"])
        else:
            weights = torch.ones(scope_index.numel(), device=device)
        stages["weights_s"] = time.perf_counter() - t0
        info["weight_mean"] = float(weights.mean())

        # Stage 3: update -------------------------------------------------------------
        t0 = time.perf_counter()
        if s["update"] == "users":
            if not adapter.supports_user_blocks:
                logger.info("[l2unrank] %s has no user blocks: taking the full-parameter path", task.model_name)
                self._update_all(task, adapter, users, items, target, scope_index, weights, pairwise, info)
            else:
                self._update_users(task, adapter, users, items, target, keep, scope_index, weights, pairwise, info)
        else:
            self._update_all(task, adapter, users, items, target, scope_index, weights, pairwise, info)
        adapter.invalidate()
        stages["solve_s"] = time.perf_counter() - t0
        return UnlearnResult(model, stages=stages, info=info)

    # ------------------------------------------------------------------ user blocks
    def _update_users(self, task, adapter, users, items, target, keep, scope_index, weights, pairwise, info):
        s = self.s
        device = users.device
        t_users, t_items = users[target], items[target]
        req_users = torch.unique(t_users)
        row_of = torch.full((adapter.n_users,), -1, dtype=torch.long, device=device)
        row_of[req_users] = torch.arange(req_users.numel(), device=device)
        U, d = req_users.numel(), adapter.user_dim()

        # Curvature pairs: the scope's pairs of request users (all of them, request included).
        sc_users, sc_items = users[scope_index], items[scope_index]
        mine = row_of[sc_users] >= 0
        cu, ci, cw = sc_users[mine], sc_items[mine], weights[mine]
        if not s["use_weights"]:
            cw = torch.ones_like(cw)

        def outputs_and_jac(u, i):
            if pairwise:
                j = self._negatives(u.numel(), adapter.n_items, device, task.seed)
                with torch.no_grad():
                    z = adapter.pair_scores(u, i) - adapter.pair_scores(u, j)
                jac = adapter.user_block_jacobian(u, i) - adapter.user_block_jacobian(u, j)
            else:
                with torch.no_grad():
                    z = adapter.pair_scores(u, i)
                jac = adapter.user_block_jacobian(u, i)
            return z, jac

        # H_u = sum_scope w f''(z) J J^T  (Gauss-Newton: PSD, exact d x d per user)
        z, jac = outputs_and_jac(cu, ci)
        if s["curvature"] == "identity":
            H = torch.zeros(U, d, d, device=device, dtype=jac.dtype)
        else:
            c = (cw * sigmoid_curvature(z)).to(jac.dtype)
            H = per_row_gram(row_of[cu], jac, c, U)
        # g_u = grad of the request's loss (+ weighted context loss when use_context).
        # l = -log sigmoid(z): dl/dz = -sigmoid(-z). The removal step is +H^-1 g.
        gz, gjac = outputs_and_jac(t_users, t_items)
        g = torch.zeros(U, d, device=device, dtype=gjac.dtype).index_add_(
            0, row_of[t_users], -torch.sigmoid(-gz)[:, None] * gjac)
        ctx = mine & keep[scope_index]
        if s["use_context"] and bool(ctx.any()):  # no context pairs (e.g. 0 hops): nothing to add
            cz, cjac = outputs_and_jac(sc_users[ctx], sc_items[ctx])
            g.index_add_(0, row_of[sc_users[ctx]], -(weights[ctx] * torch.sigmoid(-cz))[:, None] * cjac)
        delta = batched_block_solve(H, g, float(s["damping"]))
        info["grad_norm"] = float(g.norm())

        scale = torch.ones(U, device=device, dtype=delta.dtype)
        if s["calibrate"]:
            scale = self._calibrate(task, adapter, req_users, row_of, delta, keep, users, items, t_users, t_items, info)
        adapter.apply_user_delta(req_users, scale[:, None] * delta)

    def _probe(self, task, adapter, req_users, row_of, keep, users, items, t_users, t_items) -> RankProbe:
        device = users.device
        hist = keep & (row_of[users] >= 0)
        v_users = task.valid_ds.inter_feat[task.valid_ds.uid_field].to(device)
        v_items = task.valid_ds.inter_feat[task.valid_ds.iid_field].to(device)
        v_mine = row_of[v_users] >= 0
        return RankProbe(
            req_users.numel(),
            row_of[users[hist]], items[hist],
            row_of[t_users], t_items,
            row_of[v_users[v_mine]], v_items[v_mine],
        )

    def _other_users(self, task, adapter, req_users, keep, users, items, sample: int = 500):
        """A seeded sample of validation users outside the request, their probe, and the factor
        that scales their summed NDCG change to all such users."""
        device = users.device
        v_users = task.valid_ds.inter_feat[task.valid_ds.uid_field].to(device)
        v_items = task.valid_ds.inter_feat[task.valid_ds.iid_field].to(device)
        cand = torch.unique(v_users)
        cand = cand[~torch.isin(cand, req_users)]
        gen = torch.Generator(device="cpu").manual_seed(int(task.seed))
        pick = cand[torch.randperm(cand.numel(), generator=gen)[:sample].to(device)].sort().values
        row_of = torch.full((adapter.n_users,), -1, dtype=torch.long, device=device)
        row_of[pick] = torch.arange(pick.numel(), device=device)
        hist = keep & (row_of[users] >= 0)
        v_mine = row_of[v_users] >= 0
        empty = torch.zeros(0, dtype=torch.long, device=device)
        probe = RankProbe(pick.numel(), row_of[users[hist]], items[hist], empty, empty,
                          row_of[v_users[v_mine]], v_items[v_mine])
        return pick, probe, cand.numel() / max(1, pick.numel())

    @torch.no_grad()
    def _calibrate(self, task, adapter, req_users, row_of, delta, keep, users, items, t_users, t_items, info):
        """Per-user step: the smallest grid value meeting the viewing threshold, capped so that
        the request users' validation NDCG@10 keeps ``utility_guard`` of its starting value."""
        s = self.s
        probe = self._probe(task, adapter, req_users, row_of, keep, users, items, t_users, t_items)
        lo, hi, n = s["step_grid"]
        grid = torch.cat((torch.zeros(1), torch.logspace(np.log10(lo), np.log10(hi), int(n)))).to(delta)
        others, other_probe, other_factor = None, None, 0.0
        if adapter.moves_other_users:  # the guard also watches a sample of the other users
            others, other_probe, other_factor = self._other_users(task, adapter, req_users, keep, users, items)
        prepared = adapter.prepare_user_delta(req_users, delta, others)
        U = req_users.numel()
        k, share = int(s["view_k"]), float(s["view_share"])

        def measure(scale_vec):
            scores = probe.mask(adapter.scores_with_delta(req_users, prepared, scale_vec))
            ndcg = probe.valid_ndcg(scores, 10, masked=True)
            if other_probe is not None:  # other users' NDCG@10 change, scaled to all of them
                o = other_probe.valid_ndcg(adapter.other_scores_with_delta(prepared, scale_vec), 10)
                ndcg = torch.cat((ndcg, (o - base_other) * other_factor))
            return probe.forget_share_in_topk(scores, k, masked=True), ndcg

        base_other = None
        if other_probe is not None:
            base_other = other_probe.valid_ndcg(
                adapter.other_scores_with_delta(prepared, torch.zeros(U, device=delta.device, dtype=delta.dtype)), 10)

        G = grid.numel()

        def at(index):  # per-user grid index -> per-user scale
            return grid[index]

        # Per user, the smallest grid index meeting the viewing threshold, by bisection
        # (the share of forgotten items in the top K falls as the step grows): about
        # log2(G) score evaluations of the request users only, never of the whole model.
        hit0, ndcg0 = measure(torch.zeros(U, device=delta.device, dtype=delta.dtype))
        base_sum = float(ndcg0.sum())
        lo = torch.zeros(U, dtype=torch.long, device=delta.device)
        hi = torch.full((U,), G - 1, dtype=torch.long, device=delta.device)
        met0 = hit0 <= share + 1e-9
        hi[met0] = 0
        while bool((lo < hi).any()):
            mid = (lo + hi) // 2
            hit, _ = measure(at(mid))
            ok = hit <= share + 1e-9
            active = lo < hi
            hi = torch.where(active & ok, mid, hi)
            lo = torch.where(active & ~ok, mid + 1, lo)
        chosen = at(hi)
        # Guard: the validation split's NDCG@10 (sum over its users) may lose at most
        # (1 - utility_guard) of the original's; only the request users' part moves. The
        # largest common cap on the per-user scales that holds it, again by bisection.
        allowance = (1.0 - float(s["utility_guard"])) * float(task.valid_ndcg_sum or base_sum)
        cap_used = None
        hit, ndcg = measure(chosen)
        if base_sum - float(ndcg.sum()) > allowance:
            c_lo, c_hi = 0, G - 1  # invariant: cap grid[c_lo] holds (0 always does)
            while c_lo < c_hi:
                c_mid = (c_lo + c_hi + 1) // 2
                _, nd = measure(chosen.clamp(max=float(grid[c_mid])))
                if base_sum - float(nd.sum()) <= allowance:
                    c_lo = c_mid
                else:
                    c_hi = c_mid - 1
            cap_used = float(grid[c_lo])
            chosen = chosen.clamp(max=cap_used)
            hit, ndcg = measure(chosen)
        base_ndcg = base_sum
        info.update(
            step_median=float(chosen.median()),
            step_cap=cap_used,
            users_meeting_view=float((hit <= share + 1e-9).float().mean()),
            valid_ndcg_ratio=float(ndcg.sum() / base_ndcg) if base_ndcg > 0 else 1.0,
        )
        logger.info("[l2unrank] step: median %.3g, cap %s, %.0f%% of users meet top-%d, their valid NDCG x%.3f",
                    info["step_median"], cap_used, 100 * info["users_meeting_view"], k, info["valid_ndcg_ratio"])
        return chosen

    # ------------------------------------------------------------------ full parameters
    def _update_all(self, task, adapter, users, items, target, scope_index, weights, pairwise, info):
        s = self.s
        device = users.device
        params = adapter.params()
        su, si = users[scope_index], items[scope_index]
        target_mask = torch.zeros(users.numel(), dtype=torch.bool, device=device)
        target_mask[target] = True
        is_target = target_mask[scope_index]
        w = weights if s["use_weights"] else torch.ones_like(weights)
        gw = torch.where(is_target, torch.ones_like(w), w if s["use_context"] else torch.zeros_like(w))
        neg = self._negatives(su.numel(), adapter.n_items, device, task.seed) if pairwise else None

        def outputs(_params=None):
            z = adapter.pair_scores(su, si)
            if pairwise:
                z = z - adapter.pair_scores(su, neg)
            return z

        with adapter.propagate_over(su, si):  # a no-op for non-graph models
            z = outputs()
            loss_g = (gw * -F.logsigmoid(z)).sum()
            grads = torch.autograd.grad(loss_g, params, allow_unused=True)
            g = flat([torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]).detach()
            if s["curvature"] == "identity":
                x = g / float(s["damping"])
                info.update(cg_iterations=0, cg_stop="identity")
            else:
                if s["curvature"] == "hessian":
                    matvec = hvp_operator(lambda: (-F.logsigmoid(outputs())).sum(), params)
                else:
                    matvec = gauss_newton_operator(outputs, params, sigmoid_curvature)
                # The paper runs T plain CG steps; the project's PSD curvatures never meet
                # negative curvature, and an exact Hessian that does is reported.
                res = conjugate_gradient(matvec, g, float(s["damping"]), int(s["cg_steps"]), float(s["cg_tol"]),
                                         stop_on_negative_curvature=s["curvature"] != "hessian")
                x = res.x
                info.update(cg_iterations=res.iterations, cg_stop=res.stop_reason,
                            cg_relative_residual=res.residual_norms[-1] / max(res.residual_norms[0], 1e-30))
                logger.info("[l2unrank] CG: %d iterations, %s, relative residual %.3g",
                            res.iterations, res.stop_reason, info["cg_relative_residual"])
        delta = unflat(x, params)
        info["grad_norm"] = float(g.norm())
        scale = 1.0
        if s["calibrate"]:
            scale = self._calibrate_global(task, adapter, params, delta, users, items, target, info)
        with torch.no_grad():
            for p, dp in zip(params, delta):
                p.add_(scale * dp)
        adapter.invalidate()

    @torch.no_grad()
    def _calibrate_global(self, task, adapter, params, delta, users, items, target, info):
        """One scale for the whole update: the smallest grid value whose forget_hit@view_k is at
        most ``view_share`` while the request users' validation NDCG@10 holds the guard."""
        s = self.s
        device = users.device
        keep = torch.ones(users.numel(), dtype=torch.bool, device=device)
        keep[target] = False
        t_users, t_items = users[target], items[target]
        req_users = torch.unique(t_users)
        row_of = torch.full((adapter.n_users,), -1, dtype=torch.long, device=device)
        row_of[req_users] = torch.arange(req_users.numel(), device=device)
        probe = self._probe(task, adapter, req_users, row_of, keep, users, items, t_users, t_items)
        lo, hi, n = s["step_grid"]
        grid = [0.0] + np.logspace(np.log10(lo), np.log10(hi), int(n)).tolist()
        saved = [p.detach().clone() for p in params]
        base_ndcg, best = None, 0.0
        try:
            for g in grid:
                for p, p0, dp in zip(params, saved, delta):
                    p.copy_(p0 + g * dp)
                adapter.invalidate()
                scores = adapter.user_scores(req_users)
                hit = float((probe.forget_ranks(scores) <= int(s["view_k"])).float().mean())
                ndcg = float(probe.valid_ndcg(scores, 10).sum())
                base_ndcg = ndcg if base_ndcg is None else base_ndcg
                allowance = (1.0 - float(s["utility_guard"])) * float(task.valid_ndcg_sum or base_ndcg)
                if base_ndcg - ndcg > allowance:
                    break
                best = g
                if hit <= float(s["view_share"]) + 1e-9:
                    break
        finally:
            for p, p0 in zip(params, saved):
                p.copy_(p0)
            adapter.invalidate()
        info["step_scale"] = best
        return best


def per_row_gram(rows: torch.Tensor, jac: torch.Tensor, c: torch.Tensor, n_rows: int,
                 budget: int = 1 << 24) -> torch.Tensor:
    """``H[r] = sum_{p: rows[p] = r} c_p J_p J_p^T`` as a [n_rows, d, d] tensor.

    Pairs are grouped by row and zero-padded to the longest group, then each block is one
    batched matrix product (``(c J)^T J``); rows go in chunks so the padded tensor stays near
    ``budget`` elements. Never materialises the [pairs, d, d] outer products."""
    d = jac.shape[1]
    H = torch.zeros(n_rows, d, d, device=jac.device, dtype=jac.dtype)
    if rows.numel() == 0:
        return H
    order = torch.argsort(rows, stable=True)
    rows, jac, c = rows[order], jac[order], c[order]
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    width = max(1, int(counts.max()))
    chunk = max(1, budget // (width * d))
    for lo in range(0, n_rows, chunk):
        hi = min(n_rows, lo + chunk)
        sel = (rows >= lo) & (rows < hi)
        padded = torch.zeros(hi - lo, width, d, device=jac.device, dtype=jac.dtype)
        padded[rows[sel] - lo, pos[sel]] = jac[sel]
        weighted = torch.zeros_like(padded)
        weighted[rows[sel] - lo, pos[sel]] = jac[sel] * c[sel, None]
        H[lo:hi] = weighted.transpose(1, 2) @ padded
    return H


def l2unrank_variant(name: str, **overrides) -> type[L2UnRank]:
    """A named L2UnRank variant (preset or ablation) with fixed overrides."""
    return type(f"L2UnRank_{name}", (L2UnRank,), {"name": name, "overrides": overrides})
