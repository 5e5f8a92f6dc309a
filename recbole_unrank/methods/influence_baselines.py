"""Influence-function baselines as declarations of the influence pipeline (DESIGN.md section 5),
each at its best faith: the model's own training loss with its L2 term, positive-definite
curvature (Gauss-Newton + damping), conjugate gradient to convergence with its residual in
``info["solve"]`` (a failed solve is refused, never reported as the method's result).

==============  ============================  =========================================  ==========
method          parameters that move          curvature over                             gradient
==============  ============================  =========================================  ==========
``if``          every parameter               ``D \\ D_t`` (or ``D``: hessian_data train)  ``D_t``
``ifru``        rows within k hops of the     ``D \\ D_t``                                ``D_t`` +
                request, importance-pruned                                               graph term
``scif``        the request users' rows       retained rows of the request users and     ``D_t``
                                              their co-interacting neighbours
``user_refit``  the request users' blocks     their retained rows: Newton to convergence  ``-grad L_r``
==============  ============================  =========================================  ==========

Graph models: the gradient and curvature of ``if`` / ``ifru`` / ``scif`` are taken on the
original train graph (IFRU adds the graph change's gradient, its "spillover" term); the model
keeps the retained graph. ``user_refit`` works on the retained graph. ``<method>+calib`` runs
the same step calibration as L2UnRank (per user when the update lives in the request users'
rows, one scale otherwise).
"""

from __future__ import annotations

import dataclasses

from recbole_unrank.methods.pipeline import declare
from recbole_unrank.methods.settings import CALIBRATION_SETTINGS
from recbole_unrank.methods.steps import Steps

__all__ = ["BASELINES", "SOLVER_SETTINGS"]

SOLVER_SETTINGS = {
    "curvature": "unrank_baseline_curvature",
    "loss": "unrank_baseline_loss",
    "damping": "unrank_damping",
    "cg_steps": "unrank_baseline_cg_steps",
    "cg_tol": "unrank_baseline_cg_tol",
}

IF = Steps(rows="request", scope="retained", params="all", solve="cg", graph="original")
IFRU = Steps(rows="request", scope="retained", params="khop_rows", solve="cg", graph="original", spillover=True)
SCIF = Steps(rows="request", scope="collaborative", params="user_rows", solve="cg", graph="original")
REFIT = Steps(rows="retained", scope="retained", params="blocks", solve="block", step="newton", graph="retained")

_IF_SET = {**SOLVER_SETTINGS, "hessian_data": "unrank_if_hessian_data"}
_IFRU_SET = {**SOLVER_SETTINGS, "ifru_hops": "unrank_ifru_hops", "ifru_keep": "unrank_ifru_keep"}
_SCIF_SET = {**SOLVER_SETTINGS, "neighbors": "unrank_scif_neighbors"}


def _calib(steps: Steps) -> Steps:
    return dataclasses.replace(steps, step="calibrated")


BASELINES = {
    "if": declare("if", IF, _IF_SET, doc="Influence function (Koh & Liang 2017), every parameter."),
    "ifru": declare("ifru", IFRU, _IFRU_SET, doc="IFRU (Zhang et al., TORS 2024)."),
    "scif": declare("scif", SCIF, _SCIF_SET, doc="SCIF (Li et al., 2023)."),
    "if+calib": declare("if+calib", _calib(IF), {**_IF_SET, **CALIBRATION_SETTINGS},
                        doc="if, then L2UnRank's step calibration."),
    "ifru+calib": declare("ifru+calib", _calib(IFRU), {**_IFRU_SET, **CALIBRATION_SETTINGS},
                          doc="ifru, then L2UnRank's step calibration."),
    "scif+calib": declare("scif+calib", _calib(SCIF), {**_SCIF_SET, **CALIBRATION_SETTINGS},
                          doc="scif, then L2UnRank's step calibration (per user)."),
    "user_refit": declare(
        "user_refit", REFIT,
        {"damping": "unrank_damping", "refit_steps": "unrank_refit_steps", "refit_tol": "unrank_refit_tol",
         "refit_negatives": "unrank_refit_negatives"},
        doc="The request users' own blocks re-fitted to their retained training loss (WMF: exact ALS)."),
}
