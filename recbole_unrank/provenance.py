"""Provenance of a checkpoint: which data it was trained on, and which settings it brings.

* :func:`data_fingerprint` (dataset name, sha256 of the ``.inter`` file, split settings) is
  written into every checkpoint this package saves; :func:`check_provenance` compares it with
  the data a run reads.
* :func:`adopt_checkpoint_config` makes a run's ``Config`` describe the checkpoint's model and
  split (its hyperparameters, :data:`SPLIT_KEYS`, and :data:`TRAINING_KEYS` the user left unset).

The file format (reading, writing, the round trip) is :mod:`recbole_unrank.checkpoints`.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import logging
import os
import sys

import numpy as np
import yaml
from recbole.utils.argument_list import dataset_arguments

from recbole_unrank.config import PROPERTIES_DIR
from recbole_unrank.errors import UnrankError

__all__ = ["SPLIT_KEYS", "TRAINING_KEYS", "data_fingerprint", "split_settings", "check_provenance",
           "adopt_checkpoint_config", "inter_file", "saved_setting"]

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


def inter_file(config) -> str:
    """The ``.inter`` file ``config`` reads."""
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
    inter = inter_file(config)
    return {
        "dataset": config["dataset"],
        "inter_file": os.path.basename(inter),
        "inter_sha256": _sha256(inter) if os.path.isfile(inter) else None,
        "split": split_settings(config),
    }


def saved_setting(old, key: str):
    """``old[key]`` of a checkpoint's config, None where it has no such key."""
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
    theirs = fp["dataset"] if fp else saved_setting(old, "dataset")
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
    old_path = saved_setting(old, "data_path")
    where = ""
    if old_path and os.path.realpath(str(old_path)) != os.path.realpath(config["data_path"]):
        where = f" (it was trained on data in '{old_path}', this run reads '{config['data_path']}')"
    logger.warning(
        "checkpoint '%s' carries no fingerprint of its training data (RecBole does not write one): "
        "dataset name, seed and eval_args are checked; the content of %s could not be checked%s",
        path, os.path.basename(inter_file(config)), where,
    )


def _model_yaml_keys(model_name: str) -> set[str]:
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
