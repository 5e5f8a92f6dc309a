"""One influence pipeline with named steps; every influence method is a declaration of steps.

    rows -> scope -> weights -> curvature -> solve -> step size

The steps and their choices are :class:`~recbole_unrank.methods.steps.Steps`
(:mod:`.steps`); the ``unrank_*`` settings that select them and the checks of the others,
:mod:`.settings`; the graph neighbourhoods of the baselines' scopes,
:mod:`recbole_unrank.influence.neighbourhood`. This module runs a declaration
(:class:`InfluencePipeline`) and makes one (:func:`declare`).

A setting that the declared steps make inert is refused (:class:`~recbole_unrank.errors.
UnrankError`, one line), never ignored.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import torch

from recbole_unrank.adapters import AdapterError, get_adapter
from recbole_unrank.errors import UnrankError
from recbole_unrank.influence import (
    batched_block_solve,
    conjugate_gradient,
    flat,
    influence_scope,
    influence_weights,
    unflat,
)
from recbole_unrank.influence.index import interaction_index
from recbole_unrank.influence.neighbourhood import collaborative_users, khop_importance
from recbole_unrank.influence.scope import influence_scope_indexed
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask
from recbole_unrank.methods.calibration import StepCalibration
from recbole_unrank.methods.objective import Objective
from recbole_unrank.methods.settings import (
    CALIBRATION_SETTINGS,
    check_model_settings,
    check_pins,
    check_settings,
    steps_from_settings,
)
from recbole_unrank.methods.steps import Steps
from recbole_unrank.progress import progress

# Steps, CALIBRATION_SETTINGS, collaborative_users and khop_importance: also importable from here
__all__ = ["Steps", "InfluencePipeline", "declare", "collaborative_users", "khop_importance",
           "CALIBRATION_SETTINGS"]

logger = logging.getLogger("recbole_unrank")

#: The user-block solve is exact (batched LU); a relative residual ``||(H_u + lambda I) Delta_u - g_u||
#: / ||g||`` above this means the blocks are too ill-conditioned for the working precision, and the
#: step is refused (raise ``unrank_damping``). float32 LU on damped PSD blocks stays near 1e-6.
BLOCK_RESIDUAL_TOL = 1e-3


# --------------------------------------------------------------------------- the pipeline
class InfluencePipeline(UnlearningMethod):
    """Runs the declared :class:`Steps`. Subclasses come from :func:`declare`.

    Class attributes: ``steps`` (the declaration), ``settings`` (keyword -> ``unrank_*`` key;
    every default is that key's in ``properties/unrank.yaml``), ``fixed`` (keywords a variant
    pins: what the variant is; the same keyword given with another value is refused)."""

    name = "influence"
    steps: ClassVar[Steps] = Steps()
    settings: ClassVar[dict] = {}
    fixed: ClassVar[dict] = {}
    show_progress: bool = False  # the task's, set by unlearn

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        given = self.given_kwargs
        check_pins(self.name, self.fixed, given, self.settings)
        s = {**self.kwargs, **self.fixed}
        self.given = set(given) - set(self.fixed)  # what the user chose: it must act or be refused
        self.plan = steps_from_settings(self.steps, s).check()
        self.s = check_settings(self.plan, s, self.given, self.settings, self.name)

    # ---- the run ---------------------------------------------------------------------------
    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        p, s = self.plan, self.s
        self.show_progress = task.show_progress  # bars on the CG / Newton loops
        try:
            adapter = get_adapter(task.model)
        except AdapterError as exc:
            raise UnrankError(f"{task.model_name} cannot be unlearned by {self.name}: {exc}") from None
        if p.params == "blocks" and not adapter.supports_user_blocks:
            raise UnrankError(f"{task.model_name} has no per-user parameter blocks: {self.name} needs them "
                              "(use unrank_update: all, or another method)")
        check_model_settings(self.plan, self.s, self.given, self.name, adapter, task.model_name, self.settings)
        device = adapter.device
        stages: dict[str, float] = {}
        info: dict = {"steps": p.describe()}
        t0 = time.perf_counter()
        feat = task.train_ds.inter_feat
        # the train columns on the device, grouped by user and by item: paid once per loaded
        # data set (a request reads its users' and items' rows from it, not O(N) masks)
        index = interaction_index(feat[task.train_ds.uid_field], feat[task.train_ds.iid_field], device,
                                  adapter.n_users, adapter.n_items)
        users, items = index.users, index.items
        target = torch.as_tensor(task.request_index, device=device, dtype=torch.long)
        keep = torch.ones(users.numel(), dtype=torch.bool, device=device)
        keep[target] = False
        req_users = torch.unique(users[target])
        row_of = torch.full((adapter.n_users,), -1, dtype=torch.long, device=device)
        row_of[req_users] = torch.arange(req_users.numel(), device=device)

        calib = None
        if p.step == "calibrated":  # starting values: the original model, before anything changes
            vfeat = task.valid_ds.inter_feat
            valid = interaction_index(vfeat[task.valid_ds.uid_field], vfeat[task.valid_ds.iid_field], device,
                                      adapter.n_users, adapter.n_items)
            watch = adapter.moves_other_users or p.params in ("all", "khop_rows")
            calib = StepCalibration(s, adapter, users, items, keep, req_users, users[target], items[target],
                                    valid.users, valid.items, watch, task.seed, show_progress=task.show_progress,
                                    train_index=index, valid_index=valid)

        # Retained graph first: a graph model is served (and saved) without D_t's edges.
        if adapter.is_graph and not adapter.remove_edges(users[target], items[target], users.numel()):
            adapter.set_graph(users[keep], items[keep])

        n_neg = int(s.get("refit_negatives") or 1) if p.step == "newton" else 1
        gen = torch.Generator(device="cpu").manual_seed(int(task.seed))
        # drawn only for a loss that reads negatives (the same draws as before where it does)
        neg = lambda: torch.randint(1, adapter.n_items, (users.numel(), n_neg), generator=gen).to(device)  # noqa: E731
        obj = Objective(adapter, users, items, neg, p.loss, int(task.train_batch_size))
        if "refit_negatives" in self.given and p.step == "newton" and not (obj.spec.pairwise or obj.spec.negatives):
            raise UnrankError(f"unrank_refit_negatives={s['refit_negatives']} has no effect in {self.name} on "
                              f"{task.model_name}: its training loss samples no negatives; unset it")
        info["loss"] = obj.spec.note

        # scope ------------------------------------------------------------------------------
        scope_index, hops = self._scope(p, s, adapter, users, items, target, keep, req_users, index)
        stages["scope_s"] = time.perf_counter() - t0
        info.update(scope_size=int(scope_index.numel()), train_size=int(users.numel()))
        if hops is not None:
            info["hops"] = hops

        # weights ----------------------------------------------------------------------------
        t0 = time.perf_counter()
        weights = None
        if p.weights:
            user_e = item_e = None
            if "semantic" in p.weights:
                user_e, item_e = adapter.final_embeddings()
            weights = influence_weights(users, items, target, scope_index, user_e, item_e,
                                        "structural" in p.weights, "semantic" in p.weights)
            info["weight_mean"] = float(weights.mean())
        stages["weights_s"] = time.perf_counter() - t0

        # rows of the gradient and of the curvature ------------------------------------------
        in_t = ~keep[scope_index]
        if p.rows == "retained":
            g_index, g_w, g_sign = scope_index, None, -1.0
        elif p.rows == "request":
            g_index, g_w, g_sign = target, None, 1.0
        else:  # request + weighted context (the paper)
            ctx_w = torch.ones(scope_index.numel(), device=device) if weights is None else weights.to(torch.float32)
            g_index, g_w, g_sign = scope_index, torch.where(in_t, torch.ones_like(ctx_w), ctx_w), 1.0
        h_index = scope_index
        h_w = weights.to(torch.float32) if (weights is not None and p.weights_at == "curvature") else None
        gram = True  # the curvature's loss keeps WMF's all-entries term (it is part of every user's loss)
        if p.params == "blocks":
            mine_g = row_of[users[g_index]] >= 0
            g_index = g_index[mine_g]
            g_w = None if g_w is None else g_w[mine_g]
            mine_h = row_of[users[h_index]] >= 0
            h_index = h_index[mine_h]
            h_w = None if h_w is None else h_w[mine_h]
        info["gradient_rows"] = int(g_index.numel())
        info["curvature_rows"] = int(h_index.numel())

        # solve and step ---------------------------------------------------------------------
        t0 = time.perf_counter()
        if p.params == "blocks":
            self._blocks(p, s, adapter, obj, g_index, g_w, g_sign, h_index, h_w, gram, req_users, row_of,
                         calib, info)
        else:
            self._parameters(p, s, adapter, obj, users, items, target, keep, scope_index, g_index, g_w, h_index,
                             h_w, gram, req_users, calib, info)
        adapter.invalidate()
        stages["solve_s"] = time.perf_counter() - t0
        return UnlearnResult(task.model, stages=stages, info=info)

    # ---- scope ---------------------------------------------------------------------------------
    def _scope(self, p, s, adapter, users, items, target, keep, req_users, index=None):
        device = users.device
        if p.scope == "all":
            return torch.arange(users.numel(), device=device), None
        if p.scope == "retained":
            return keep.nonzero().squeeze(1), None
        if p.scope == "collaborative":
            index = keep.nonzero().squeeze(1)
            group = collaborative_users(users[index], items[index], adapter.n_users, adapter.n_items,
                                        req_users, int(s["neighbors"]))
            n = int(s["neighbors"])
            if "neighbors" in self.given and adapter.is_graph and n > 0 and bool((group == collaborative_users(
                    users[index], items[index], adapter.n_users, adapter.n_items, req_users, n - 1)).all()):
                raise UnrankError(f"unrank_scif_neighbors={n} adds no user in {self.name}: {n - 1} hop(s) already "
                                  f"reach all {int(group.sum())} users connected to the request; lower it or unset it")
            if not adapter.is_graph:  # a neighbour's loss has no curvature in another user's rows
                group = torch.zeros_like(group)
                group[req_users] = True
            return index[group[users[index]]], None
        hops = s.get("hops")
        if hops is None:  # the paper's default; the user-block update reads the users' own rows
            hops = 1 if (p.params == "blocks" or adapter.is_graph) else 0
        if index is not None and index.users is users and index.items is items:  # rows it reaches, not O(N)
            scope = influence_scope_indexed(index, target, int(hops), s.get("scope_cap"))
        else:
            scope = influence_scope(users, items, target, int(hops), s.get("scope_cap"))
        if "scope_cap" in self.given and not scope.truncated:
            raise UnrankError(f"unrank_scope_cap={s['scope_cap']} removes nothing in {self.name}: the {int(hops)}-hop "
                              f"scope ({int(scope.scope_index.numel())} rows, the request's own always kept) fits "
                              "within it; lower it or unset it")
        return scope.scope_index, int(hops)

    # ---- user blocks ---------------------------------------------------------------------------
    def _blocks(self, p, s, adapter, obj, g_index, g_w, g_sign, h_index, h_w, gram, req_users, row_of, calib, info):
        U, damping = req_users.numel(), float(s["damping"])
        if p.step == "newton":
            return self._newton(s, adapter, obj, h_index, req_users, row_of, info)
        g, _ = obj.blocks(g_index, g_w, False, row_of, U, hessian=False)
        g = g_sign * g
        if p.curvature == "identity":
            delta = g / damping
            info["solve"] = {"method": "identity", "iters": 0, "rel_residual": 0.0, "converged": True}
        else:
            _, H = obj.blocks(h_index, h_w, gram, row_of, U)
            delta = batched_block_solve(H, g, damping)
            eye = torch.eye(H.shape[1], dtype=H.dtype, device=H.device)
            res = ((H + damping * eye) @ delta.unsqueeze(-1)).squeeze(-1) - g
            rel = float(res.norm() / g.norm().clamp(min=1e-30))
            info["solve"] = {"method": "block", "iters": 1, "rel_residual": rel, "converged": rel < BLOCK_RESIDUAL_TOL}
            if math.isfinite(rel) and not rel < BLOCK_RESIDUAL_TOL:  # nothing applied yet; NaN: refused below
                raise UnrankError(
                    f"{self.name}: the user-block solve's relative residual {rel:.3g} is above "
                    f"{BLOCK_RESIDUAL_TOL:g} (ill-conditioned blocks); the step is refused: raise unrank_damping")
        info["grad_norm"] = float(g.norm())
        scale = torch.ones(U, device=delta.device, dtype=delta.dtype)
        if calib is not None:
            scale = calib.per_user(delta, info).to(delta.dtype)
        adapter.apply_user_delta(req_users, scale[:, None] * delta)
        info["step_norm"] = float((scale[:, None] * delta).norm())

    @torch.no_grad()
    def _newton(self, s, adapter, obj, index, req_users, row_of, info):
        """Re-fit the request users' blocks to their retained training loss: Gauss-Newton steps
        with a per-user backtracking line search until each user's gradient has fallen below
        ``refit_tol`` of its starting norm (one exact step for WMF: its loss is quadratic in p_u)."""
        U, damping = req_users.numel(), float(s["damping"])
        tol, max_iter = float(s["refit_tol"]), int(s["refit_steps"])
        g0 = None
        iters = 0
        bar = progress(total=max_iter, desc=f"{self.name} Newton", show_progress=self.show_progress)
        for iters in range(1, max_iter + 1):
            bar.update()
            grad, H = obj.blocks(index, None, True, row_of, U)
            norms = grad.norm(dim=1)
            if g0 is None:
                g0 = norms.clamp(min=1e-30)
            if bool((norms <= tol * g0).all()):
                iters -= 1
                break
            delta = batched_block_solve(H, -grad, damping)
            before = obj.per_user_loss(index, True, row_of, U)
            slope = (grad * delta).sum(1)  # < 0: a descent direction
            t = torch.ones(U, dtype=delta.dtype, device=delta.device)
            applied = torch.zeros_like(t)
            for _ in range(30):
                adapter.apply_user_delta(req_users, (t - applied)[:, None] * delta)
                applied = t.clone()
                after = obj.per_user_loss(index, True, row_of, U)
                bad = after > before + 1e-4 * t * slope + 1e-12 * before.abs()
                if not bool(bad.any()):
                    break
                t = torch.where(bad, t / 2, t)
            else:
                adapter.apply_user_delta(req_users, (-applied * bad)[:, None] * delta)  # no decrease found
        bar.close()
        grad, _ = obj.blocks(index, None, True, row_of, U, hessian=False)
        ratio = float((grad.norm(dim=1) / g0).max()) if g0 is not None else 0.0
        info["solve"] = {"method": "newton", "iters": iters, "rel_residual": ratio, "converged": ratio <= tol}

    # ---- full parameters (or masked rows) -----------------------------------------------------
    def _parameters(self, p, s, adapter, obj, users, items, target, keep, scope_index, g_index, g_w, h_index, h_w,
                    gram, req_users, calib, info):
        all_params = adapter.params()
        params, masks = all_params, None
        if p.params in ("user_rows", "khop_rows"):
            sub = self._rows_subspace(p, s, adapter, all_params, users, items, target, keep, req_users, info)
            if sub is not None:
                params, masks = sub
                if p.params == "khop_rows" and not adapter.is_graph:  # other rows: no curvature there (exact)
                    user_rows, item_rows = self._rows
                    touch = user_rows[users[h_index]] | item_rows[items[h_index]]
                    h_index = h_index[touch]
                    h_w = None if h_w is None else h_w[touch]
        info["curvature_rows"] = int(h_index.numel())
        mask = None if masks is None else flat(masks)

        def restrict(v):
            return v if mask is None else torch.where(mask, v, torch.zeros_like(v))

        if p.graph == "scope":
            graph = adapter.propagate_over(users[scope_index], items[scope_index])
        elif p.graph == "original":
            graph = adapter.propagate_over(users, items)
        else:
            graph = adapter.propagate_over(users[keep], items[keep])
        damping = float(s["damping"])
        with graph:
            grads = torch.autograd.grad(obj.loss(g_index, g_w), params, allow_unused=True)
            g = flat([torch.zeros_like(q) if gr is None else gr for q, gr in zip(params, grads)]).detach()
            if p.spillover and adapter.is_graph:
                extra = self._spillover(obj, adapter, params, users, items, keep)
                info["graph_term_norm"] = float(restrict(extra).norm())
                g = g + extra
            g = restrict(g)
            info["grad_norm"] = float(g.norm())
            if p.curvature == "identity":
                x = g / damping
                info["solve"] = {"method": "identity", "iters": 0, "rel_residual": 0.0, "converged": True}
            else:
                op = (obj.hessian if p.curvature == "hessian" else obj.gauss_newton)(h_index, h_w, gram, params)
                fixed = p.solve == "cg_fixed"
                steps = int(s.get("cg_steps") or (30 if fixed else 500))
                tol = 1e-10 if fixed else float(s.get("cg_tol") or 1e-4)
                with progress(total=steps, desc=f"{self.name} CG", show_progress=self.show_progress) as bar:
                    res = conjugate_gradient(lambda v: restrict(op(restrict(v))), g, damping, steps, tol,
                                             stop_on_negative_curvature=not fixed,
                                             callback=lambda k, rel: (bar.update(), bar.set_postfix_str(
                                                 f"residual {rel:.2e}", refresh=False)))
                x = restrict(res.x)
                rel = res.residual_norms[-1] / max(res.residual_norms[0], 1e-30)
                info["solve"] = {"method": p.solve, "iters": res.iterations, "rel_residual": rel,
                                 "converged": res.converged, "stop": res.stop_reason}
                logger.info("[%s] CG: %d iterations, %s, relative residual %.3g", self.name, res.iterations,
                            res.stop_reason, rel)
                if not fixed and res.stop_reason in ("negative_curvature", "non_finite"):
                    hint = ("raise unrank_damping" if p.curvature == "gauss_newton" else
                            "raise unrank_damping or use unrank_baseline_curvature: gauss_newton")
                    raise UnrankError(
                        f"{self.name}: the conjugate-gradient solve failed ({res.stop_reason}, relative residual "
                        f"{rel:.3g}); the step is refused: {hint}")
                if not fixed and not res.converged:  # "to convergence": a solve cut at the cap is refused
                    steps_key = self.settings.get("cg_steps", "unrank_cg_steps")
                    raise UnrankError(
                        f"{self.name}: conjugate gradient stopped at its cap of {steps} iterations with relative "
                        f"residual {rel:.3g} > {tol:g}; the step is refused: raise {steps_key} or unrank_damping")
                if fixed and not res.converged:  # the paper's T steps: kept, but flagged
                    info["solve"]["unconverged"] = True
                    logger.warning("[%s] CG (fixed %d steps) stopped at relative residual %.3g, above %g: the "
                                   "step is applied as the paper does (flagged in info.solve.unconverged)",
                                   self.name, steps, rel, tol)
                if fixed and rel >= 1.0:
                    info["solve"]["diverged"] = True
        delta = unflat(x, params)
        info["step_norm"] = float(x.norm())
        if calib is not None and p.params == "user_rows" and adapter.supports_user_blocks:
            # The update lives in the request users' own rows: calibrate it per user, as on blocks.
            where = {id(q): k for k, q in enumerate(params)}
            block = torch.cat([delta[where[id(t)]][req_users] for t in adapter.user_tables()], -1)
            scale = calib.per_user(block, info).to(block.dtype)
            adapter.apply_user_delta(req_users, scale[:, None] * block)
            return
        scale = 1.0
        if calib is not None:
            saved = [q.detach().clone() for q in params]

            def apply(value):
                with torch.no_grad():
                    for q, q0, dq in zip(params, saved, delta):
                        q.copy_(q0 + value * dq)
                adapter.invalidate()

            scale = calib.global_scale(apply, info)
        with torch.no_grad():
            for q, dq in zip(params, delta):
                q.add_(scale * dq.to(q.dtype))
        adapter.invalidate()

    def _rows_subspace(self, p, s, adapter, params, users, items, target, keep, req_users, info):
        a = adapter
        if p.params == "user_rows":
            user_rows = torch.zeros(a.n_users, dtype=torch.bool, device=users.device)
            user_rows[req_users] = True
            item_rows = None
        else:
            ku, ki = users[keep], items[keep]
            tu, ti = users[target], items[target]
            su, si = khop_importance(ku, ki, a.n_users, a.n_items, tu, ti, int(s["ifru_hops"]))
            score = torch.cat((su, si))
            reached = score > 0
            n_reached = int(reached.sum())
            n_keep = min(n_reached, math.ceil(float(s["ifru_keep"]) * n_reached))
            chosen = torch.zeros_like(reached)
            if n_keep > 0:
                chosen[torch.topk(score, n_keep).indices] = True
            chosen &= reached
            chosen[tu] = True  # the request's own nodes always move
            chosen[ti + a.n_users] = True
            info["khop_nodes"] = n_reached
            user_rows, item_rows = chosen[: a.n_users], chosen[a.n_users:]
        tables = a.row_tables(params)
        chosen_p, masks = [], []
        for k, kind in tables:
            rows = user_rows if kind == "user" else item_rows
            if rows is None or not bool(rows.any()):
                continue
            chosen_p.append(params[k])
            masks.append(rows.view(-1, *([1] * (params[k].dim() - 1))).expand_as(params[k]))
        info.update(rows_users=int(user_rows.sum()), rows_items=0 if item_rows is None else int(item_rows.sum()))
        if not chosen_p:
            logger.warning("[%s] %s has no user/item embedding tables to restrict the update to: updating every "
                           "parameter", self.name, type(a.model).__name__)
            info["fallback"] = "all_parameters"
            return None
        self._rows = (user_rows, item_rows if item_rows is not None else torch.zeros(a.n_items, dtype=torch.bool,
                                                                                    device=users.device))
        return chosen_p, masks

    def _spillover(self, obj, adapter, params, users, items, keep):
        """IFRU's graph-change term ``grad L_r(G) - grad L_r(G \\ D_t)`` (called on the original graph)."""
        index = keep.nonzero().squeeze(1)

        def grad_of():
            grads = torch.autograd.grad(obj.loss(index), params, allow_unused=True)
            return flat([torch.zeros_like(q) if gr is None else gr for q, gr in zip(params, grads)]).detach()

        on_original = grad_of()
        with adapter.propagate_over(users[keep], items[keep]):
            on_retained = grad_of()
        return on_original - on_retained


def declare(name: str, steps: Steps, settings: dict, fixed: dict | None = None,
            doc: str = "") -> type[InfluencePipeline]:
    """A registered influence method: its steps, the ``unrank_*`` keys it reads (their defaults
    are the YAML's) and the keywords it pins."""
    steps.check()
    return type(f"Influence_{name.replace('+', '_')}", (InfluencePipeline,), {
        "name": name, "steps": steps, "settings": dict(settings),
        "fixed": dict(fixed or {}), "__doc__": doc or f"{name}: {steps.describe()}",
    })
