"""Where tensors go: the one device helper.

:func:`config_device` is the device a config asks for *and this machine has* (RecBole's own
rule: CUDA when ``gpu_id`` selects one and CUDA is present, else the CPU; a checkpoint written
on a GPU machine thus loads on a CPU one). :func:`model_device` is where a model lives;
:func:`move_tensor_attributes` brings what ``nn.Module.to`` leaves behind along with it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["config_device", "model_device", "move_tensor_attributes"]


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


def move_tensor_attributes(model: nn.Module, device: torch.device | str | None = None) -> list[str]:
    """Move every plain tensor attribute of ``model`` and its submodules to ``device`` (default:
    where its parameters are), and their ``device`` attributes with them; the names moved.

    ``nn.Module.to`` / ``.cuda()`` move parameters and buffers only: RecBole models keep other
    tensors as plain attributes (LightGCN's ``norm_adj_matrix``, NGCF's and SGL's graphs,
    ``restore_*_e`` caches) and a ``device`` that their ``forward`` reads, so a model trained
    on the CPU and moved to CUDA (or back) mixed devices (``mat1 is on cpu, different from
    other tensors on cuda:0``). Private attributes (``_parameters`` ... and this package's
    ``_unrank_local``, which is rebuilt when the graph it was built on is replaced) are left."""
    if device is None:
        if next(iter(model.parameters()), None) is None and next(iter(model.buffers()), None) is None:
            return []
        device = model_device(model)
    device = torch.device(device)
    moved = []
    for prefix, module in model.named_modules():
        for name, value in list(vars(module).items()):
            if name.startswith("_"):
                continue
            if isinstance(value, torch.Tensor) and value.device != device:
                object.__setattr__(module, name, value.to(device))
                moved.append(f"{prefix}.{name}" if prefix else name)
            elif name == "device" and isinstance(value, torch.device) and value.type != device.type:
                object.__setattr__(module, name, device)
    return moved
