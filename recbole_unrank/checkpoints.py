"""Checkpoint files: reading, writing and the round trip of a model.

* :func:`read_checkpoint` reads a RecBole checkpoint through the restricted unpickler
  (:mod:`recbole_unrank.unpickle`) and refuses non-finite parameters.
* :func:`save_checkpoint` / :func:`save_trained` write RecBole's checkpoint keys atomically
  (:mod:`recbole_unrank.atomic`) with the fingerprint of the training data
  (:mod:`recbole_unrank.provenance`); :func:`load_checkpoint` builds the model and loads it.
* An unlearned checkpoint also carries its request (:func:`request_record`), so
  :func:`recbole_unrank.api.load_unlearned` rebuilds RecBole's loaders over the *retained* train
  split (:func:`request_rows` checks the stored rows against their tokens).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import types

import numpy as np
import torch
from recbole.utils import init_seed

from recbole_unrank.adapters import get_adapter
from recbole_unrank.atomic import atomic_torch_save
from recbole_unrank.errors import UnrankError
from recbole_unrank.models import get_model
from recbole_unrank.provenance import data_fingerprint, saved_setting
from recbole_unrank.unpickle import UntrustedGlobal, load_file

__all__ = [
    "read_checkpoint",
    "check_finite_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_trained",
    "request_record",
    "request_rows",
    "forgotten_rows",
]

logger = logging.getLogger("recbole_unrank")


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


# --------------------------------------------------------------------------- models
def load_checkpoint(config, ckpt: dict, train_ds, path: str = "checkpoint"):
    """Build the model on ``train_ds`` and load ``ckpt`` into it, checking it matches."""
    old = ckpt["config"]
    model_name = old["model"] if "model" in getattr(old, "final_config_dict", {}) else None
    if model_name and model_name != config["model"]:
        raise UnrankError(f"checkpoint '{path}' holds a {model_name} model, not {config['model']}: "
                          f"run with -m {model_name}")
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
        theirs = saved_setting(old, key)
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
        return np.sort(request_rows(data, record, path))
    return None


def request_rows(data, record: dict, path: str) -> np.ndarray:
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
