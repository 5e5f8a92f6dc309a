"""L2UnRank numerics: tensors and plain arguments in, tensors out; no RecBole Config.

- :mod:`.scope`: stage 1, p-hop influence scope ``D_inf`` of a forget set ``D_t``.
- :mod:`.weights`: stage 2, structural / semantic influence and interaction weights ``w_ui``.
- :mod:`.hvp`: Hessian- and Gauss-Newton-vector products by double back-propagation.
- :mod:`.cg`: conjugate gradient for ``(H + lambda I) Delta = g``; exact small block solves.
- :mod:`.probe`: per-user forget ranks and validation NDCG from a score matrix (step calibration).
- :mod:`.index`: a split's interactions indexed once per loaded data set (rows by user and by item).
"""

from recbole_unrank.influence.cg import CGResult, batched_block_solve, conjugate_gradient
from recbole_unrank.influence.hvp import (
    flat,
    gauss_newton_operator,
    gauss_newton_vp,
    hvp,
    hvp_operator,
    sigmoid_curvature,
    unflat,
)
from recbole_unrank.influence.probe import RankProbe
from recbole_unrank.influence.scope import ScopeResult, influence_scope
from recbole_unrank.influence.weights import (
    EntityInfluence,
    entity_influence,
    gaussian_calibrate,
    influence_weights,
    semantic_scores,
    structural_scores,
)

__all__ = [
    "CGResult",
    "EntityInfluence",
    "RankProbe",
    "ScopeResult",
    "batched_block_solve",
    "conjugate_gradient",
    "entity_influence",
    "flat",
    "gauss_newton_operator",
    "gauss_newton_vp",
    "gaussian_calibrate",
    "hvp",
    "hvp_operator",
    "influence_scope",
    "influence_weights",
    "semantic_scores",
    "sigmoid_curvature",
    "structural_scores",
    "unflat",
]
