"""Retraining from scratch on ``D \\ D_t``: the gold standard every method is held against."""

from __future__ import annotations

import math
from typing import Any

from recbole_unrank.errors import UnrankError
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask

__all__ = ["Retrain", "RetrainReseeded"]


class Retrain(UnlearningMethod):
    """Train a fresh model of the same class on the retained data, with the same config, seed,
    epoch budget and early stopping as the original."""

    name = "retrain"
    settings: dict[str, str] = {}

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        model, info = task.train_fresh(task.retain_ds, "retrain")
        return UnlearnResult(model, stages={"train_s": info["time_s"]}, info={"epochs": info["epochs"]})


class RetrainReseeded(UnlearningMethod):
    """Retraining with only the training seed changed (the run's seed + ``unrank_reseed_offset``):
    the noise floor of every measure taken against ``retrain``. What an exact retraining scores
    against retrain's row says how far a target can be met at all: a gap that a second
    retraining shows too is the seed's, not the update's."""

    name = "retrain_reseeded"
    settings = {"offset": "unrank_reseed_offset"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        off = self.kwargs["offset"]
        ok = isinstance(off, (int, float)) and not isinstance(off, bool) and math.isfinite(off) and off == int(off)
        if not ok or int(off) == 0:
            raise UnrankError(f"unrank_reseed_offset={off!r} must be a whole number other than 0 (0 is retrain "
                              "itself)")
        self.offset = int(off)

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        if task.train_fresh is None:
            raise UnrankError(f"{self.name} needs a way to train a fresh model, which this caller does not give")
        seed = int(task.seed) + self.offset
        try:
            model, info = task.train_fresh(task.retain_ds, self.name, seed=seed)
        except TypeError as exc:
            if "seed" not in str(exc):
                raise
            raise UnrankError(f"{self.name}: this caller trains with its own seed only") from None
        return UnlearnResult(model, stages={"train_s": info["time_s"]}, info={"epochs": info["epochs"], "seed": seed})
