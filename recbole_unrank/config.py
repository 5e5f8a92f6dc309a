"""RecBole ``Config`` with this package's properties (``unrank_*`` keys and our models' YAML),
the documentation of every ``unrank_*`` key, the check of the settings a user gives, and the
presets shipped with the package.

Layers, lowest first: RecBole's overall.yaml -> ``properties/unrank.yaml`` -> model YAML
(ours for WMF, RecBole's for the rest) -> dataset YAML -> ``config_files`` -> ``config_dict``
-> command line, exactly RecBole's order with our file slotted in.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from recbole.config import Config

from recbole_unrank import compat  # noqa: F401
from recbole_unrank.errors import UnrankError, arg, setting
from recbole_unrank.models import UnknownModelError, get_model

__all__ = ["UnrankConfig", "build_config", "PROPERTIES_DIR", "PRESETS_DIR", "KeyDoc", "unrank_keys", "check_settings",
           "given_as", "preset_names", "preset_path", "unrank_defaults", "default_of", "user_settings", "same_value"]

PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
PROPERTIES_DIR = os.path.join(PACKAGE_DIR, "properties")
PRESETS_DIR = os.path.join(PACKAGE_DIR, "presets")


class UnrankConfig(Config):
    """RecBole's ``Config`` that also reads recbole-unrank's properties files."""

    def __init__(
        self,
        model: str | type | None = None,
        dataset: str | None = None,
        config_file_list: list[str] | None = None,
        config_dict: dict[str, Any] | None = None,
    ):
        if isinstance(model, str):
            model = get_model(model)
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        ours = [os.path.join(PROPERTIES_DIR, "unrank.yaml")]
        ours.append(os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"))
        model_type = self.internal_config_dict["MODEL_TYPE"]
        # RecBole's own model YAML must win over our project-wide defaults, so re-apply it.
        recbole_model_file = os.path.join(
            os.path.dirname(os.path.realpath(__import__("recbole").__file__)),
            "properties", "model", f"{model}.yaml",
        )
        for file in ours + [recbole_model_file]:
            if os.path.isfile(file):
                self._update_internal_config_dict(file)
        self.internal_config_dict["MODEL_TYPE"] = model_type


# --------------------------------------------------------------------------- unrank_* keys
@dataclass(frozen=True)
class KeyDoc:
    """One ``unrank_*`` key as ``properties/unrank.yaml`` documents it."""

    key: str
    default: str  # as written in the YAML
    kind: str  # the "(...)" type of its comment: int, float, bool, str, list, "int or None", ...
    doc: str

    @property
    def types(self) -> set[str]:
        return {t.strip() for t in self.kind.split(" or ")}


_KEY_LINE = re.compile(r"^(unrank_\w+):\s*(.*?)\s+#\s*\(([^)]*)\)\s*(.*)$")
_KEYS: dict[str, KeyDoc] | None = None


def unrank_keys() -> dict[str, KeyDoc]:
    """Every ``unrank_*`` key, in file order, with its type and documentation (the comment
    beside it in ``properties/unrank.yaml``)."""
    global _KEYS
    if _KEYS is None:
        keys = {}
        with open(os.path.join(PROPERTIES_DIR, "unrank.yaml"), encoding="utf-8") as f:
            for line in f:
                m = _KEY_LINE.match(line.rstrip("\n"))
                if m:
                    keys[m.group(1)] = KeyDoc(m.group(1), m.group(2), m.group(3).strip(), m.group(4).strip())
        _KEYS = keys
    return _KEYS


_DEFAULTS: dict[str, Any] | None = None


def unrank_defaults() -> dict[str, Any]:
    """Every ``unrank_*`` key's default, parsed once from ``properties/unrank.yaml`` with
    RecBole's own YAML loader (so ``1e-2`` is a float, as in a ``Config``). The one source of
    every default: methods, streams and the tuner read it here, never a copy in code."""
    global _DEFAULTS
    if _DEFAULTS is None:
        import yaml

        with open(os.path.join(PROPERTIES_DIR, "unrank.yaml"), encoding="utf-8") as f:
            loaded = yaml.load(f.read(), Loader=Config._build_yaml_loader(None)) or {}
        _DEFAULTS = {k: v for k, v in loaded.items() if k.startswith("unrank_")}
    return dict(_DEFAULTS)


def default_of(key: str) -> Any:
    """The YAML default of one ``unrank_*`` key (a copy of lists, so callers may change it)."""
    value = unrank_defaults()[key]
    return list(value) if isinstance(value, list) else value


def same_value(a: Any, b: Any) -> bool:
    """A given value equal to the default (numbers compared as numbers, ``1`` == ``1.0``)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return a == b and type(a) is type(b)


def user_settings(config) -> dict[str, Any]:
    """The ``unrank_*`` settings the user gave (config files, presets, ``config_dict``, command
    line) whose value differs from the YAML default: what a method must either act on or
    refuse. A restated default changes nothing, so it is not counted as given."""
    defaults = unrank_defaults()
    given: dict[str, Any] = {}
    for name in ("file_config_dict", "variable_config_dict", "cmd_config_dict"):
        for key in (getattr(config, name, None) or {}):
            if key.startswith("unrank_") and key in defaults:
                value = config[key]
                if not same_value(value, defaults[key]):
                    given[key] = value
    return given


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(default) -> str:
    return "None" if default in ("~", "null", None) else str(default)


def _check_type(key: str, value, kinds: set[str], default, source: str) -> None:
    if value is None and "None" in kinds:
        return
    if isinstance(value, str) and value in kinds - {"int", "float", "number", "bool", "str", "list", "None"}:
        return  # a literal the type names, e.g. "(float or auto)"
    shown = setting(key, value, source)
    if "int" in kinds and not _is_int(value):
        what = "not a whole number" if _is_number(value) else "not a number"
        raise UnrankError(f"{shown} is {what}: {key} takes an integer (default {_shown(default)})")
    if "float" in kinds and not _is_number(value):
        raise UnrankError(f"{shown} is not a number: {key} takes a number (default {_shown(default)})")
    if kinds == {"number"} and not _is_number(value):
        raise UnrankError(f"{shown} is not a number: {key} takes a number (default {_shown(default)})")
    if "bool" in kinds and not isinstance(value, bool):
        raise UnrankError(f"{shown} is not True or False: {key} is a switch (default {_shown(default)})")


def _unknown_key(key: str, source: str) -> UnrankError:
    where = {"cmd": f"--{key}", "dict": f"config_dict['{key}']"}.get(
        source, f"'{key}' in {arg('config_file_list').rstrip('=')}")
    close = difflib.get_close_matches(key, list(unrank_keys()), n=1, cutoff=0.6)
    hint = (f"did you mean {close[0]}?" if close
            else "the unrank_* keys are listed by --help and in recbole_unrank/properties/unrank.yaml")
    return UnrankError(f"unknown setting {where}: {hint}")


def given_as(config, key: str, value=None) -> str:
    """The setting ``key`` of ``config`` named where the user gave it (the command line, the
    ``config_dict`` or a config file, the one that wins), with ``value`` (default: its value);
    a setting the user did not give is named the way the caller gives settings."""
    for source, given in (("cmd", "cmd_config_dict"), ("dict", "variable_config_dict"), ("file", "file_config_dict")):
        given = getattr(config, given, None) or {}
        if key in given:
            return setting(key, given[key] if value is None else value, source)
    return setting(key, config[key] if value is None else value)


def check_settings(config) -> None:
    """Refuse what the user gave (config files, ``config_dict``, command line) that RecBole would
    accept silently: an ``unrank_*`` key that does not exist, a value of the wrong type for an
    ``unrank_*`` key or for a RecBole key whose default is a number or a switch."""
    keys = unrank_keys()
    internal = config.internal_config_dict
    for source, given in (("file", config.file_config_dict), ("dict", config.variable_config_dict),
                          ("cmd", config.cmd_config_dict)):
        for key, value in (given or {}).items():
            if key.startswith("unrank_"):
                if key not in keys:
                    raise _unknown_key(key, source)
                _check_type(key, value, keys[key].types, keys[key].default, source)
                continue
            default = internal.get(key)
            if isinstance(default, bool):
                _check_type(key, value, {"bool"}, default, source)
            elif _is_number(default):
                _check_type(key, value, {"number"}, default, source)


# --------------------------------------------------------------------------- presets
def preset_names() -> list[str]:
    """The presets shipped with the package (``--preset NAME``)."""
    if not os.path.isdir(PRESETS_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def preset_path(name: str) -> str:
    """The YAML file of preset ``name`` (``l2unrank-paper``, ``ml-100k``, ``LightGCN``, ...)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = os.path.join(PRESETS_DIR, f"{stem}.yaml")
    if not os.path.isfile(path):
        raise UnrankError(f"unknown preset '{name}' ({arg('preset').rstrip('=')}): "
                          f"choose from {', '.join(preset_names())}")
    return path


def build_config(
    model: str | None,
    dataset: str | None,
    config_files: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    argv: list[str] | None = None,
) -> UnrankConfig:
    """A RecBole config with our properties; unknown model / missing files / settings of the
    wrong type or name -> UnrankError. ``argv``: the ``--key=value`` settings RecBole's
    ``Config`` reads from the command line (None: ``sys.argv`` itself, as RecBole does)."""
    for f in config_files or []:
        if not os.path.isfile(f):
            raise UnrankError(f"config file '{f}' does not exist: check {arg('config_file_list').rstrip('=')}")
    if model is None:
        raise UnrankError(f"no model given: pass {arg('model')} (e.g. WMF, NeuMF, LightGCN)")
    try:
        model_class = get_model(model)
    except UnknownModelError as exc:
        raise UnrankError(str(exc)) from None
    if model == "ShardEnsemble":
        raise UnrankError("ShardEnsemble is how sisa/receraser save their ensembles, not a model to "
                          "train or unlearn: pass the sub-model's name with -m (e.g. LightGCN)")
    if model_class.type.name not in ("GENERAL", "TRADITIONAL"):
        raise UnrankError(
            f"model '{model}' is a {model_class.type.name.lower()} recommender: "
            "recbole-unrank unlearns general (user-item) recommenders"
        )
    saved_argv = sys.argv
    if argv is not None:
        sys.argv = [sys.argv[0] if sys.argv else "recbole_unrank", *argv]
    try:
        config = UnrankConfig(model_class, dataset, config_files, config_dict)
    except Exception as exc:  # RecBole's Config fails only on what the user gave it
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UnrankError(f"bad configuration ({type(exc).__name__}: {first}): check the settings") from None
    finally:
        sys.argv = saved_argv
    check_settings(config)
    _check_dataset_exists(config)
    return config


def _check_dataset_exists(config) -> None:
    name = config["dataset"]
    folder = os.path.join(config["data_path"])
    if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
        raise UnrankError(
            f"dataset '{name}' not found: expected {os.path.join(folder, name + '.inter')}; "
            "set data_path to the folder that holds <dataset>/<dataset>.inter"
        )
