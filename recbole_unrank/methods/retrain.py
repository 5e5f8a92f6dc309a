"""Retraining from scratch on ``D \\ D_t``: the gold standard every method is held against."""

from __future__ import annotations

from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask

__all__ = ["Retrain"]


class Retrain(UnlearningMethod):
    """Train a fresh model of the same class on the retained data, with the same config, seed,
    epoch budget and early stopping as the original."""

    name = "retrain"
    settings: dict[str, str] = {}

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        model, info = task.train_fresh(task.retain_ds, "retrain")
        return UnlearnResult(model, stages={"train_s": info["time_s"]}, info={"epochs": info["epochs"]})
