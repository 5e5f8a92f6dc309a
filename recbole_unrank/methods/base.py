"""The unlearning-method contract: one base class owns the pipeline step, a method fills it in.

A method is handed its settings (plain keyword arguments) and an :class:`UnlearnTask`; it never
reads a RecBole ``Config``. What it may need from RecBole (training a fresh model with the
run's recipe, scoring on the validation split) comes as callables on the task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from recbole_unrank.errors import UnrankError

__all__ = ["UnlearnTask", "UnlearnResult", "UnlearningMethod", "check_finite", "request_rows"]


@dataclass
class UnlearnTask:
    """Everything a method may use, and nothing else. ``model`` is a private copy of the
    original: change it freely (its device is the run's).

    Attributes:
        model: the original model's copy.
        model_name: RecBole model name (e.g. ``LightGCN``), for messages.
        train_ds / retain_ds / forget_ds: train split, ``D \\ D_t`` and ``D_t`` (same ids).
        request_index: rows of ``train_ds.inter_feat`` that form D_t (int64 numpy array).
        train_fresh: ``train_fresh(train_ds, tag) -> (model, info)`` trains a new model of the
            same class with the run's config, seed, epoch budget and early stopping (retrain,
            the partition methods).
        seed: the run's seed.
        valid_ds: the validation split (the step calibration's guard; never the test split).
        make_train_loader: ``make_train_loader(ds)`` a RecBole training loader over ``ds`` (with
            the run's negative sampling and batch size), for methods that train.
        train_batch_size: the run's training batch size (a loss defined per batch, such as
            LightGCN's L2 term, depends on it).
        show_progress: RecBole's ``show_progress``: progress bars on the method's long loops
            (drawn on a terminal only, :mod:`recbole_unrank.progress`).
        learning_rate: the run's training ``learning_rate`` (None where not known), for methods
            whose step is set relative to it (``l2unrank_released``'s repair).
        initial_model: ``initial_model() -> model``: the model as training starts it (the run's
            config and seed; :func:`recbole_unrank.training.initial_model`), where retraining
            leaves a block no retained row updates; None where not known.
    """

    model: nn.Module
    model_name: str
    train_ds: Any
    retain_ds: Any
    forget_ds: Any
    request_index: np.ndarray
    train_fresh: Callable[..., tuple[nn.Module, dict]] | None = None
    seed: int = 2020
    valid_ds: Any = None
    make_train_loader: Callable[[Any], Any] | None = None
    train_batch_size: int = 2048
    show_progress: bool = False
    learning_rate: float | None = None
    initial_model: Callable[[], nn.Module] | None = None


@dataclass
class UnlearnResult:
    """The unlearned model, wall time per stage (seconds), and anything worth reporting."""

    model: nn.Module
    stages: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    extra_rows: list[dict] = field(default_factory=list)


def request_rows(train_ds: Any, request_index: Any, device: Any = "cpu"):
    """``(users, items, target, keep)`` of a request on ``train_ds``: the train split's user and
    item columns on ``device``, the request's row indices and the retained-row mask."""
    feat = train_ds.inter_feat
    users = feat[train_ds.uid_field].to(device)
    items = feat[train_ds.iid_field].to(device)
    target = torch.as_tensor(request_index, device=device, dtype=torch.long)
    keep = torch.ones(users.numel(), dtype=torch.bool, device=device)
    keep[target] = False
    return users, items, target, keep


def check_finite(model: nn.Module, method: str) -> None:
    """Refuse an update that produced NaN or Inf (nothing is saved after this raises)."""
    for name, p in model.named_parameters():
        # A sum is NaN or infinite when any entry is (one pass, no [numel] mask); it can also
        # overflow with every entry finite, so only a non-finite sum is checked entry by entry.
        with torch.no_grad():
            total = p.sum()
        if not bool(torch.isfinite(total)) and not bool(torch.isfinite(p).all()):
            raise UnrankError(
                f"{method} produced NaN/Inf in '{name}': the update is refused and nothing is "
                "saved; raise unrank_damping or lower the step"
            )


class UnlearningMethod:
    """Base class. Subclasses set ``name`` and implement :meth:`unlearn`.

    ``settings`` maps a keyword argument of the method to the ``unrank_*`` config key it is
    read from by the pipeline (the method itself never sees the config).
    """

    name: str = "base"
    settings: dict[str, str] = {}

    def __init__(self, **kwargs: Any):
        unknown = set(kwargs) - set(self.settings)
        if unknown:
            raise UnrankError(f"{self.name} got unknown settings {sorted(unknown)}")
        from recbole_unrank.config import same_value

        defaults = self.default_settings()
        #: keywords the caller gave with a value other than the YAML default: each must act or be
        #: refused (a restated default changes nothing, as from a config: config.user_settings)
        self.given_kwargs = {k: v for k, v in kwargs.items() if v is not None and not same_value(v, defaults[k])}
        #: every setting: the YAML default (``properties/unrank.yaml``, the one source) where not given
        self.kwargs = {**defaults, **self.given_kwargs}

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """Keyword -> default of its ``unrank_*`` key, read from ``properties/unrank.yaml``."""
        from recbole_unrank.config import default_of

        return {arg: default_of(key) for arg, key in cls.settings.items()}

    def check_fit(self, model_name: str, train_ds: Any, request_index: np.ndarray) -> None:
        """Refuse (UnrankError, one line) a model or a drawn request this method cannot act on,
        before the run writes anything (:func:`recbole_unrank.pipeline.check_fit`). Default:
        every model and request fit; a method that can tell earlier overrides this."""

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, task: UnlearnTask) -> UnlearnResult:
        start = time.perf_counter()
        result = self.unlearn(task)
        result.info.setdefault("time_s", time.perf_counter() - start)
        check_finite(result.model, self.name)
        return result
