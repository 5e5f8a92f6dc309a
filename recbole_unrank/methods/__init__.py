"""Unlearning methods, by name (the values of ``unrank_method`` / ``unrank_methods``)."""

from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask, check_finite
from recbole_unrank.methods.influence_baselines import IFRU, SCIF, InfluenceFunction
from recbole_unrank.methods.l2unrank import L2UnRank, l2unrank_variant
from recbole_unrank.methods.retrain import Retrain
from recbole_unrank.methods.finetune import FineTune, NegGrad
from recbole_unrank.methods.partition import RecEraser, ShardEnsemble, SISA

METHODS: dict[str, type[UnlearningMethod]] = {
    "retrain": Retrain,
    # Influence-function baselines (DESIGN.md section 5).
    "if": InfluenceFunction,
    "ifru": IFRU,
    "scif": SCIF,
    "finetune": FineTune,
    "neggrad": NegGrad,
    "sisa": SISA,
    "receraser": RecEraser,
    "l2unrank": L2UnRank,
    # The paper's settings as they are (see config/l2unrank-paper.yaml).
    "l2unrank_paper": l2unrank_variant(
        "l2unrank_paper", update="all", curvature="hessian", damping=1e-2, cg_steps=30,
        use_context=True, calibrate=False,
    ),
    # Ablations of the project default, one switch each.
    "l2unrank_noscope": l2unrank_variant("l2unrank_noscope", use_scope=False),
    "l2unrank_nostruct": l2unrank_variant("l2unrank_nostruct", use_structural=False),
    "l2unrank_nosem": l2unrank_variant("l2unrank_nosem", use_semantic=False),
    "l2unrank_noweights": l2unrank_variant("l2unrank_noweights", use_weights=False),
    "l2unrank_context": l2unrank_variant("l2unrank_context", use_context=True),
    "l2unrank_nocurv": l2unrank_variant("l2unrank_nocurv", curvature="identity"),
    "l2unrank_nocalib": l2unrank_variant("l2unrank_nocalib", calibrate=False),
}

__all__ = [
    "METHODS",
    "UnlearningMethod",
    "UnlearnResult",
    "UnlearnTask",
    "Retrain",
    "InfluenceFunction",
    "IFRU",
    "SCIF",
    "FineTune",
    "NegGrad",
    "SISA",
    "RecEraser",
    "ShardEnsemble",
    "L2UnRank",
    "l2unrank_variant",
    "check_finite",
]
