"""Checkpoint files: the one atomic writer, the restricted reader, provenance, the round trip.

* :func:`atomic_write` is the package's only way to write a file: a temporary name beside the
  target, then a rename, so a crash leaves the old file or the new one, never half of one.
* :func:`read_checkpoint` unpickles with an allow-list (:class:`RestrictedUnpickler`): the
  value types a RecBole checkpoint holds (torch's own weights-only list, numpy scalars and
  arrays, RecBole's enums, its ``Config``) and, as plain references that are never called,
  RecBole model classes and YAML loaders. Anything else is refused before it runs. torch's
  ``weights_only=True`` cannot do this job: its unpickler stops at pickle protocol 4's
  ``FRAME`` opcode, and RecBole's ``Trainer`` saves with ``pickle_protocol=4``.
  ``trust=True`` (``unrank_trust_checkpoint``) loads with Python's full unpickler.
* Every checkpoint this package writes carries a fingerprint of its training data
  (:func:`data_fingerprint`: dataset name, sha256 of the ``.inter`` file, split settings),
  checked by :func:`check_provenance`; unlearned checkpoints also carry their request, so
  :func:`load_unlearned` rebuilds RecBole's loaders over the *retained* train split.
"""

from __future__ import annotations

import collections
import copy
import enum
import hashlib
import importlib
import io
import logging
import math
import os
import pathlib
import pickle
import sys
import types
from typing import Any, Callable

import numpy as np
import torch
import yaml

from recbole_unrank import compat  # noqa: F401
from recbole.config import Config
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import init_seed
from recbole.utils.argument_list import dataset_arguments

from recbole_unrank.adapters import get_adapter
from recbole_unrank.device import config_device
from recbole_unrank.errors import UnrankError
from recbole_unrank.models import get_model

__all__ = [
    "atomic_write",
    "atomic_text",
    "atomic_torch_save",
    "RestrictedUnpickler",
    "load_file",
    "restricted_pickle_module",
    "UntrustedGlobal",
    "read_checkpoint",
    "check_finite_checkpoint",
    "data_fingerprint",
    "check_provenance",
    "adopt_checkpoint_config",
    "load_checkpoint",
    "save_checkpoint",
    "save_trained",
    "request_record",
    "load_unlearned",
    "SPLIT_KEYS",
    "TRAINING_KEYS",
]

logger = logging.getLogger("recbole_unrank")

# Settings that decide which interactions exist and how they are split: a model is only
# meaningful on the split it was trained on (RecBole's dataset arguments, the seed of the
# random split, and eval_args).
SPLIT_KEYS = ("seed", "eval_args", *dataset_arguments)
# Derived by RecBole's Config from eval_args: follow it silently.
_DERIVED_SPLIT_KEYS = ("valid_neg_sample_args", "test_neg_sample_args", "eval_neg_sample_args")
# The recipe retrain / finetune / shard training repeat: the checkpoint's unless the user
# set them.
TRAINING_KEYS = (
    "epochs", "eval_step", "stopping_step", "valid_metric", "topk", "learning_rate",
    "train_batch_size", "learner", "weight_decay", "clip_grad_norm", "train_neg_sample_args",
)
_DERIVED_TRAINING_KEYS = {"valid_metric": ("valid_metric_bigger",)}


# --------------------------------------------------------------------------- writing
def atomic_write(path: str, write: Callable[[str], Any]) -> str:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then renamed onto
    ``path``. On any failure the temporary file is removed and ``path`` is left as it was."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_torch_save(obj, path: str) -> str:
    """``torch.save(obj)`` to ``path`` atomically (pickle protocol 4, as RecBole's trainer)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp, pickle_protocol=4))


# --------------------------------------------------------------------------- reading
class UntrustedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global (or a use of one) that a RecBole checkpoint never needs."""


def _numpy_multiarray():
    core = getattr(np, "_core", None)
    return core.multiarray if core is not None else np.core.multiarray


def _torch_allowed() -> dict[str, Any]:
    """torch's own weights-only allow-list (rebuild functions, dtypes, storages, Size, ...)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except Exception:  # noqa: BLE001  (a private helper: fall back to what checkpoints use)
        return {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
            "torch._utils._rebuild_sparse_tensor": torch._utils._rebuild_sparse_tensor,
            "torch.serialization._get_layout": torch.serialization._get_layout,
            "torch.Size": torch.Size,
            "torch.device": torch.device,
        }


def _static_allow_lists() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(callable, reference)``: globals that may be called or instantiated by the pickle,
    and globals it may only name (classes a Config refers to)."""
    from recbole.utils import enum_type

    callable_ = _torch_allowed()
    multiarray = _numpy_multiarray()
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and 2 names
        callable_[f"{module}.scalar"] = multiarray.scalar
        callable_[f"{module}._reconstruct"] = multiarray._reconstruct
    callable_["numpy.dtype"] = np.dtype
    callable_["numpy.ndarray"] = np.ndarray
    callable_["builtins.frozenset"] = frozenset
    for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        callable_[f"pathlib.{name}"] = getattr(pathlib, name)  # a data_path given as a Path
    for name, value in vars(enum_type).items():  # ModelType, InputType, FeatureType, ...
        if isinstance(value, type) and issubclass(value, enum.Enum) and value.__module__ == enum_type.__name__:
            callable_[f"{enum_type.__name__}.{name}"] = value
    reference = {
        "yaml.loader.FullLoader": yaml.FullLoader,
        "yaml.loader.SafeLoader": yaml.SafeLoader,
    }
    return callable_, reference


_ALLOW: tuple[dict[str, Any], dict[str, Any]] | None = None
_DICTS = (dict, collections.OrderedDict, collections.Counter)
_TRUSTED_PACKAGES = ("recbole", "recbole_unrank")


class RestrictedUnpickler(pickle._Unpickler):
    """Python's unpickler limited to what RecBole checkpoints hold.

    * ``find_class`` answers only allow-listed globals, and a RecBole model class or
      ``Config`` (sub)class from a module that is already imported or lies inside the
      ``recbole`` / ``recbole_unrank`` packages (so a custom model of the running program
      loads; nothing outside those packages is imported).
    * Calling a global (``REDUCE``) or instantiating one (``NEWOBJ``, ``INST``, ``OBJ``) is
      allowed for the value types only; a ``Config`` may be created empty and filled
      (``NEWOBJ`` + ``BUILD``), model classes and YAML loaders may only be named.
    * ``BUILD`` never sets attributes on a class, function or module, and the opcodes that
      fill containers (``APPEND(S)``, ``SETITEM(S)``, ``ADDITEMS``) fill builtin lists, dicts
      and sets only (as torch's weights-only unpickler).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        global _ALLOW
        if _ALLOW is None:
            _ALLOW = _static_allow_lists()
        self._callable, self._reference = _ALLOW
        self._callable_ids = {id(v) for v in self._callable.values()}
        self._config_ids: set[int] = set()

    # ---- globals -----------------------------------------------------------------------
    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in self._callable:
            return self._callable[full]
        if full in self._reference:
            return self._reference[full]
        obj = self._trusted_class(module, name)
        if obj is None:
            raise UntrustedGlobal(full)
        if issubclass(obj, Config):
            self._config_ids.add(id(obj))
        return obj

    @staticmethod
    def _trusted_class(module: str, name: str):
        """A RecBole model class or Config class, from a module already imported or inside
        RecBole / this package (importing those runs only their own code)."""
        if name.startswith("_") or "." in name:
            return None
        try:
            if module in sys.modules:
                obj = getattr(sys.modules[module], name)
            elif module.split(".", 1)[0] in _TRUSTED_PACKAGES:
                obj = getattr(importlib.import_module(module), name)
            else:
                return None
        except Exception:  # noqa: BLE001  (not importable here: not a checkpoint's class)
            return None
        if isinstance(obj, type) and (issubclass(obj, AbstractRecommender) or issubclass(obj, Config)):
            return obj
        return None

    def _check_call(self, func, how: str) -> None:
        if id(func) not in self._callable_ids:
            label = getattr(func, "__module__", "?") + "." + getattr(func, "__qualname__", type(func).__name__)
            raise UntrustedGlobal(f"{label} ({how})")

    # ---- opcodes that run code -----------------------------------------------------------
    def load_reduce(self):
        self._check_call(self.stack[-2], "called")
        super().load_reduce()

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _check_new(self, cls) -> None:
        if id(cls) not in self._config_ids:  # a Config may be created empty, then filled
            self._check_call(cls, "instantiated")

    def load_newobj(self):
        self._check_new(self.stack[-2])  # stack: cls, args
        super().load_newobj()

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        self._check_new(self.stack[-3])  # stack: cls, args, kwargs
        super().load_newobj_ex()

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _refuse_instantiate(self):
        raise UntrustedGlobal("an INST/OBJ instantiation (old pickle protocols)")

    dispatch[pickle.INST[0]] = _refuse_instantiate
    dispatch[pickle.OBJ[0]] = _refuse_instantiate

    # APPEND(S) / SETITEM(S) / ADDITEMS call methods of the object they fill: only on builtin
    # containers (an allowed object could otherwise route them to one of its attributes).
    def _marked(self):
        """The object that APPENDS / SETITEMS / ADDITEMS will fill (None: no MARK, pickle's error)."""
        return self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None

    def _refuse_fill(self, target, kinds: tuple, opcode: str) -> None:
        if target is not None and type(target) not in kinds:
            raise UntrustedGlobal(f"{opcode} on a {type(target).__name__}")

    def load_append(self):
        self._refuse_fill(self.stack[-2] if len(self.stack) > 1 else None, (list,), "APPEND")
        super().load_append()

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        self._refuse_fill(self._marked(), (list,), "APPENDS")
        super().load_appends()

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self):
        self._refuse_fill(self.stack[-3] if len(self.stack) > 2 else None, _DICTS, "SETITEM")
        super().load_setitem()

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        self._refuse_fill(self._marked(), _DICTS, "SETITEMS")
        super().load_setitems()

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        self._refuse_fill(self._marked(), (set,), "ADDITEMS")
        super().load_additems()

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_build(self):
        inst = self.stack[-2]
        if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
            raise UntrustedGlobal(f"setting attributes of {inst!r}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def restricted_pickle_module() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler is :class:`RestrictedUnpickler`."""
    mod = types.ModuleType("recbole_unrank_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()
    mod.loads = lambda data, **kw: RestrictedUnpickler(io.BytesIO(data), **kw).load()
    return mod


def load_file(path: str, trust: bool = False, map_location="cpu"):
    """``torch.load`` through :class:`RestrictedUnpickler` (``trust=True``: Python's own)."""
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=restricted_pickle_module())


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Read a RecBole checkpoint through the restricted unpickler (``trust=True``: Python's
    full one) and check its parameters are finite. A missing, corrupt, untrusted or non-finite
    file -> UnrankError, before anything else runs."""
    if not os.path.isfile(path):
        raise UnrankError(f"checkpoint '{path}' does not exist: give the .pth file RecBole saved")
    try:
        ckpt = load_file(path, trust)
    except UntrustedGlobal as exc:
        raise UnrankError(
            f"checkpoint '{path}' is refused: loading it needs {exc}, which no RecBole checkpoint "
            "holds, so the file could run code; set unrank_trust_checkpoint=True only if you "
            "trust where it came from"
        ) from None
    except Exception as exc:  # any other unpickling failure: the file is not usable
        raise UnrankError(f"checkpoint '{path}' is corrupt or not a torch file ({type(exc).__name__}): "
                          "give a .pth file saved by RecBole") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise UnrankError(f"checkpoint '{path}' is not a RecBole checkpoint (no state_dict/config)")
    check_finite_checkpoint(ckpt, path)
    return ckpt


def _tensors(value, prefix: str):
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))


def check_finite_checkpoint(ckpt: dict, path: str = "checkpoint") -> None:
    """Refuse NaN / Inf in the state_dict or other_parameter, naming the tensor."""
    for part in ("state_dict", "other_parameter"):
        for name, t in _tensors(ckpt.get(part) or {}, ""):
            if t.is_sparse:
                t = t.coalesce().values()
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                raise UnrankError(
                    f"checkpoint '{path}' holds NaN/Inf in {part} '{name}': the model is unusable; "
                    "give a checkpoint with finite parameters"
                )


# --------------------------------------------------------------------------- provenance
_SHA_CACHE: dict[tuple, str] = {}


def _sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _inter_file(config) -> str:
    return os.path.join(config["data_path"], f"{config['dataset']}.inter")


def _plain(value):
    """A copy made of builtins only (what a fingerprint may hold)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def split_settings(config) -> dict:
    final = config.final_config_dict
    return {k: _plain(final[k]) for k in SPLIT_KEYS if k in final}


def data_fingerprint(config) -> dict:
    """What the model was trained on: the dataset's name, the sha256 of its ``.inter`` file,
    and the split-defining settings."""
    inter = _inter_file(config)
    return {
        "dataset": config["dataset"],
        "inter_file": os.path.basename(inter),
        "inter_sha256": _sha256(inter) if os.path.isfile(inter) else None,
        "split": split_settings(config),
    }


def _old_config_get(old, key: str):
    try:
        return old[key]
    except (KeyError, TypeError):
        return None


def check_provenance(config, ckpt: dict, path: str = "checkpoint") -> None:
    """The data ``config`` reads must be the data the checkpoint was trained on.

    With a fingerprint (every checkpoint this package writes): dataset name, the ``.inter``
    file's sha256 and the split settings must agree, else UnrankError. Without one (RecBole's
    own checkpoints): the dataset name must agree; ``data_path`` is compared (the split
    settings were adopted by :func:`adopt_checkpoint_config`), and one warning says what could
    not be checked."""
    old = ckpt["config"]
    fp = (ckpt.get("unrank") or {}).get("fingerprint")
    theirs = fp["dataset"] if fp else _old_config_get(old, "dataset")
    if theirs is not None and theirs != config["dataset"]:
        raise UnrankError(f"checkpoint '{path}' was trained on dataset '{theirs}', not "
                          f"'{config['dataset']}': run with -d {theirs}")
    if fp:
        now = data_fingerprint(config)
        if fp.get("inter_sha256") and fp["inter_sha256"] != now["inter_sha256"]:
            raise UnrankError(
                f"checkpoint '{path}' was trained on a different {now['inter_file']} (sha256 "
                f"{fp['inter_sha256'][:12]}..., the file in {config['data_path']} has "
                f"{str(now['inter_sha256'])[:12]}...): use the data it was trained on"
            )
        diff = sorted(k for k, v in fp.get("split", {}).items() if now["split"].get(k, v) != v)
        if diff:
            raise UnrankError(f"checkpoint '{path}' was trained with other split settings "
                              f"({', '.join(diff)}): use the checkpoint's settings")
        return
    old_path = _old_config_get(old, "data_path")
    where = ""
    if old_path and os.path.realpath(str(old_path)) != os.path.realpath(config["data_path"]):
        where = f" (it was trained on data in '{old_path}', this run reads '{config['data_path']}')"
    logger.warning(
        "checkpoint '%s' carries no fingerprint of its training data (RecBole does not write one): "
        "dataset name, seed and eval_args are checked; the content of %s could not be checked%s",
        path, os.path.basename(_inter_file(config)), where,
    )


# --------------------------------------------------------------------------- settings
def _model_yaml_keys(model_name: str) -> set[str]:
    from recbole_unrank.config import PROPERTIES_DIR

    keys: set[str] = set()
    recbole_dir = os.path.dirname(os.path.realpath(sys.modules["recbole"].__file__))
    for folder in (os.path.join(PROPERTIES_DIR, "model"), os.path.join(recbole_dir, "properties", "model")):
        f = os.path.join(folder, f"{model_name}.yaml")
        if os.path.isfile(f):
            with open(f, encoding="utf-8") as fh:
                keys.update((yaml.safe_load(fh) or {}).keys())
    return keys - {"train_neg_sample_args"}


def _explicit_keys(config) -> set[str]:
    """Keys the user set (config files, config_dict, command line), not defaults."""
    return set(getattr(config, "external_config_dict", {}) or {})


def _short(value) -> str:
    text = repr(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def adopt_checkpoint_config(config, ckpt: dict, path: str = "checkpoint") -> None:
    """Make ``config`` describe the checkpoint's model and split.

    * the model's own hyperparameters (embedding size, layers, ...) are the checkpoint's;
    * split-defining settings (:data:`SPLIT_KEYS`: seed, eval_args, filters, load_col, ...)
      are the checkpoint's; one the user set to a different value is refused (UnrankError);
    * training settings (:data:`TRAINING_KEYS`) are the checkpoint's unless the user set them.
    One log line lists what was adopted."""
    old = ckpt["config"]
    old_final = getattr(old, "final_config_dict", None)
    if not isinstance(old_final, dict):
        raise UnrankError(f"checkpoint '{path}' is not a RecBole checkpoint (its config is a "
                          f"{type(old).__name__})")
    model_name = old_final.get("model")
    if model_name == "ShardEnsemble":
        raise UnrankError(f"checkpoint '{path}' is a SISA/RecEraser shard ensemble (of "
                          f"{old_final.get('ensemble_model')}): start from the original model's checkpoint")
    if model_name and model_name != config["model"]:
        raise UnrankError(f"checkpoint '{path}' holds a {model_name} model, not {config['model']}: "
                          f"run with -m {model_name}")
    for key in _model_yaml_keys(config["model"]):
        if key in old_final:
            config[key] = old_final[key]
    explicit = _explicit_keys(config)
    final = config.final_config_dict
    mismatched, split_adopted, train_adopted = [], [], []
    for key in SPLIT_KEYS:
        if key not in old_final or _plain(old_final[key]) == _plain(final.get(key)):
            continue
        if key in explicit:
            mismatched.append(f"{key}={_short(final.get(key))} (checkpoint: {_short(old_final[key])})")
            continue
        split_adopted.append(f"{key}={_short(old_final[key])}")
        final[key] = copy.deepcopy(old_final[key])
    if mismatched:
        raise UnrankError(
            f"checkpoint '{path}' was trained on another split: you set {'; '.join(mismatched)}; "
            "drop these settings to use the checkpoint's"
        )
    if split_adopted:
        for key in _DERIVED_SPLIT_KEYS:
            if key in old_final:
                final[key] = copy.deepcopy(old_final[key])
    for key in TRAINING_KEYS:
        if key in explicit or key not in old_final or _plain(old_final[key]) == _plain(final.get(key)):
            continue
        train_adopted.append(f"{key}={_short(old_final[key])}")
        final[key] = copy.deepcopy(old_final[key])
        for derived in _DERIVED_TRAINING_KEYS.get(key, ()):
            if derived in old_final:
                final[derived] = old_final[derived]
    if split_adopted or train_adopted:
        logger.info("settings adopted from checkpoint '%s': %s", path, ", ".join(split_adopted + train_adopted))


# --------------------------------------------------------------------------- models
def load_checkpoint(config, ckpt: dict, train_ds, path: str = "checkpoint"):
    """Build the model on ``train_ds`` and load ``ckpt`` into it, checking it matches."""
    old = ckpt["config"]
    model_name = old["model"] if "model" in getattr(old, "final_config_dict", {}) else None
    if model_name and model_name != config["model"]:
        raise UnrankError(f"checkpoint '{path}' holds a {model_name} model, not {config['model']}: "
                          f"run with -m {model_name}")
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
        theirs = _old_config_get(old, key)
        if theirs is not None and theirs != config[key]:
            raise UnrankError(f"checkpoint '{path}' was trained with {key}={theirs}, the dataset uses "
                              f"{config[key]}: use the checkpoint's dataset and config")
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_ds).to(config["device"])
    mine = model.state_dict()
    for name, tensor in ckpt["state_dict"].items():
        if name in mine and tuple(mine[name].shape) != tuple(tensor.shape):
            raise UnrankError(
                f"checkpoint '{path}' does not match dataset '{config['dataset']}': {name} has shape "
                f"{tuple(tensor.shape)}, the dataset needs {tuple(mine[name].shape)} "
                f"({train_ds.user_num} users, {train_ds.item_num} items); use the dataset it was trained on"
            )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UnrankError(f"checkpoint '{path}' does not fit {config['model']}: {str(exc).splitlines()[0]}") from None
    get_adapter(model).load_extras(ckpt.get("other_parameter"))
    model.eval()
    return model


def _fresh_optimizer_state(model, config) -> dict:
    """The state_dict of the optimizer RecBole's trainer would build for ``model`` (nothing
    accumulated yet), so ``Trainer.resume_checkpoint`` can load it."""
    from recbole.trainer import Trainer

    holder = types.SimpleNamespace(
        model=model, config=config, logger=logger,
        learner=config["learner"] or "adam", learning_rate=config["learning_rate"] or 1e-3,
        weight_decay=config["weight_decay"] or 0.0,
    )
    params = [p for p in model.parameters()]
    if not params:
        return {}
    return Trainer._build_optimizer(holder, params=params).state_dict()


def _ensemble_config(model, config):
    """The config a :class:`ShardEnsemble` checkpoint carries: the run's, with ``model`` set to
    ``ShardEnsemble`` and the sub-models' class and count (``ensemble_model``, ``ensemble_size``)."""
    from recbole_unrank.models.ensemble import ShardEnsemble

    saved = copy.deepcopy(config)
    saved.final_config_dict["ensemble_model"] = config["model"]
    saved.final_config_dict["ensemble_size"] = len(model.models)
    saved.final_config_dict["model"] = "ShardEnsemble"
    saved.model, saved.model_class = "ShardEnsemble", ShardEnsemble
    return saved


def save_trained(state: dict, config, path: str) -> str:
    """Save RecBole's own checkpoint of a model just trained (``state``, as
    ``Trainer._save_checkpoint`` wrote it) at ``path``, atomically, with the fingerprint of the
    data it was trained on."""
    state["unrank"] = {"fingerprint": data_fingerprint(config)}
    atomic_torch_save(state, path)
    return path


def save_checkpoint(model, config, path: str, extra: dict | None = None) -> str:
    """Write ``model`` as a RecBole checkpoint (the keys ``Trainer._save_checkpoint`` writes),
    atomically. It also holds: the (retained) graph of a graph model in ``other_parameter``;
    a fresh optimizer state, so ``Trainer.resume_checkpoint`` continues training from it; and
    under ``unrank`` the data fingerprint and ``extra`` (method, request). A shard ensemble is
    saved as ONE checkpoint of the RecBole model ``ShardEnsemble``."""
    from recbole_unrank.models.ensemble import ShardEnsemble

    saved_config = _ensemble_config(model, config) if isinstance(model, ShardEnsemble) else config
    bigger = config["valid_metric_bigger"]
    state = {
        "config": saved_config,
        "epoch": -1,  # no trainer epoch has run on this model: resuming starts at epoch 0
        "cur_step": 0,
        "best_valid_score": -math.inf if bigger is None or bigger else math.inf,
        "state_dict": model.state_dict(),
        "other_parameter": get_adapter(model).checkpoint_extras() or None,
        "optimizer": _fresh_optimizer_state(model, config),
        "unrank": {"fingerprint": data_fingerprint(config), **(extra or {})},
    }
    atomic_torch_save(state, path)
    return path


def request_record(request, data) -> dict:
    """The request as a checkpoint keeps it: this request's summary, and every pair the model
    has forgotten (this request's and, for a model that was already unlearned, the earlier
    ones: ``data.prior_rows``) as (user, item) tokens and rows of the full train split (checked
    against the tokens when the split is rebuilt)."""
    rows = np.asarray(request.index, dtype=np.int64)
    if data.row_map is not None:  # rows of the reduced train split -> rows of the full one
        rows = data.row_map[rows]
    if data.prior_rows is not None:
        rows = np.union1d(rows, data.prior_rows)
    full = data.full_train_ds if data.full_train_ds is not None else data.train_ds
    ds, feat = data.dataset, full.inter_feat
    users, items = feat[ds.uid_field].numpy()[rows], feat[ds.iid_field].numpy()[rows]
    return {
        **request.summary(),
        "forgotten_before": 0 if data.prior_rows is None else int(data.prior_rows.size),
        "user_tokens": [str(t) for t in ds.id2token(ds.uid_field, users)],
        "item_tokens": [str(t) for t in ds.id2token(ds.iid_field, items)],
        "train_rows": [int(i) for i in rows],
    }


def forgotten_rows(data, ckpt: dict, path: str = "checkpoint") -> np.ndarray | None:
    """Rows of the train split an unlearned checkpoint has already forgotten (None: none)."""
    record = (ckpt.get("unrank") or {}).get("request")
    if isinstance(record, dict) and "train_rows" in record:
        return np.sort(_request_rows(data, record, path))
    return None


def _request_rows(data, record: dict, path: str) -> np.ndarray:
    """The request's rows of the rebuilt train split, checked against its stored tokens."""
    ds, feat = data.dataset, data.train_ds.inter_feat
    rows = np.asarray(record["train_rows"], dtype=np.int64)
    try:
        users = np.asarray(ds.token2id(ds.uid_field, list(record["user_tokens"])), dtype=np.int64)
        items = np.asarray(ds.token2id(ds.iid_field, list(record["item_tokens"])), dtype=np.int64)
    except ValueError:
        users = items = None
    ok = (
        users is not None and rows.size == users.size == items.size
        and bool(((rows >= 0) & (rows < len(feat))).all())
        and np.array_equal(feat[ds.uid_field].numpy()[rows], users)
        and np.array_equal(feat[ds.iid_field].numpy()[rows], items)
    )
    if not ok:
        raise UnrankError(f"checkpoint '{path}': its request is not in the train split rebuilt from "
                          "its settings (the data or the split changed): use the data it was trained on")
    return rows


def load_unlearned(path: str, trust: bool = False, gpu_id: str | None = None):
    """An unlearned checkpoint as RecBole's ``load_data_and_model`` returns a checkpoint:
    ``(config, model, dataset, train_data, valid_data, test_data)``, where ``train_data`` is
    the *retained* train split (the request removed) and valid / test mask only the retained
    history, so ``Trainer(config, model).evaluate(test_data, load_best_model=False)`` gives
    the run's ``results.json`` test metrics. A checkpoint without a request (an original
    model) gives the full train split. ``gpu_id`` overrides the checkpoint's (``""``: the CPU);
    a checkpoint written on a GPU loads on a machine without one."""
    from recbole_unrank.data import load_data, make_loaders
    from recbole_unrank.request import ForgetRequest, split_train

    ckpt = read_checkpoint(path, trust)
    config = ckpt["config"]
    if gpu_id is not None:
        config["gpu_id"] = str(gpu_id)
    config["device"] = config_device(config)
    if not os.path.isfile(_inter_file(config)):
        raise UnrankError(f"checkpoint '{path}' was trained on {_inter_file(config)}, which does not "
                          "exist here: load it from the folder the run was started in")
    check_provenance(config, ckpt, path)
    data = load_data(config)
    record = (ckpt.get("unrank") or {}).get("request")
    retain_ds = data.train_ds
    if isinstance(record, dict) and "train_rows" in record:
        rows = _request_rows(data, record, path)
        request = ForgetRequest(np.sort(rows), np.empty(0), np.empty(0), "file")
        retain_ds, _ = split_train(data.train_ds, request)
    model_class = get_model(config["model"])
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, retain_ds).to(config["device"])
    model.load_state_dict(ckpt["state_dict"])
    get_adapter(model).load_extras(ckpt.get("other_parameter"))
    model.eval()
    train_data, valid_data, test_data = make_loaders(config, data, retain_ds)
    return config, model, data.dataset, train_data, valid_data, test_data
