"""The ``unrank_*`` settings of an influence method: which steps they select, and the checks
that refuse a value out of range or a setting the steps make inert (one line each,
:class:`~recbole_unrank.errors.UnrankError`), never ignored.

:class:`~recbole_unrank.methods.pipeline.InfluencePipeline` calls them in this order:
:func:`check_pins` (a variant's pinned keywords), :func:`steps_from_settings` (then
:meth:`Steps.check`), :func:`check_settings`; and :func:`check_model_settings` once the model
is known.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from recbole_unrank.config import same_value
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods.steps import Steps

__all__ = ["CALIBRATION_SETTINGS", "L2UNRANK_KEYS", "check_grid", "check_pins", "steps_from_settings",
           "check_settings", "check_model_settings"]

#: The step calibration's keywords and their ``unrank_*`` keys (read by every calibrated method).
CALIBRATION_SETTINGS = {
    "calib_target": "unrank_calib_target",
    "step_floor": "unrank_step_floor",
    "view_k": "unrank_view_k",
    "view_share": "unrank_view_share",
    "utility_guard": "unrank_utility_guard",
    "step_grid": "unrank_step_grid",
    "guard_sample": "unrank_guard_sample",
    "step_max_move": "unrank_step_max_move",
}

#: the L2UnRank family's keywords (a variant's pinned value points the user to l2unrank)
L2UNRANK_KEYS = ("hops", "scope_cap", "update", "curvature", "damping", "cg_steps", "cg_tol", "loss", "use_scope",
                 "use_structural", "use_semantic", "use_weights", "use_context", "weights_at", "calibrate",
                 *CALIBRATION_SETTINGS)


def check_grid(grid: Any) -> None:
    """``unrank_step_grid`` = [low, high, count]: ``count`` log-spaced scales from ``low`` to
    ``high`` (``np.logspace``), so 0 < low < high and a whole count >= 2; else one line."""
    ok = isinstance(grid, (list, tuple)) and len(grid) == 3
    if ok:
        lo, hi, n = grid
        num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi, n))
        ok = (num and math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi
              and float(n) == int(n) and int(n) >= 2)
    if not ok:
        raise UnrankError(f"unrank_step_grid={grid} is not a step grid: give [low, high, count] with "
                          "0 < low < high and a whole count >= 2 (default [1e-4, 1000.0, 57])")


def check_pins(name: str, fixed: dict, given: dict, settings: dict) -> None:
    """A keyword that method ``name`` pins (``fixed``: what the variant is), given with another
    value, is refused (one line), pointing to the method that reads it."""
    for k, pinned in fixed.items():
        if k in given and not same_value(given[k], pinned):
            raise UnrankError(
                f"{settings.get(k, k)}={given[k]} cannot change {name}, which pins it to {pinned}: "
                f"unset it, or use {'l2unrank' if k in L2UNRANK_KEYS else 'another method'}, which reads it")


def steps_from_settings(steps: Steps, s: dict) -> Steps:
    """``steps`` as the keywords that select steps change them (the L2UnRank family's
    ``unrank_update``, ``unrank_use_*``...); not yet checked (:meth:`Steps.check`)."""
    ch: dict = {}
    if "update" in s:
        if s["update"] not in ("users", "all"):
            raise UnrankError(f"unrank_update={s['update']!r}: use users or all")
        ch.update(params="blocks", solve="block") if s["update"] == "users" else ch.update(
            params="all", solve=steps.solve if steps.solve != "block" else "cg")
    if "curvature" in s:
        ch["curvature"] = s["curvature"]
    if "loss" in s:
        ch["loss"] = s["loss"]
    if s.get("use_scope") is False:
        ch["scope"] = "all"
    if "use_context" in s:
        ch["rows"] = "request+context" if s["use_context"] else "request"
    if "use_structural" in s or "use_semantic" in s or "use_weights" in s:
        w = tuple(n for n, key in (("structural", "use_structural"), ("semantic", "use_semantic"))
                  if s.get(key, True))
        ch["weights"] = w if s.get("use_weights", True) else ()
    if s.get("weights_at") is not None:
        ch["weights_at"] = s["weights_at"]
    if "hessian_data" in s:
        if s["hessian_data"] not in ("retained", "train"):
            raise UnrankError(f"unrank_if_hessian_data={s['hessian_data']!r}: use retained or train")
        ch["scope"] = "retained" if s["hessian_data"] == "retained" else "all"
    if "calibrate" in s:
        ch["step"] = "calibrated" if s["calibrate"] else "one"
    return dataclasses.replace(steps, **ch)


def check_settings(plan: Steps, s: dict, given: set, settings: dict, name: str) -> dict:
    """The settings ``s`` (keyword -> value) of method ``name`` whose steps are ``plan``: a value
    out of range, or one the user ``given`` that the steps make inert, is refused (one line);
    returns ``s``. ``settings`` maps a keyword to its ``unrank_*`` key (for the messages)."""
    p = plan

    def inert(key, why):
        if key in given and s.get(key) is not None:
            raise UnrankError(f"{settings.get(key, key)}={s[key]} has no effect in {name}: {why}; unset it")

    if settings.get("curvature") == "unrank_baseline_curvature" and s.get("curvature") not in (
            "hessian", "gauss_newton"):
        raise UnrankError(f"unrank_baseline_curvature={s.get('curvature')!r}: use gauss_newton or hessian")
    if "damping" in s and not float(s["damping"]) > 0:
        raise UnrankError(f"unrank_damping={s['damping']} must be > 0 (e.g. 1e-2)")
    if p.solve == "block":
        inert("cg_steps", "exact block solves (unrank_update: users) run no conjugate gradient")
        inert("cg_tol", "exact block solves (unrank_update: users) run no conjugate gradient")
    if p.curvature == "identity":
        inert("cg_steps", "no curvature (identity) means no linear solve")
        inert("cg_tol", "no curvature (identity) means no linear solve")
    if p.solve == "cg_fixed":
        inert("cg_tol", "the paper's solver runs its T steps")
    if p.scope != "hops":
        inert("hops", "there is no p-hop scope (unrank_use_scope: False)")
        inert("scope_cap", "there is no p-hop scope (unrank_use_scope: False)")
    if p.scope == "hops" and s.get("hops") is not None:
        if int(s["hops"]) < 0:
            raise UnrankError(f"unrank_hops={s['hops']} is negative: use 0 (the request only) or more")
        if int(s["hops"]) == 0 and p.weights and p.params == "blocks":
            raise UnrankError(
                f"unrank_hops=0 leaves the influence weights nothing to act on in {name}: the scope is "
                "the request alone, whose rows weigh 1; use 1 or more, or unrank_use_weights: False")
        if p.params == "blocks" and not p.weights and int(s["hops"]) > 1:
            raise UnrankError(
                f"unrank_hops={s['hops']} acts like 1 in {name}: without influence weights the user-block "
                "update reads only the request users' own rows, which 1 hop already holds; use 0 or 1")
    if s.get("scope_cap") is not None and int(s["scope_cap"]) < 0:
        raise UnrankError(f"unrank_scope_cap={s['scope_cap']} must be >= 0")
    if "cg_steps" in s and s["cg_steps"] is not None and int(s["cg_steps"]) < 1:
        raise UnrankError(f"{settings.get('cg_steps')}={s['cg_steps']} must be at least 1")
    if "cg_tol" in s and s["cg_tol"] is not None and not float(s["cg_tol"]) > 0:
        raise UnrankError(f"{settings.get('cg_tol')}={s['cg_tol']} must be > 0")
    if p.step != "calibrated":
        for k in CALIBRATION_SETTINGS:
            inert(k, "its step is not calibrated (a calibrated method: l2unrank, <baseline>+calib)")
    if not p.weights:
        for k in ("use_structural", "use_semantic", "weights_at"):
            inert(k, "it uses no influence weights (unrank_use_weights: False)")
    if p.curvature == "identity" and p.rows != "request+context":
        # whatever the scope (unrank_use_scope: False makes it all of D): it enters nothing here
        for k in ("hops", "scope_cap", "use_scope", "use_weights", "use_structural", "use_semantic",
                  "weights_at"):
            inert(k, "without curvature (identity) and without context rows the step is the request's "
                     "own gradient, which no scope or weight enters")
    if p.params == "blocks" and not p.weights and p.rows == "request":
        inert("use_scope", "without influence weights the user-block update reads only the request users' "
                           "own rows, which the 1-hop scope already holds")
    if p.step == "calibrated":
        check_grid(s["step_grid"])
        floor = float(s["step_floor"])
        if not math.isfinite(floor):
            raise UnrankError(f"unrank_step_floor={s['step_floor']} must be a finite number >= 0 (0: no floor)")
        if s["calib_target"] not in ("valid_rank", "view"):
            raise UnrankError(f"unrank_calib_target={s['calib_target']!r}: use valid_rank or view")
        if not 0.0 <= float(s["view_share"]) < 1.0:
            raise UnrankError(f"unrank_view_share={s['view_share']} must lie in [0, 1)")
        if not 0.0 <= float(s["utility_guard"]) <= 1.0:
            raise UnrankError(f"unrank_utility_guard={s['utility_guard']} must lie in [0, 1]")
        if int(s["view_k"]) < 1:
            raise UnrankError(f"unrank_view_k={s['view_k']} must be at least 1")
        if float(s["step_floor"]) < 0:
            raise UnrankError(f"unrank_step_floor={s['step_floor']} must be >= 0 (0: no floor)")
        if int(s["guard_sample"]) < 1:
            raise UnrankError(f"unrank_guard_sample={s['guard_sample']} must be at least 1")
        move = s.get("step_max_move")
        if move is not None and (isinstance(move, bool) or not isinstance(move, (int, float))
                                 or not math.isfinite(float(move)) or float(move) < 0):
            raise UnrankError(f"unrank_step_max_move={move} must be a finite number >= 0 (0: no bound)")
    if s.get("ifru_keep") is not None and not 0.0 < float(s["ifru_keep"]) <= 1.0:
        raise UnrankError(f"unrank_ifru_keep={s['ifru_keep']} must lie in (0, 1] (1 keeps every node within the hops)")
    if s.get("ifru_hops") is not None and int(s["ifru_hops"]) < 0:
        raise UnrankError(f"unrank_ifru_hops={s['ifru_hops']} is negative: use 0 (the request's own users and items) or more")
    if s.get("neighbors") is not None and int(s["neighbors"]) < 0:
        raise UnrankError(f"unrank_scif_neighbors={s['neighbors']} is negative: use 0 (the request users only) or more")
    if s.get("refit_negatives") is not None and int(s["refit_negatives"]) < 1:
        raise UnrankError(f"unrank_refit_negatives={s['refit_negatives']} must be at least 1")
    return s


def check_model_settings(plan: Steps, s: dict, given: set, name: str, adapter, model_name: str,
                         settings: dict | None = None) -> None:
    """Settings that only this model (``adapter``, called ``model_name``) makes inert (they act
    on others): refused, one line."""
    p = plan
    if "neighbors" in given and p.scope == "collaborative" and not adapter.is_graph:
        raise UnrankError(f"unrank_scif_neighbors={s['neighbors']} has no effect in {name} on "
                          f"{model_name}: a neighbour's loss has no curvature in another user's rows of a "
                          "model without a graph; unset it")
    if ("curvature" in given and p.curvature == "hessian" and p.params == "user_rows"
            and adapter.user_rows_piecewise_linear):
        raise UnrankError(f"{(settings or {}).get('curvature', 'unrank_baseline_curvature')}=hessian has no effect in {name} on {model_name}: "
                          f"its update moves only the request users' own rows, in which {model_name}'s scores "
                          "are (piecewise) linear, so the exact Hessian there is the Gauss-Newton matrix; unset it")
    hops = s.get("hops")
    if hops is None:  # the default the scope resolves (1 hop for blocks or graph models, else 0)
        hops = 1 if (p.params == "blocks" or adapter.is_graph) else 0
    if "use_context" in given and p.rows == "request+context" and p.scope == "hops" and int(hops) == 0:
        raise UnrankError(f"unrank_use_context={s['use_context']} has no effect in {name} on "
                          f"{model_name}: the 0-hop scope is the request alone, so it has no context rows; "
                          "set unrank_hops >= 1 or unset it")
    watch = adapter.moves_other_users or p.params in ("all", "khop_rows")
    per_user = p.params == "blocks" or (p.params == "user_rows" and adapter.supports_user_blocks)
    if "step_max_move" in given and p.step == "calibrated" and not per_user:
        raise UnrankError(f"unrank_step_max_move={s['step_max_move']} has no effect in {name} on "
                          f"{model_name}: its step is scaled as a whole, not per request user's block, "
                          "so no block's move is bounded; unset it")
    if "guard_sample" in given and p.step == "calibrated" and not watch:
        raise UnrankError(f"unrank_guard_sample={s['guard_sample']} has no effect in {name} on "
                          f"{model_name}: its step moves only the request users, so no other user is "
                          "sampled for the guard; unset it")
