"""Make RecBole 1.2.1 run on today's numpy / torch / scipy.

Imported by :mod:`recbole_unrank` before anything imports RecBole. Each patch is idempotent,
names what it fixes, and is tested in ``tests/test_compat.py`` (which shows the failure
without it). Nothing here changes behaviour for code outside RecBole and this package.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["apply", "NUMPY_ALIASES"]

# NumPy 2 removed these aliases; RecBole uses them in Config.compatibility_settings
# (np.float_, np.complex_, np.unicode_), the metrics (np.float), interaction.py / dataset.py
# (np.long, np.int, np.bool), hyperopt 0.2.5 (np.NaN) and ray's logger (np.bool8).
NUMPY_ALIASES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "string_": np.bytes_,
    "bool8": np.bool_,
    "NaN": np.nan,
    "Inf": np.inf,
    "float": float,
    "int": int,
    "bool": np.bool_,
    "complex": complex,
    "object": object,
    "str": str,
    "long": np.int64,
    "unicode": str,
}

_ORIGINAL_TORCH_LOAD = torch.load
# Module names whose torch.load calls may unpickle a Config: RecBole and this package only
# (exact package names or their submodules; "recbole_unrank_x" is someone else's code).
_TRUSTED_PACKAGES = ("recbole", "recbole_unrank")


def _patch_numpy() -> None:
    for name, value in NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


# Set (to "1") to let RecBole's own torch.load calls unpickle anything, as RecBole does.
TRUST_ENV = "RECBOLE_UNRANK_TRUST_CHECKPOINTS"


def _recbole_torch_load(f, *args, **kwargs):
    """torch >= 2.6 defaults ``weights_only=True``, but a RecBole checkpoint pickles its
    ``Config`` ("UnpicklingError: Weights only load failed" in ``load_data_and_model``,
    ``Trainer.evaluate(load_best_model=True)``, ``resume_checkpoint``, NeuMF pre-training),
    and torch's weights-only unpickler cannot read pickle protocol 4, which RecBole writes.
    Calls made from RecBole's or this package's code without ``weights_only`` unpickle through
    :class:`recbole_unrank.unpickle.RestrictedUnpickler` (the types a RecBole checkpoint
    holds; anything else is refused before it runs), or fully with ``RECBOLE_UNRANK_TRUST_
    CHECKPOINTS=1``; every other caller keeps torch's own default."""
    if "weights_only" not in kwargs:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".", 1)[0] in _TRUSTED_PACKAGES:
            kwargs["weights_only"] = False
            if "pickle_module" not in kwargs and os.environ.get(TRUST_ENV, "") != "1":
                from recbole_unrank.unpickle import UntrustedGlobal, restricted_pickle_module

                kwargs["pickle_module"] = restricted_pickle_module()
                try:
                    return _ORIGINAL_TORCH_LOAD(f, *args, **kwargs)
                except UntrustedGlobal as exc:
                    raise UntrustedGlobal(
                        f"{f!r} is refused: loading it needs {exc}, which no RecBole checkpoint holds, "
                        f"so the file could run code; set {TRUST_ENV}=1 only if you trust where it came from"
                    ) from None
    return _ORIGINAL_TORCH_LOAD(f, *args, **kwargs)


def _dok_update(self, data: dict) -> None:
    """scipy >= 1.13 dropped ``dok_matrix._update``, which LightGCN / NGCF / GCMC / NCL /
    SpectralCF call to fill their adjacency ("'dok_matrix' object has no attribute
    '_update'"). Same semantics: bulk insert of ``{(row, col): value}``."""
    self._dict.update(data)


def _quiet_recbole_warnings() -> None:
    """RecBole 1.2.1 triggers deprecation notices on every run (pandas chained ``fillna``,
    ``torch.cuda.amp.GradScaler``) that a user cannot act on; keep them out of the output.
    With ``pandas<3`` (a dependency) the fill still works."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"recbole\.")
    # LightGCN builds its adjacency with the deprecated torch.sparse.FloatTensor constructor.
    warnings.filterwarnings("ignore", message=r"torch\.sparse\.SparseTensor", category=UserWarning)


def _pop_calculate_loss(self, interaction):
    """RecBole's ``Pop`` counts with ``item_cnt[item] = item_cnt[item] + 1``: an item that
    appears several times in one batch is counted once, so its popularity is capped by the
    number of batches (all items tie when one batch holds the data); and with RecBole's default
    negative sampling it counts the sampled negatives too. Count every observed interaction."""
    item = interaction[self.ITEM_ID]
    label = getattr(self, "LABEL", None) or "label"
    if label in interaction:  # pointwise loader with sampled negatives: keep the positives
        item = item[interaction[label] > 0]
    self.item_cnt.index_add_(0, item, torch.ones_like(item).unsqueeze(1).to(self.item_cnt.dtype))
    self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
    return torch.nn.Parameter(torch.zeros(1)).to(self.device)


def _patch_pop() -> None:
    from recbole.model.general_recommender.pop import Pop

    if Pop.calculate_loss is not _pop_calculate_loss:
        Pop._recbole_calculate_loss = Pop.calculate_loss  # kept for the test that shows the bug
        Pop.calculate_loss = _pop_calculate_loss


NO_GPU_USAGE = "0.0 / 0.0"  # what RecBole's get_environment itself reports without a GPU


def _is_cuda(device) -> bool:
    if device is None:
        return False
    try:
        return torch.device(device).type == "cuda"
    except (TypeError, RuntimeError):
        return False


def _get_gpu_usage(device=None) -> str:
    """RecBole's ``get_gpu_usage`` asks ``torch.cuda`` for the memory of ``device`` whatever it
    is; on a machine with CUDA a run on the CPU (``gpu_id ''``) then fails inside RecBole
    (``ValueError: Expected a cuda device, but got: cpu`` from ``get_environment`` in
    ``quick_start`` and from the trainer's epoch line when ``show_progress`` is on). A device
    that is not CUDA reports no GPU usage; a CUDA one is measured by RecBole's own code."""
    if not _is_cuda(device):
        return NO_GPU_USAGE
    return _RECBOLE_GET_GPU_USAGE(device)


_RECBOLE_GET_GPU_USAGE = None  # RecBole's get_gpu_usage, kept for the CUDA path and the test


def _patch_gpu_usage() -> None:
    """Replace ``get_gpu_usage`` in ``recbole.utils.utils`` (which ``get_environment`` calls) and
    in every RecBole module that imported it by value (``recbole.utils``, the trainers; modules
    imported later take the patched name from ``recbole.utils``)."""
    global _RECBOLE_GET_GPU_USAGE
    import recbole.utils.utils as rb_utils

    if rb_utils.get_gpu_usage is not _get_gpu_usage:
        _RECBOLE_GET_GPU_USAGE = rb_utils.get_gpu_usage
    for name, module in list(sys.modules.items()):
        if ((name == "recbole" or name.startswith("recbole.")) and module is not None
                and getattr(module, "get_gpu_usage", None) is _RECBOLE_GET_GPU_USAGE):
            module.get_gpu_usage = _get_gpu_usage


_RECBOLE_INIT_DEVICE = None  # RecBole's Config._init_device


def _config_init_device(self) -> None:
    """RecBole's ``Config._init_device`` sets ``os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id``
    each time a Config is built, so a CPU config (``gpu_id ''``) built early in a process hides
    every GPU from what comes after it (``torch.cuda.device_count()`` is then 0, and a
    CUDA-tagged checkpoint cannot be read). A CPU config leaves the variable as it found it and
    gets the CPU explicitly; a GPU config keeps RecBole's behaviour (its ``gpu_id`` is made
    visible and it runs on ``cuda`` where CUDA is present); the distributed path is RecBole's."""
    distributed = "local_rank" in self.final_config_dict
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    _RECBOLE_INIT_DEVICE(self)
    if distributed or str(self.final_config_dict["gpu_id"]).strip():
        return
    if saved is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = saved
    self.final_config_dict["device"] = torch.device("cpu")


def _patch_config_device() -> None:
    global _RECBOLE_INIT_DEVICE
    from recbole.config import Config

    if Config._init_device is not _config_init_device:
        _RECBOLE_INIT_DEVICE = Config._init_device
        Config._init_device = _config_init_device


def apply() -> None:
    """Apply every patch (safe to call more than once)."""
    _patch_numpy()
    _quiet_recbole_warnings()
    if getattr(torch.load, "__name__", "") != "_recbole_torch_load":
        torch.load = _recbole_torch_load
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = _dok_update
    _patch_pop()
    _patch_gpu_usage()
    _patch_config_device()


apply()
