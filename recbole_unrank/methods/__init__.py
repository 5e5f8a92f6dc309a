"""Unlearning methods, by name (the values of ``unrank_method`` / ``unrank_methods``).

Influence methods are declarations of one pipeline of steps (:mod:`.pipeline`, which runs
them; the steps in :mod:`.steps`, the settings that select and check them in :mod:`.settings`):
L2UnRank's presets and ablations in :mod:`.l2unrank`, the baselines in
:mod:`.influence_baselines`."""

from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask, check_finite
from recbole_unrank.methods.finetune import FineTune, NegGrad
from recbole_unrank.methods.influence_baselines import BASELINES
from recbole_unrank.methods.l2unrank import VARIANTS, L2UnRank, L2UnRankPaper
from recbole_unrank.methods.partition import SISA, RecEraser, ShardEnsemble
from recbole_unrank.methods.pipeline import InfluencePipeline, Steps, declare
from recbole_unrank.methods.released import Released
from recbole_unrank.methods.retrain import Retrain, RetrainReseeded
from recbole_unrank.methods.twosided import TwoSided

METHODS: dict[str, type[UnlearningMethod]] = {
    "retrain": Retrain,
    "retrain_reseeded": RetrainReseeded,
    "finetune": FineTune,
    "neggrad": NegGrad,
    "sisa": SISA,
    "receraser": RecEraser,
    **BASELINES,
    **VARIANTS,
    "l2unrank_twosided": TwoSided,
    "l2unrank_released": Released,
}

__all__ = [
    "METHODS",
    "UnlearningMethod",
    "UnlearnResult",
    "UnlearnTask",
    "Retrain",
    "RetrainReseeded",
    "FineTune",
    "NegGrad",
    "SISA",
    "RecEraser",
    "ShardEnsemble",
    "InfluencePipeline",
    "Steps",
    "declare",
    "L2UnRank",
    "L2UnRankPaper",
    "TwoSided",
    "Released",
    "check_finite",
]
