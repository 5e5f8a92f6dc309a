"""What a checkpoint stores beside a model's ``state_dict`` (RecBole's ``other_parameter``).

Model-level and free of adapters, so that :class:`~recbole_unrank.models.ensemble.ShardEnsemble`
(a model) can save and load its sub-models' extras without reaching up into ``adapters/``;
:class:`~recbole_unrank.adapters.base.ModelAdapter` calls the same two functions and then clears
whatever else its model kind keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_unrank.device import model_device

__all__ = ["CACHES", "checkpoint_extras", "load_extras", "clear_caches"]

#: RecBole's caches of final embeddings (rebuilt on demand): never saved, stale after any change.
CACHES = ("restore_user_e", "restore_item_e")


def checkpoint_extras(model: nn.Module) -> dict:
    """The model's own ``other_parameter()`` without caches, plus the (retained) graph of a
    RecBole graph model (``norm_adj_matrix``), on the model's device like the ``state_dict``."""
    own = model.other_parameter() if hasattr(model, "other_parameter") else None
    extras = {k: v for k, v in dict(own or {}).items() if k not in CACHES}
    if hasattr(model, "norm_adj_matrix"):
        extras["norm_adj_matrix"] = model.norm_adj_matrix.detach()
    return extras


def load_extras(model: nn.Module, extras: dict | None) -> None:
    """RecBole's ``load_other_parameter`` of ``extras``, tensors moved to the model's device,
    caches left out and cleared (they describe the parameters before the load)."""
    if not extras:
        return
    device = model_device(model)
    extras = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in extras.items()
              if k not in CACHES}
    model.load_other_parameter(extras)
    clear_caches(model)


def clear_caches(model: nn.Module) -> None:
    """Set RecBole's final-embedding caches of ``model`` to None."""
    for name in CACHES:
        if hasattr(model, name):
            setattr(model, name, None)
