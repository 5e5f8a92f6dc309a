"""Where tensors go: the one device helper.

:func:`config_device` is the device a config asks for *and this machine has* (RecBole's own
rule: CUDA when ``gpu_id`` selects one and CUDA is present, else the CPU; a checkpoint written
on a GPU machine thus loads on a CPU one). :func:`model_device` is where a model lives.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["config_device", "model_device"]


def config_device(config) -> torch.device:
    """CUDA when ``config["gpu_id"]`` selects a GPU and CUDA is available, else the CPU."""
    gpu_id = config["gpu_id"]
    gpu_id = "" if gpu_id is None else str(gpu_id).strip()
    return torch.device("cuda") if gpu_id and torch.cuda.is_available() else torch.device("cpu")


def model_device(model: nn.Module, default: torch.device | str | None = None) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); ``default`` (else the CPU) for a
    model holding neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device(default if default is not None else "cpu")
