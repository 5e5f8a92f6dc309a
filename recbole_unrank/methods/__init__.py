"""Unlearning methods, by name."""

from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask, check_finite
from recbole_unrank.methods.retrain import Retrain

METHODS: dict[str, type[UnlearningMethod]] = {"retrain": Retrain}

__all__ = ["METHODS", "UnlearningMethod", "UnlearnResult", "UnlearnTask", "Retrain", "check_finite"]
