"""Training baselines that start from the original model: fine-tuning and gradient ascent.

* ``finetune``: keep training the original on the retained data ``D \\ D_t`` for a few epochs
  with the model's own RecBole loss (``calculate_loss``), so that what it learnt from ``D_t``
  fades.
* ``neggrad``: the same descent on retained batches, combined with *ascent* on the request:
  per step ``L = L(retained batch) - alpha * L(request batch)`` (NegGrad+, Kurmanji et al.
  2023). Ascent has no floor, so every step is clipped and checked: a step that makes the loss
  or its gradient non-finite is not taken, and training stops there.

Both give the model the retained data first (a graph model's adjacency, WMF's per-user
degrees), and clear stale caches after training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from recbole.utils import init_seed
from torch import nn

from recbole_unrank.adapters import get_adapter
from recbole_unrank.device import model_device
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask
from recbole_unrank.progress import progress

__all__ = ["FineTune", "NegGrad", "use_training_data", "batch_loss"]

logger = logging.getLogger("recbole_unrank")


# --------------------------------------------------------------------------- helpers
def use_training_data(model: nn.Module, ds) -> None:
    """Make ``model``'s data-derived state (a graph, WMF's per-user degrees) that of ``ds`` (a
    train split with the original ids), through its adapter; caches are cleared."""
    device = model_device(model)
    users = ds.inter_feat[ds.uid_field].long().to(device)
    items = ds.inter_feat[ds.iid_field].long().to(device)
    get_adapter(model).use_training_data(users, items)


def batch_loss(model: nn.Module, interaction) -> torch.Tensor:
    """The model's RecBole training loss of one batch (a tuple of losses is summed, as
    RecBole's trainer does)."""
    loss = model.calculate_loss(interaction)
    if isinstance(loss, tuple):
        loss = sum(loss)
    return loss


def _endless(loader) -> Iterator:
    """Batches of ``loader`` for ever (each pass reshuffles and re-samples negatives)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UnrankError("the request's training loader yields no batch: the request is empty")


def _positive(name: str, value: Any, cast=float, allow_zero: bool = False):
    try:
        value = cast(value)
    except (TypeError, ValueError):
        raise UnrankError(f"{name}={value!r} is not a number: give a {cast.__name__}") from None
    if (
        value < 0
        or (value == 0 and not allow_zero)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise UnrankError(f"{name}={value} is out of range: it must be {bound}")
    return value


# --------------------------------------------------------------------------- methods
class FineTune(UnlearningMethod):
    """Continue training the original on ``D \\ D_t``: ``epochs`` passes of RecBole's own loss,
    Adam at ``lr``."""

    name = "finetune"
    settings = {"epochs": "unrank_finetune_epochs", "lr": "unrank_finetune_lr"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.epochs = _positive(
            "unrank_finetune_epochs", self.kwargs["epochs"], int, allow_zero=True
        )
        self.lr = _positive("unrank_finetune_lr", self.kwargs["lr"])

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        model = task.model
        init_seed(task.seed, True)
        use_training_data(model, task.retain_ds)
        loader = task.make_train_loader(task.retain_ds)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        device = model_device(model)
        model.train()
        steps, last = 0, float("nan")
        for epoch in range(self.epochs):
            for batch in progress(loader, total=len(loader), desc=f"finetune {epoch:>3}",
                                  show_progress=task.show_progress):
                loss = batch_loss(model, batch.to(device))
                if not torch.isfinite(loss):
                    raise UnrankError(
                        f"finetune: the training loss became {loss.item()}: "
                        "lower unrank_finetune_lr"
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps, last = steps + 1, float(loss.detach())
        get_adapter(model).invalidate()
        model.eval()
        return UnlearnResult(
            model, info={"epochs": self.epochs, "steps": steps, "final_loss": last}
        )


class NegGrad(UnlearningMethod):
    """Descent on retained batches and ascent on request batches (cycled), ``epochs`` passes
    over the retained data: ``L = L(retained) - alpha * L(request)``, gradient norm clipped
    to ``clip``, Adam at ``lr``. A step whose loss or gradient is non-finite is not taken, and
    ends training."""

    name = "neggrad"
    settings = {
        "epochs": "unrank_neggrad_epochs",
        "alpha": "unrank_neggrad_alpha",
        "lr": "unrank_neggrad_lr",
        "clip": "unrank_neggrad_clip",
    }

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.epochs = _positive(
            "unrank_neggrad_epochs", self.kwargs["epochs"], int, allow_zero=True
        )
        self.alpha = _positive("unrank_neggrad_alpha", self.kwargs["alpha"], allow_zero=True)
        self.lr = _positive("unrank_neggrad_lr", self.kwargs["lr"])
        self.clip = _positive("unrank_neggrad_clip", self.kwargs["clip"])

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        model = task.model
        init_seed(task.seed, True)
        use_training_data(model, task.retain_ds)
        retain_loader = task.make_train_loader(task.retain_ds)
        forget_batches = _endless(task.make_train_loader(task.forget_ds))
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        device = model_device(model)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        steps, stopped = 0, None
        retain_loss = forget_loss = float("nan")
        for epoch in range(self.epochs):
            for batch in progress(retain_loader, total=len(retain_loader), desc=f"neggrad {epoch:>3}",
                                  show_progress=task.show_progress):
                l_r = batch_loss(model, batch.to(device))
                l_f = batch_loss(model, next(forget_batches).to(device))
                loss = l_r - self.alpha * l_f
                if not torch.isfinite(loss):
                    stopped = "non-finite loss"
                    break
                optimizer.zero_grad()
                loss.backward()
                # Checked before the step: with a finite, clipped gradient Adam moves each
                # parameter by about lr at most, so the parameters stay finite.
                norm = torch.nn.utils.clip_grad_norm_(params, self.clip)
                if not torch.isfinite(norm):
                    stopped = "non-finite gradient"
                    break
                optimizer.step()
                steps += 1
                retain_loss, forget_loss = float(l_r.detach()), float(l_f.detach())
            if stopped:
                logger.warning(
                    "[neggrad] stopped after %d steps: %s (the steps before are kept)",
                    steps,
                    stopped,
                )
                break
        get_adapter(model).invalidate()
        model.eval()
        info = {
            "epochs": self.epochs,
            "steps": steps,
            "retain_loss": retain_loss,
            "forget_loss": forget_loss,
        }
        if stopped:
            info["stopped"] = stopped
        return UnlearnResult(model, info=info)
