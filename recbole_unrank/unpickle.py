"""The restricted unpickler a checkpoint is read with, and its allow-lists.

A leaf (imports nothing of the package): :mod:`recbole_unrank.compat` hands it to
``torch.load`` for RecBole's own loaders and :mod:`recbole_unrank.checkpoints` reads every
checkpoint through it.

:class:`RestrictedUnpickler` answers the value types a RecBole checkpoint holds (torch's own
weights-only list, numpy scalars and arrays, RecBole's enums, its ``Config``) and, as plain
references that are never called, RecBole model classes and YAML loaders. Anything else is
refused before it runs. torch's ``weights_only=True`` cannot do this job: its unpickler stops at
pickle protocol 4's ``FRAME`` opcode, and RecBole's ``Trainer`` saves with ``pickle_protocol=4``.
``trust=True`` (``unrank_trust_checkpoint``) loads with Python's full unpickler.
"""

from __future__ import annotations

import collections
import enum
import importlib
import io
import pathlib
import pickle
import sys
import types
from typing import Any

import numpy as np
import torch
import yaml
from recbole.config import Config
from recbole.model.abstract_recommender import AbstractRecommender

__all__ = ["UntrustedGlobal", "RestrictedUnpickler", "restricted_pickle_module", "load_file"]


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
