"""L2UnRank (Zhao et al., arXiv 2511.06803) as declarations of the influence pipeline's steps.

* ``l2unrank_paper``: the paper as written (DESIGN.md section 3). Scope: the p-hop ``D_inf``
  (1 hop for graph models, 0 for factor models). Weights: structural + semantic, in the
  gradient's context rows. Loss: ``-log sigmoid`` (BPR for pairwise models), no L2. Curvature:
  the exact Hessian of the unweighted loss over ``D_inf``. Solve: 30 plain CG steps,
  ``lambda = 1e-2``, through negative curvature. Every parameter moves, graph models propagate
  over the scope subgraph, no step calibration.
* ``l2unrank``: the project's variant of the same stages. Scope and weights as the paper's
  (1 hop), but: only the request users' own parameter blocks move; the loss is the model's own
  training loss with its L2 term; the gradient is the request's own (no context rows) and the
  weights enter the curvature instead: each user's exact Gauss-Newton ``d x d`` block over the
  user's scope rows (the exact Hessian for dot-product models), each row weighted by ``w_ui``,
  solved exactly; the step is calibrated per user (:mod:`.calibration`) under the utility
  guard. ``l2unrank_ctx`` puts the weights where the paper does (the gradient's context rows).

Every ablation switches one step of ``l2unrank``.
"""

from __future__ import annotations

from recbole_unrank.methods.pipeline import declare
from recbole_unrank.methods.settings import CALIBRATION_SETTINGS
from recbole_unrank.methods.steps import Steps

__all__ = ["L2UNRANK_SETTINGS", "L2UnRank", "L2UnRankPaper", "VARIANTS"]

L2UNRANK_SETTINGS = {
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
    "weights_at": "unrank_weights_at",
    "calibrate": "unrank_calibrate",
    **CALIBRATION_SETTINGS,
}
PROJECT = Steps(rows="request", scope="hops", weights=("structural", "semantic"), weights_at="curvature",
                params="blocks", loss="training", curvature="gauss_newton", solve="block", step="calibrated",
                graph="retained")
PAPER = Steps(rows="request+context", scope="hops", weights=("structural", "semantic"), weights_at="gradient",
              params="all", loss="surrogate", curvature="hessian", solve="cg_fixed", step="one", graph="scope")


def _variant(name: str, doc: str, **fixed):
    return declare(name, PROJECT, L2UNRANK_SETTINGS, fixed, doc)


L2UnRank = _variant("l2unrank", "The project's L2UnRank variant (see the module docstring).")
L2UnRankPaper = declare(
    "l2unrank_paper", PAPER, L2UNRANK_SETTINGS,
    dict(update="all", curvature="hessian", loss="surrogate", damping=1e-2, cg_steps=30, use_context=True,
         use_scope=True, use_weights=True, use_structural=True, use_semantic=True, weights_at="gradient",
         calibrate=False),
    "The paper's L2UnRank as written (DESIGN.md section 3).")

VARIANTS = {
    "l2unrank": L2UnRank,
    "l2unrank_paper": L2UnRankPaper,
    # Ablations of l2unrank, one switch each.
    "l2unrank_noscope": _variant("l2unrank_noscope", "l2unrank with D_inf = D (weights over all of D).",
                                 use_scope=False),
    "l2unrank_nostruct": _variant("l2unrank_nostruct", "l2unrank without the structural score.",
                                  use_structural=False),
    "l2unrank_nosem": _variant("l2unrank_nosem", "l2unrank without the semantic score.", use_semantic=False),
    "l2unrank_noweights": _variant("l2unrank_noweights", "l2unrank with every w_ui = 1 (unweighted curvature blocks).",
                                   use_weights=False),
    "l2unrank_ctx": _variant("l2unrank_ctx", "l2unrank with the weights where the paper puts them: the "
                             "gradient's context rows (D_inf \\ D_t, weighted by w_ui), curvature unweighted.",
                             use_context=True, weights_at="gradient"),
    "l2unrank_surrogate": _variant("l2unrank_surrogate", "l2unrank on the paper's log-sigmoid loss instead of "
                                   "the model's training loss.", loss="surrogate"),
    "l2unrank_nocurv": _variant("l2unrank_nocurv", "l2unrank with H = lambda I (a gradient step).",
                                curvature="identity"),
    "l2unrank_nocalib": _variant("l2unrank_nocalib", "l2unrank with the influence step as it is (scale 1).",
                                 calibrate=False),
    "l2unrank_view": _variant("l2unrank_view", "l2unrank calibrated to the viewing threshold (no floor).",
                              calib_target="view", step_floor=0.0),
}
