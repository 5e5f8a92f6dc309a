"""Every setting acts or is refused (issue 20, DESIGN.md 10.3).

For every ``unrank_*`` key of ``properties/unrank.yaml`` and every method of
``recbole_unrank.methods.METHODS``, on the tiny dataset: a run of that one method with the key
set to a valid value other than its default either changes the update (the model's parameters
after unlearning differ from those with every default) or is refused, before or during the
update, with one line (``UnrankError``) that names the key. Keys that are not method settings
are classified below, each with the reason.

One original per model is trained once; every pair goes through the real settings path
(``build_config`` -> ``pipeline.check_unread_settings`` -> ``pipeline.method_settings`` -> the
method) and runs on a copy of that original.
"""

from __future__ import annotations

import pytest
import torch
from conftest import base_config_dict, prepared_run

from recbole_unrank import pipeline
from recbole_unrank.config import build_config, unrank_defaults
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import METHODS

# Keys that configure something other than one method's update, and why.
NOT_METHOD_SETTINGS = {
    "unrank_output_dir": "where the run folder is written",
    "unrank_method": "chooses the method (the loop below sets it)",
    "unrank_methods": "chooses the methods",
    "unrank_reference_models": "adds RecBole models trained on the retained data, beside the methods",
    "unrank_trust_checkpoint": "how --checkpoint is read",
    "unrank_request": "the forget request (its data, not how it is forgotten)",
    "unrank_user_ratio": "the forget request",
    "unrank_inter_ratio": "the forget request",
    "unrank_item_ratio": "the forget request",
    "unrank_request_users": "the forget request",
    "unrank_request_seed": "the forget request",
    "unrank_eval_seeds": "request seeds the tuner refuses",
    "unrank_request_file": "the forget request",
    "unrank_topk": "what is measured",
    "unrank_metrics": "what is measured",
    "unrank_audit_shadows": "what is measured: the LiRA audit (tests/test_lira.py)",
    "unrank_audit_shadow_epochs": "what is measured: the LiRA audit (tests/test_lira.py)",
    "unrank_stream_guard": "the stream's budget (recbole_unrank.stream), not one update",
    "unrank_stream_policy": "the stream's budget policy",
    "unrank_consolidate_sweeps": "the stream's consolidate policy (tests/test_stream_consolidate.py)",
    "unrank_monitor_share": "the validation split's division (tests/test_monitor_split.py)",
    "unrank_monitor_seed": "the validation split's division (tests/test_monitor_split.py)",
    "unrank_tune_method": "the tuner",
    "unrank_tune_objective": "the tuner",
    "unrank_tune_utility_floor": "the tuner",
    "unrank_tune_weight": "the tuner",
}

# A valid value other than the default for every method setting.
VALUES = {
    "unrank_twosided_hops": 1,
    "unrank_twosided_sweeps": 2,
    # 0.9, not 0.1: on tiny (2 epochs) the sweeps reach neither 0.1 nor the default 1e-3 of the
    # starting residual within the 8-sweep cap (WMF's residual rises after the first sweep, then
    # falls slowly), so both run the cap; 0.9 stops them at sweep 3 there
    "unrank_twosided_tol": 0.9,
    "unrank_twosided_form": "tilt",
    "unrank_twosided_sides": "both",
    "unrank_twosided_damping": 1.0,
    "unrank_reseed_offset": 2,
    "unrank_released_cg_steps": 3,
    "unrank_released_repair_epochs": 1,
    "unrank_released_repair_lr_scale": 0.5,
    "unrank_hops": 2,
    "unrank_scope_cap": 5,
    "unrank_update": "all",
    "unrank_curvature": "identity",
    "unrank_damping": 1.0,
    "unrank_cg_steps": 3,
    "unrank_cg_tol": 0.5,
    "unrank_loss": "surrogate",
    "unrank_use_scope": False,
    "unrank_use_structural": False,
    "unrank_use_semantic": False,
    "unrank_use_weights": False,
    "unrank_use_context": True,
    "unrank_weights_at": "gradient",
    "unrank_calibrate": False,
    "unrank_calib_target": "view",
    "unrank_step_floor": 0.0,
    "unrank_view_k": 50,
    "unrank_view_share": 0.5,
    "unrank_utility_guard": 0.0,
    "unrank_guard_sample": 2,
    "unrank_step_grid": [0.01, 100.0, 9],
    "unrank_step_max_move": 0.001,
    "unrank_finetune_epochs": 1,
    "unrank_finetune_lr": 1e-2,
    "unrank_neggrad_epochs": 2,
    "unrank_neggrad_alpha": 0.5,
    "unrank_neggrad_lr": 1e-2,
    "unrank_neggrad_clip": 0.01,
    "unrank_shards": 2,
    "unrank_sisa_aggregate": "mean",
    "unrank_receraser_partition": "interaction",
    "unrank_receraser_iters": 2,
    "unrank_receraser_agg_epochs": 3,
    "unrank_receraser_agg_lr": 0.1,
    "unrank_baseline_loss": "surrogate",
    "unrank_baseline_curvature": "hessian",
    "unrank_baseline_cg_steps": 3,
    "unrank_baseline_cg_tol": 0.5,
    "unrank_if_hessian_data": "train",
    "unrank_ifru_hops": 2,
    "unrank_ifru_keep": 0.3,
    "unrank_scif_neighbors": 2,
    "unrank_refit_steps": 1,
    "unrank_refit_tol": 0.5,
    "unrank_refit_negatives": 1,
}

BASE = {"epochs": 2}

# Other settings under which a key is also compared (both runs carry them; for the keys of
# REF_ONLY, the run without the key only), where the defaults leave the key nothing to do on this
# tiny request although it acts. A key passes when it changes the update under the defaults or
# under one of its contexts. Each context says why the key is idle without it.
#
# The step search (_SEARCH):
# - on tiny the influence step itself (the floor, scale 1) already meets every user's target, so
#   the step search stops at the floor and what shapes the search (target, grid, calibrating at
#   all) is seen once the floor is lowered to 0;
# - view_k and view_share shape the view target (with valid_rank, only users without validation
#   items fall back to it; on tiny every request user has some), and with one scale for the
#   whole update (if+calib) a strict threshold (top 50) is what moves the search off 0;
# - where the guard caps every step the search could choose (one scale for the whole update on
#   NeuMF, if+calib / ifru+calib: cap 7.5e-4 under every target, floor and view_k; the per-user
#   search on LightGCN), what shapes the search is seen without the guard: each of these
#   contexts is also tried with unrank_utility_guard 0.
_SEARCH = {
    "unrank_calibrate": [{"unrank_step_floor": 0.0}],
    "unrank_calib_target": [{"unrank_step_floor": 0.0}, {"unrank_step_floor": 0.0, "unrank_view_k": 50}],
    "unrank_view_k": [{"unrank_step_floor": 0.0, "unrank_calib_target": "view"}],
    **{k: [{"unrank_step_floor": 0.0, "unrank_calib_target": "view", "unrank_view_k": 50}]
       for k in ("unrank_view_share", "unrank_step_grid")},
    # the bound acts where the search moves a block beyond it: with the floor at 0 (a floor
    # above the bound would win over it) and a bound of 0.001 x the block's norm
    "unrank_step_max_move": [{"unrank_step_floor": 0.0}],
    "unrank_step_floor": [{}],
    # NeuMF (no L2 term: its blocks are anchored at the damping): at the default damping the
    # two-sided sweeps stop at the second sweep, whose residual rises (tiny: 0.20 -> 2.26 ->
    # 2.82), so neither the cap nor the tolerance is reached; at damping 100 the residual falls
    # every sweep to the cap (0.20 -> 0.11 -> ... -> 0.048), where both act
    # (the defaults form=bcd_diff, sides=users refuse tol, hops > 0 and, on WMF, sweeps > 1 with one
    # line; with form=tilt, sides=both they act as above)
    "unrank_twosided_sweeps": [{"unrank_damping": 100.0, "unrank_twosided_form": "tilt", "unrank_twosided_sides": "both"}],
    "unrank_twosided_tol": [{"unrank_damping": 100.0, "unrank_twosided_form": "tilt", "unrank_twosided_sides": "both"}],
}
# The utility guard (GUARD_CONTEXTS) binds only when the step costs utility. Under the default
# request (seed 2020) the request users' forgotten items sit in their top 10 (they are not
# masked: they are no longer history), so pushing them out raises the guarded validation NDCG,
# for l2unrank_ctx / l2unrank_nocurv / l2unrank_surrogate / scif+calib at every scale of the grid
# (measured: ratio 1.07-3.7 at scales 0.02-1000 on WMF). What makes it bind, measured with the
# guard off:
# - a step large enough to swamp the user's own vector (floor 100: l2unrank);
# - the request of seed 6, on which the same steps cost utility (WMF: ratio 0.40-0.84 at the
#   floor 1); l2unrank_view pins its floor to 0 and there meets the view target at the default
#   view_k at ratio 0.981, a hair above the guard: a grid starting at 100 and view_k 50 (which
#   the unmoved model misses) force a step of 100 (ratio 0.94);
# - the request of seed 7 for l2unrank_ctx on LightGCN (ratio 0.44 at the floor; the guard caps
#   it at 0.0018), of seed 1 for the other users' sample of l2unrank_view on LightGCN.
# A context key that defines the request (NOT_METHOD_SETTINGS) gets an original of its own, with
# that request. The sample of other users (guard_sample) acts only where the guard binds on them.
GUARD_REQUEST = {"unrank_request_seed": 6}
GUARD_CONTEXTS = [{"unrank_step_floor": 100.0}, GUARD_REQUEST,
                  {**GUARD_REQUEST, "unrank_view_k": 50, "unrank_step_grid": [100.0, 1000.0, 2]},
                  {"unrank_request_seed": 7}, {"unrank_request_seed": 1}]
CONTEXTS = {k: [*(c for c in v if c), *({**c, "unrank_utility_guard": 0.0} for c in v)] for k, v in _SEARCH.items()}
CONTEXTS.update({
    "unrank_utility_guard": GUARD_CONTEXTS,
    "unrank_guard_sample": GUARD_CONTEXTS,
    # with identity curvature the damping only rescales the step (g / lambda), which the guard's
    # cap undoes on tiny LightGCN (cap 0.0056 at lambda 1e-2, 0.56 at 1: the same step to 1e-8);
    # it acts through the floor (scale 1 = g / lambda), which holds without the guard. The loss's
    # L2 term is as small as that capped step: without the guard, 1.5e-4 in the parameters.
    "unrank_damping": [{"unrank_utility_guard": 0.0}],
    "unrank_loss": [{"unrank_utility_guard": 0.0}],
    # one batch per epoch on tiny: neggrad's 1 epoch is one Adam step, whose update (lr x sign g)
    # no uniform rescaling of g changes; the clip acts from the second step on (3 epochs: 6e-5
    # on NeuMF)
    "unrank_neggrad_clip": [{"unrank_neggrad_epochs": 3}],
    # NeuMF is not quadratic in p_u: 20 Newton steps leave the gradient at 0.70 of its start, so
    # no tol below that binds; with 50 steps tol 0.5 stops it at step 23
    "unrank_refit_tol": [{"unrank_refit_steps": 50}],
})
REF_ONLY = {"unrank_calibrate"}  # uncalibrated takes no calibration key: compare with calibrated at floor 0


def test_every_key_is_classified():
    """A new key must be added to VALUES (a method setting) or NOT_METHOD_SETTINGS (with why)."""
    keys = set(unrank_defaults())
    read = set(pipeline.method_keys())
    assert keys == set(VALUES) | set(NOT_METHOD_SETTINGS)
    assert not set(VALUES) & set(NOT_METHOD_SETTINGS)
    assert read == set(VALUES), "VALUES holds exactly the keys some method reads"
    for key, value in VALUES.items():
        assert value != unrank_defaults()[key], key


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def _changed(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return True
    return any(a[k].shape != b[k].shape or not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """``get(model, request)``: (workdir, run) with the original trained, one per model and request
    (``request``: settings of NOT_METHOD_SETTINGS that define the forget request; none: the default)."""
    cache = {}

    def get(model, request: dict | None = None):
        key = (model, tuple(sorted((request or {}).items())))
        if key not in cache:
            work = tmp_path_factory.mktemp(f"settings-{model}")
            cache[key] = (work, prepared_run(work, model, **BASE, **(request or {})))
        return cache[key]

    return get


def _split(context: dict | None) -> tuple[dict, dict]:
    """(the request's settings, the method's) of a context."""
    context = context or {}
    request = {k: v for k, v in context.items() if k in NOT_METHOD_SETTINGS}
    return request, {k: v for k, v in context.items() if k not in request}


def _outcome(originals, model: str, method: str, key: str | None, context: dict | None = None):
    """``("refused", message)`` or ``("ran", parameters)`` of ``method`` with ``key`` set."""
    request, context = _split(context)
    work, run = originals(model, request)
    extra = {"unrank_method": method, **BASE, **request, **context}
    if key is not None:
        extra[key] = VALUES[key]
    config = build_config(model, "tiny", config_dict=base_config_dict(work, **extra), argv=[])
    cls = METHODS[method]
    try:
        pipeline.check_unread_settings(config, [method])
        m = cls(**pipeline.method_settings(config, cls))
        task = run._task()
        task.model.load_state_dict(run.original.state_dict())
        result = m(task)
    except UnrankError as exc:
        return "refused", str(exc)
    return "ran", _params(result.model)


def _pinned_to(method: str, key: str) -> bool:
    """``method`` pins ``key`` to the value the test gives (e.g. l2unrank_paper's update: all)."""
    cls = METHODS[method]
    arg = {v: k for k, v in cls.settings.items()}.get(key)
    fixed = getattr(cls, "fixed", {})
    return arg in fixed and fixed[arg] == VALUES[key]


def _check_method(originals, model: str, method: str) -> list[str]:
    kind, base = _outcome(originals, model, method, None)
    if kind == "refused":  # e.g. a block method on a model without per-user blocks
        pytest.skip(f"{method} refuses {model} itself: {base}")
    bad = []
    for key in VALUES:
        kind, out = _outcome(originals, model, method, key)
        if kind == "ran" and _pinned_to(method, key):
            continue  # the variant's own value: honoured, it is what the variant is
        if kind == "refused":
            line = out.strip().splitlines()
            if len(line) != 1 or key not in line[0]:
                bad.append(f"{key}: refused without naming it: {out!r}")
            continue
        acted = _changed(base, out)
        for context in CONTEXTS.get(key, []) if not acted else []:
            k_ref, ref = _outcome(originals, model, method, None, context)
            if k_ref == "refused":  # the method does not take the context (e.g. not calibrated)
                continue
            k_out, out_c = (kind, out) if key in REF_ONLY else _outcome(originals, model, method, key, context)
            if k_out == "refused":
                line = out_c.strip().splitlines()
                acted = len(line) == 1 and key in line[0]
            else:
                acted = _changed(ref, out_c)
            if acted:
                break
        if not acted:
            bad.append(f"{key}={VALUES[key]!r} is silently ignored by {method} on {model}")
    return bad


FAST = ["l2unrank", "l2unrank_paper", "l2unrank_nocalib", "if+calib", "scif", "user_refit", "finetune", "retrain"]


@pytest.mark.parametrize("method", FAST)
def test_every_setting_acts_or_is_refused_wmf(originals, method):
    bad = _check_method(originals, "WMF", method)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(METHODS) - set(FAST)))
def test_every_setting_acts_or_is_refused_wmf_rest(originals, method):
    bad = _check_method(originals, "WMF", method)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["LightGCN", "NeuMF"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_setting_acts_or_is_refused_other_models(originals, model, method):
    bad = _check_method(originals, model, method)
    assert not bad, "\n".join(bad)
