"""original -> request -> methods -> evaluate -> report.

The only module (with :mod:`recbole_unrank.config` and the command lines) that touches
RecBole's ``Config``, datasets, loaders and trainers. Data flows one way; every check of the
user's input happens before the run folder is created, so bad input writes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recbole_unrank import compat  # noqa: F401
from recbole.data import create_dataset
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.utils import create_samplers, get_dataloader
from recbole.sampler import Sampler
from recbole.utils import get_trainer, init_seed

from recbole_unrank import measures
from recbole_unrank import metrics as unrank_metrics
from recbole_unrank.adapters.train_data import keeps_train_data
from recbole_unrank.checkpoints import (
    adopt_checkpoint_config,
    atomic_torch_save,
    check_provenance,
    data_fingerprint,
    forgotten_rows,
    load_checkpoint,
    load_file,
    read_checkpoint,
    request_record,
    save_checkpoint,
)
from recbole_unrank.config import UnrankConfig, check_settings
from recbole_unrank.errors import UnrankError, arg
from recbole_unrank.report import pause_point
from recbole_unrank.methods import METHODS, UnlearnTask, check_finite
from recbole_unrank.methods.partition import PartitionMethod
from recbole_unrank.methods.retrain import Retrain
from recbole_unrank.models import UnknownModelError, get_model
from recbole_unrank.request import (
    ForgetRequest,
    check_request_file,
    read_request_file,
    sample_request,
    split_train,
    write_request_file,
)

__all__ = [
    "Data",
    "Run",
    "build_config",
    "load_data",
    "make_loaders",
    "make_train_loader",
    "make_forget_loader",
    "train_model",
    "read_checkpoint",
    "adopt_checkpoint_config",
    "load_checkpoint",
    "save_checkpoint",
    "make_request",
    "method_names",
    "run_pipeline",
    "prepare_run",
    "new_run_dir",
    "finish_run_dir",
    "INCOMPLETE",
]

logger = logging.getLogger("recbole_unrank")
# Measures that compare a model with the original: need the original's ranks as reference.
REFERENCE_METRICS = {"rdr", "urr", "rank_decline_ratio"}


# --------------------------------------------------------------------------- config / data
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


@dataclass
class Data:
    """The dataset and its three splits (RecBole ``Dataset`` objects)."""

    dataset: Any
    train_ds: Any
    valid_ds: Any
    test_ds: Any
    # Starting from an unlearned checkpoint: train_ds is the full train split without the
    # pairs it already forgot (prior_rows, rows of full_train_ds); row_map[i] is the full
    # split's row of train_ds's row i.
    full_train_ds: Any = None
    prior_rows: np.ndarray | None = None
    row_map: np.ndarray | None = None


def without_forgotten(data: Data, rows: np.ndarray) -> Data:
    """``data`` whose train split leaves out ``rows`` (pairs an unlearned model already forgot),
    ids and shapes unchanged."""
    keep = np.ones(len(data.train_ds.inter_feat), dtype=bool)
    keep[rows] = False
    row_map = np.flatnonzero(keep)
    reduced = data.train_ds.copy(data.train_ds.inter_feat[torch.from_numpy(row_map)])
    return Data(data.dataset, reduced, data.valid_ds, data.test_ds, data.train_ds, rows, row_map)


def load_data(config) -> Data:
    # RecBole's random split shuffles with torch's global generator: seed it first, as
    # run_recbole does, so that the same seed gives the same splits.
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_ds, valid_ds, test_ds = dataset.build()
    return Data(dataset, train_ds, valid_ds, test_ds)


def make_train_loader(config, data: Data, train_ds):
    """A RecBole training loader over ``train_ds`` alone (no evaluation loaders built)."""
    built = [train_ds, data.valid_ds, data.test_ds]
    train_sampler, _, _ = create_samplers(config, data.dataset, built)
    return get_dataloader(config, "train")(config, train_ds, train_sampler, shuffle=config["shuffle"])


def make_loaders(config, data: Data, train_ds=None):
    """RecBole train / valid / test loaders whose history masks follow ``train_ds``
    (the retained train set for everything after the request)."""
    train_ds = data.train_ds if train_ds is None else train_ds
    built = [train_ds, data.valid_ds, data.test_ds]
    train_sampler, valid_sampler, test_sampler = create_samplers(config, data.dataset, built)
    train = get_dataloader(config, "train")(config, train_ds, train_sampler, shuffle=config["shuffle"])
    valid = get_dataloader(config, "valid")(config, data.valid_ds, valid_sampler, shuffle=False)
    test = get_dataloader(config, "test")(config, data.test_ds, test_sampler, shuffle=False)
    return train, valid, test


def make_forget_loader(config, retain_ds, forget_ds) -> FullSortEvalDataLoader:
    """Full-sort loader over the forget pairs with only the *retained* history masked."""
    sampler = Sampler(["retain", "forget"], [retain_ds, forget_ds], distribution="uniform")
    return FullSortEvalDataLoader(config, forget_ds, sampler.set_phase("forget"), shuffle=False)


# --------------------------------------------------------------------------- models
def train_model(config, train_loader, valid_loader, path: str | None = None, tag: str = "model"):
    """Train a fresh model of ``config['model']`` on ``train_loader``'s data with RecBole's
    trainer (early stopping on ``valid_loader``); keep the best epoch. Returns ``(model, info)``.
    With ``path``, the best model is saved there as a RecBole checkpoint (atomically)."""
    init_seed(config["seed"], config["reproducibility"])
    model_class = get_model(config["model"])
    model = model_class(config, train_loader._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    scratch = (path or os.path.join(config["checkpoint_dir"], f"{tag}-{os.getpid()}.pth")) + ".tmp"
    os.makedirs(os.path.dirname(scratch) or ".", exist_ok=True)
    trainer.saved_model_file = scratch
    logger.info("training %s (%s) on %d interactions", config["model"], tag, len(train_loader._dataset))
    start = time.perf_counter()
    metric = config["valid_metric"]

    def progress(epoch_idx: int, valid_score: float) -> None:  # one compact line per epoch
        logger.info("[%s] epoch %d: valid %s %.4f (best %.4f, %.0fs)", tag, epoch_idx + 1, metric,
                    valid_score, trainer.best_valid_score, time.perf_counter() - start)

    best_score, _ = trainer.fit(
        train_loader, valid_loader, verbose=False, saved=True, show_progress=config["show_progress"],
        callback_fn=progress,
    )
    elapsed = time.perf_counter() - start
    epochs = len(trainer.train_loss_dict)
    if os.path.isfile(scratch):  # the best epoch (RecBole saves it when validation improves)
        state = load_file(scratch, map_location=config["device"])
        model.load_state_dict(state["state_dict"])
        model.load_other_parameter(state.get("other_parameter"))
        if path:  # RecBole's checkpoint, with the fingerprint of the data it was trained on
            state["unrank"] = {"fingerprint": data_fingerprint(config)}
            atomic_torch_save(state, path)
        os.remove(scratch)
    model.eval()
    logger.info("trained %s (%s): %d epochs, %.1fs, best valid %.4f", config["model"], tag, epochs, elapsed, best_score)
    return model, {"epochs": epochs, "time_s": elapsed, "best_valid_score": float(best_score)}


# --------------------------------------------------------------------------- request
def make_request(config, data: Data) -> ForgetRequest:
    path = config["unrank_request_file"]
    if path:
        return read_request_file(path, data.dataset, data.train_ds, data.valid_ds, data.test_ds)
    return sample_request(
        data.train_ds,
        source=config["unrank_request"],
        user_ratio=config["unrank_user_ratio"],
        inter_ratio=config["unrank_inter_ratio"],
        item_ratio=config["unrank_item_ratio"],
        seed=request_seed(config),
        user_selection=config["unrank_request_users"],
    )


def request_seed(config) -> int:
    """The seed the request is drawn from: ``unrank_request_seed``, else the run's ``seed``."""
    value = config["unrank_request_seed"]
    value = config["seed"] if value is None else value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnrankError(f"unrank_request_seed={value!r} is not an integer: give e.g. 1001") from None


def _as_list(value) -> list[str]:
    """A YAML list, or the ``[a,b]`` / ``a,b`` string a command line gives."""
    if isinstance(value, str):
        return [n.strip() for n in value.strip("[]").split(",") if n.strip()]
    return list(value or [])


def method_names(config) -> list[str]:
    names = _as_list(config["unrank_methods"]) or [config["unrank_method"]]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UnrankError(f"unknown unlearning method(s) {unknown}: choose from {sorted(METHODS)}")
    return list(dict.fromkeys(names))


def method_settings(config, method_cls) -> dict:
    return {arg: config[key] for arg, key in method_cls.settings.items()}


# --------------------------------------------------------------------------- evaluation
def _forget_metric_names(config, with_reference: bool) -> list[str]:
    names = [m.lower() for m in config["unrank_metrics"]]
    if not with_reference:
        names = [m for m in names if m not in REFERENCE_METRICS]
    return names


@dataclass
class Run:
    """A prepared run: config, data, the request and its splits, and loaders."""

    config: Any
    data: Data
    request: ForgetRequest
    retain_ds: Any
    forget_ds: Any
    loaders: tuple = ()
    forget_loader: Any = None
    original: Any = None
    original_info: dict = field(default_factory=dict)
    reference: dict | None = None
    rows: list[dict] = field(default_factory=list)
    run_dir: str | None = None

    def evaluate(self, model, name: str, time_s: float, extra: dict | None = None) -> dict:
        """One results row: test utility (retained history masked), forget measures, the
        request users' own utility, fairness against the original, and the audit's features
        (turned into ``audit`` measures by :meth:`finish` once retrain's attack is known)."""
        cfg = self.config
        model.eval()
        _, _, test_loader = self.loaders
        # test pairs rank below the items they tie with (utility is never credited to ties)
        test, test_pairs = unrank_metrics.evaluate_loader(model, test_loader, cfg["metrics"], cfg["topk"],
                                                          ties="against_pair")
        forget, ranks = unrank_metrics.evaluate_loader(
            model,
            self.forget_loader,
            _forget_metric_names(cfg, self.reference is not None),
            cfg["unrank_topk"],
            reference=None if self.reference is None else (self.reference["keys"], self.reference["ranks"]),
        )
        row = {"method": name, "time_s": float(time_s), "test": test, "forget": forget}
        row.update(self._user_measures(test_pairs))
        if extra:
            row.update(extra)
        row["_probe"] = self.auditor.probe(model, with_attack_data=(name == "retrain"))
        if name == "retrain":
            self.retrain_ranks = ranks
        return row, ranks

    # ----------------------------------------------------------------- beyond rank
    @property
    def auditor(self) -> measures.Auditor:
        if getattr(self, "_auditor", None) is None:
            self._auditor = measures.Auditor(
                self.retain_ds, self.forget_ds, self.data.test_ds, score_users,
                seed=request_seed(self.config),
            )
        return self._auditor

    def _user_measures(self, test_pairs: dict) -> dict:
        """``request_users`` (test NDCG@10 / Recall@10 over the request's users) and
        ``fairness`` (test NDCG@10 change against the original, active vs other users)."""
        n_items = int(self.data.train_ds.item_num)
        users, ndcg, recall = measures.per_user_ndcg_recall(test_pairs["keys"], test_pairs["ranks"], n_items, 10)
        request_users = np.unique(self.request.users)
        out = {"request_users": {"ndcg@10": measures.group_mean(users, ndcg, request_users),
                                 "recall@10": measures.group_mean(users, recall, request_users),
                                 "users": int(np.isin(users, request_users).sum())}}
        if getattr(self, "_user_ndcg_original", None) is None:  # the first row is the original
            self._user_ndcg_original = (users, ndcg)
        o_users, o_ndcg = self._user_ndcg_original
        if not np.array_equal(o_users, users):
            raise RuntimeError("test users differ between evaluations of the same split")
        if getattr(self, "_active_users", None) is None:
            train_users = self.data.train_ds.inter_feat[self.data.train_ds.uid_field].numpy()
            self._active_users = measures.active_users(train_users)
        is_active = np.isin(users, self._active_users)
        delta = ndcg - o_ndcg
        out["fairness"] = {
            "active_ndcg@10_delta": float(delta[is_active].mean()) if is_active.any() else None,
            "inactive_ndcg@10_delta": float(delta[~is_active].mean()) if (~is_active).any() else None,
        }
        return out

    def audit_row(self, row: dict) -> dict:
        """Turn a row's audit features into its ``audit`` measures: ``score_auc`` always;
        ``mia_auc`` and retrain agreement once retrain's row is in the run (its model fits the
        attack). Returns the row."""
        if "_probe" not in row:
            return row
        if getattr(self, "_attack", None) is None:
            retrain = next((r for r in self.rows if r["method"] == "retrain"), None)
            p = retrain.get("_probe") if retrain is not None else None
            if p is not None and len(p.members) and len(p.non_members):
                self._attack = measures.fit_attack(p.members, p.non_members, seed=request_seed(self.config))
        probe = row.pop("_probe")
        audit = measures.Auditor.measures(probe, getattr(self, "_attack", None))
        ref = getattr(self, "retrain_ranks", None)
        if ref is not None and "ranks" in row:
            aligned = measures.align_ranks(row["ranks"]["keys"], row["ranks"]["ranks"], ref["keys"])
            audit.update(measures.retrain_agreement(aligned, ref["ranks"]))
        row["audit"] = audit
        return row

    def finish(self) -> None:
        """Audit every row (called once all methods have run); audit_row drops the features."""
        for row in self.rows:
            self.audit_row(row)

    def valid_score(self, model) -> float:
        _, valid_loader, _ = self.loaders
        res, _ = unrank_metrics.evaluate_loader(model, valid_loader, ["NDCG"], [10])
        return float(res["ndcg@10"])

    @property
    def valid_ndcg_sum(self) -> float:
        """The original's validation NDCG@10 summed over validation users (computed once)."""
        if getattr(self, "_valid_sum", None) is None:
            _, valid_loader, _ = self.loaders
            self._valid_sum = self.valid_score(self.original) * len(valid_loader.uid_list)
        return self._valid_sum

    def forget_ranks(self, model) -> np.ndarray:
        _, out = unrank_metrics.evaluate_loader(model, self.forget_loader, ["mean_rank"], [10])
        return out["ranks"]

    def prepare_original(self, ckpt: dict | None = None, checkpoint: str | None = None) -> dict:
        """Train (or load) the original model, build the retained-history loaders, evaluate the
        original: its forget ranks become the reference of every later row."""
        config, data = self.config, self.data
        logger.info("request: %s", self.request.summary())
        if ckpt is None:
            train, valid, _ = make_loaders(config, data)
            path = os.path.join(self.run_dir, "original.pth") if self.run_dir else None
            self.original, self.original_info = train_model(config, train, valid, path, tag="original")
            self.original_info["checkpoint"] = path
        else:
            if self.original is None:
                self.original = load_checkpoint(config, ckpt, data.train_ds, checkpoint)
            self.original_info = {"epochs": None, "time_s": 0.0, "checkpoint": os.path.abspath(checkpoint)}
        self.loaders = make_loaders(config, data, self.retain_ds)
        self.forget_loader = make_forget_loader(config, self.retain_ds, self.forget_ds)
        row, ranks = self.evaluate(self.original, "original", 0.0,
                                   {"train_s": self.original_info["time_s"], "epochs": self.original_info["epochs"]})
        self.reference = ranks
        row["ranks"] = ranks
        self.rows.append(row)
        _log_row(row)
        return row

    def _task(self, model=None) -> UnlearnTask:
        config = self.config
        return UnlearnTask(
            model=copy.deepcopy(self.original if model is None else model),
            model_name=config["model"],
            train_ds=self.data.train_ds,
            retain_ds=self.retain_ds,
            forget_ds=self.forget_ds,
            request_index=self.request.index,
            device=config["device"],
            train_fresh=lambda ds, tag: _train_on(self, ds, tag),
            valid_score=self.valid_score,
            forget_ranks=self.forget_ranks,
            seed=config["seed"],
            valid_ds=self.data.valid_ds,
            valid_ndcg_sum=self.valid_ndcg_sum,
            make_train_loader=lambda ds: make_train_loader(config, self.data, ds),
            train_batch_size=int(config["train_batch_size"]),
        )

    def run_method(self, name: str, overrides: dict | None = None, save: bool = True,
                    evaluate_test: bool = True, label: str | None = None) -> dict:
        """Run one method on a fresh copy of the original; evaluate; optionally save its
        checkpoint; append and return its row. ``overrides`` replace ``unrank_*`` settings."""
        config = self.config
        method_cls = METHODS[name]
        settings = method_settings(config, method_cls)
        if overrides:
            unknown = set(overrides) - set(method_cls.settings.values())
            if unknown:
                raise UnrankError(f"{name} does not take {sorted(unknown)}: its settings are "
                                  f"{sorted(method_cls.settings.values())}")
            inverse = {v: k for k, v in method_cls.settings.items()}
            settings.update({inverse[k]: v for k, v in overrides.items()})
        method = method_cls(**settings)
        label = label or name
        logger.info("[%s] unlearning ...", label)
        result = method(self._task())
        check_finite(result.model, name)
        extra = {"stages": result.stages, **{k: v for k, v in result.info.items() if k != "time_s"}}
        if save and self.run_dir:
            path = os.path.join(self.run_dir, f"{config['model']}-{label}.pth")
            meta = {"method": name, "request": request_record(self.request, self.data)}
            # A partition ensemble (SISA / RecEraser) is one checkpoint of the model ShardEnsemble.
            save_checkpoint(result.model, config, path, meta)
            extra["checkpoint"] = path
        if evaluate_test:
            row, ranks = self.evaluate(result.model, label, result.info["time_s"], extra)
        else:
            row, ranks = self.evaluate_forget_only(result.model, label, result.info["time_s"], extra)
        row["ranks"] = ranks
        row["_model"] = result.model
        self.rows.append(row)
        self.rows.extend(result.extra_rows)
        _log_row(row)
        return row

    def evaluate_forget_only(self, model, name: str, time_s: float, extra: dict | None = None):
        """A row with validation utility (not test) and forget measures: for model selection."""
        cfg = self.config
        model.eval()
        _, valid_loader, _ = self.loaders
        valid, _ = unrank_metrics.evaluate_loader(model, valid_loader, cfg["metrics"], cfg["topk"])
        forget, ranks = unrank_metrics.evaluate_loader(
            model, self.forget_loader, _forget_metric_names(cfg, self.reference is not None), cfg["unrank_topk"],
            reference=None if self.reference is None else (self.reference["keys"], self.reference["ranks"]),
        )
        row = {"method": name, "time_s": float(time_s), "valid": valid, "forget": forget}
        if extra:
            row.update(extra)
        return row, ranks

    def run_reference(self, model_name: str) -> dict:
        """Train a RecBole model on the retained data (same dataset, split, seed) and add its
        row: an unlearned model is then seen beside RecBole's own baselines."""
        cfg = self.config
        overrides = {k: cfg[k] for k in ("data_path", "seed", "gpu_id", "epochs", "stopping_step", "eval_step",
                                         "train_batch_size", "eval_batch_size", "topk", "metrics", "valid_metric",
                                         "checkpoint_dir", "eval_args", "load_col", "reproducibility")
                     if k in cfg.final_config_dict}
        ref_cfg = build_config(model_name, cfg["dataset"], None, overrides)
        train, valid, _ = make_loaders(ref_cfg, self.data, self.retain_ds)
        model, info = train_model(ref_cfg, train, valid, None, tag=f"reference {model_name}")
        row, ranks = self.evaluate(model, f"ref:{model_name}", info["time_s"], {"epochs": info["epochs"], "reference": True})
        row["ranks"] = ranks
        self.rows.append(row)
        _log_row(row)
        return row


def score_users(model, users) -> torch.Tensor:
    """All-item scores ``[len(users), n_items]`` of ``model`` for internal user ids ``users``:
    ``full_sort_predict``, or ``predict`` over every item for models without it."""
    from recbole.data.interaction import Interaction

    device = unrank_metrics._model_device(model, None)
    users = torch.as_tensor(np.asarray(users), dtype=torch.long, device=device)
    inter = Interaction({model.USER_ID: users})
    model.eval()
    with torch.no_grad():
        try:
            scores = model.full_sort_predict(inter)
        except NotImplementedError:
            items = torch.arange(model.n_items, device=device)
            scores = unrank_metrics._predict_all_items(
                model, Interaction({model.USER_ID: users}), Interaction({model.ITEM_ID: items}),
                model.n_items, 1 << 20)
    return scores.reshape(users.numel(), -1)


def prepare_run(config, checkpoint: str | None = None, ckpt: dict | None = None) -> tuple[Run, dict | None]:
    """Everything that can fail on bad input, before anything is written: the settings and
    files first (cheap), then the data, the request and the checkpoint's fit. ``ckpt``: the
    checkpoint already read (else it is read from ``checkpoint``)."""
    names = method_names(config)
    for name in names:  # bad settings fail here, before anything is written
        METHODS[name](**method_settings(config, METHODS[name]))
    for ref in _reference_names(config):
        try:
            get_model(ref)
        except UnknownModelError as exc:
            raise UnrankError(f"reference model: {exc}") from None
    _check_train_data_model(config, names)
    check_output_dir(config)
    if config["unrank_request_file"]:  # readable, UTF-8, with the id columns: before the data loads
        check_request_file(config["unrank_request_file"], config["USER_ID_FIELD"], config["ITEM_ID_FIELD"])
    if ckpt is None and checkpoint:
        ckpt = read_checkpoint(checkpoint, trust=bool(config["unrank_trust_checkpoint"]))
    if ckpt is not None:
        adopt_checkpoint_config(config, ckpt, checkpoint)
        check_provenance(config, ckpt, checkpoint)
    data = load_data(config)
    prior = forgotten_rows(data, ckpt, checkpoint) if ckpt is not None else None
    if prior is not None and prior.size:  # an unlearned model: what it forgot stays forgotten
        data = without_forgotten(data, prior)
        logger.info("checkpoint '%s' has already forgotten %d train interactions: they stay out of "
                    "the train split", checkpoint, prior.size)
    request = make_request(config, data)
    retain_ds, forget_ds = split_train(data.train_ds, request)
    run = Run(config, data, request, retain_ds, forget_ds)
    run.method_names = names
    if ckpt is not None:  # a checkpoint that does not fit the dataset fails here, before any write
        run.original = load_checkpoint(config, ckpt, data.train_ds, checkpoint)
    return run, ckpt


def _check_train_data_model(config, names: list[str]) -> None:
    """Refuse a model that keeps training interactions outside its parameters (a graph, a
    history matrix) for a method that changes the original's copy: the forgotten pairs would
    stay in the model. Methods that train fresh models on the retained data are fine."""
    what = keeps_train_data(config["model"])
    if not what:
        return
    for name in names:
        if not issubclass(METHODS[name], (Retrain, PartitionMethod)):
            raise UnrankError(
                f"{config['model']} keeps the training interactions in its {what}, which {name} cannot "
                "update (the forgotten pairs would stay in the model): use LightGCN (its graph is "
                "replaced by the retained one) or a model without such state (WMF, BPR, NeuMF), or "
                "the methods retrain, sisa, receraser"
            )


def check_output_dir(config) -> str:
    """``unrank_output_dir`` is a folder (or can be made one) that this process can write."""
    base = str(config["unrank_output_dir"] or "runs")
    probe = os.path.abspath(base)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UnrankError(f"unrank_output_dir '{base}': '{probe}' is a file, not a folder: "
                          "give the folder that will hold the run folders")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UnrankError(f"unrank_output_dir '{base}': '{probe}' is not writable: give a folder you can write")
    return base


# --------------------------------------------------------------------------- the run folder
INCOMPLETE = "INCOMPLETE"  # present while a run folder is being written; removed when it is complete


def _is_tmp(name: str) -> bool:
    return name.endswith(".tmp") or ".tmp." in name


def _alive(marker: str) -> bool:
    """Whether the process that wrote the ``INCOMPLETE`` marker still runs (on this host)."""
    try:
        with open(marker, encoding="utf-8") as f:
            info = dict(line.rstrip("\n").split(": ", 1) for line in f if ": " in line)
        if info.get("host") != socket.gethostname():
            return True  # cannot tell: leave it alone
        os.kill(int(info["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError):
        return False


def clean_interrupted(base: str) -> list[str]:
    """Remove the temporary files that interrupted runs left in their (still marked
    incomplete) run folders under ``base``; returns the files removed."""
    removed = []
    if not os.path.isdir(base):
        return removed
    for name in sorted(os.listdir(base)):
        folder = os.path.join(base, name)
        marker = os.path.join(folder, INCOMPLETE)
        if not os.path.isfile(marker) or _alive(marker):
            continue
        for root, _, files in os.walk(folder):
            for f in files:
                if _is_tmp(f):
                    os.remove(os.path.join(root, f))
                    removed.append(os.path.join(root, f))
    if removed:
        logger.info("removed %d temporary file(s) left by interrupted runs under %s", len(removed), base)
    return removed


def new_run_dir(config, kind: str = "") -> str:
    """A fresh ``<unrank_output_dir>/<model>-<dataset>[-kind]-<time>[-n]`` folder, marked
    incomplete (an ``INCOMPLETE`` file) until :func:`finish_run_dir`. Temporary files that
    interrupted runs left under the same parent are removed first."""
    base = check_output_dir(config)
    clean_interrupted(base)
    tag = f"-{kind}" if kind else ""
    stem = f"{config['model']}-{config['dataset']}{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = os.path.join(base, stem)
    n = 1
    while True:
        try:
            os.makedirs(path)
            break
        except FileExistsError:
            n += 1
            path = os.path.join(base, f"{stem}-{n}")
    with open(os.path.join(path, INCOMPLETE), "w", encoding="utf-8") as f:
        f.write("This run folder is not complete: the run is still going, or it was interrupted.\n"
                f"pid: {os.getpid()}\nhost: {socket.gethostname()}\nstarted: {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return path


def finish_run_dir(path: str) -> None:
    """Mark ``path`` complete: no temporary file is left, the ``INCOMPLETE`` marker goes last."""
    for root, _, files in os.walk(path):
        for f in files:
            if _is_tmp(f):
                os.remove(os.path.join(root, f))
    marker = os.path.join(path, INCOMPLETE)
    if os.path.exists(marker):
        os.remove(marker)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _attach_file_log(run_dir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(run_dir, "run.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _log_to_file(handler: logging.Handler, title: str, text: str) -> None:
    """Write ``text`` (RecBole's coloured config dump, dataset statistics) to run.log only."""
    record = logging.LogRecord("recbole_unrank", logging.INFO, __file__, 0,
                               "%s\n%s", (title, _ANSI.sub("", str(text))), None)
    handler.handle(record)


@contextlib.contextmanager
def tensorboard_in(run_dir: str):
    """RecBole's trainers write TensorBoard logs to ``./log_tensorboard`` (a path fixed inside
    ``recbole.utils.get_tensorboard``); while this block runs they go to
    ``<run_dir>/log_tensorboard`` instead."""
    from recbole.trainer import trainer as recbole_trainer
    from recbole.utils import get_local_time

    original = recbole_trainer.get_tensorboard

    def in_run_dir(_logger):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(run_dir, "log_tensorboard", get_local_time()))

    recbole_trainer.get_tensorboard = in_run_dir
    try:
        yield
    finally:
        recbole_trainer.get_tensorboard = original


def run_pipeline(config, checkpoint: str | None = None, ckpt: dict | None = None) -> Run:
    """The main job: original -> request -> each method -> evaluate -> report. Returns the
    :class:`Run` (``run.record`` is results.json's record, ``run.run_dir`` the folder).
    :func:`recbole_unrank.run_unrank` is the same job returning a plain dict."""
    from recbole_unrank import report

    run, ckpt = prepare_run(config, checkpoint, ckpt)
    run.run_dir = new_run_dir(config)
    pause_point("run_dir")
    handler = run.log_handler = _attach_file_log(run.run_dir)
    config["checkpoint_dir"] = run.run_dir
    try:
        _log_to_file(handler, "RecBole configuration:", config)
        _log_to_file(handler, "dataset:", run.data.dataset)
        with tensorboard_in(run.run_dir):
            _execute(run, ckpt, checkpoint)
        pause_point("report")
        run.record = report.write_all(run)
        pause_point("finish")
        finish_run_dir(run.run_dir)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return run


def _execute(run: Run, ckpt: dict | None, checkpoint: str | None) -> None:
    run.prepare_original(ckpt, checkpoint)
    pause_point("original")
    jobs = [(name, run.run_method, name) for name in run.method_names]
    jobs += [(f"ref:{name}", run.run_reference, name) for name in _reference_names(run.config)]
    for label, job, arg_ in jobs:
        start = time.perf_counter()
        try:
            job(arg_)
        except Exception as exc:  # one failing method does not lose the others: a failed row
            elapsed = time.perf_counter() - start
            first = (str(exc).strip().splitlines() or [""])[0]
            error = f"{type(exc).__name__}: {first}" if not isinstance(exc, UnrankError) else first
            logger.error("[%s] failed after %.1fs: %s", label, elapsed, error)
            handler = getattr(run, "log_handler", None)
            if handler is not None:  # the traceback goes to run.log only
                handler.handle(logging.LogRecord("recbole_unrank", logging.ERROR, __file__, 0, "[%s] traceback",
                                                 (label,), sys.exc_info()))
            run.rows.append({"method": label, "status": "failed", "error": error, "time_s": float(elapsed)})
        pause_point(f"method:{label}")
    run.finish()


def _reference_names(config) -> list[str]:
    return _as_list(config["unrank_reference_models"])


def _train_on(run: Run, train_ds, tag: str):
    train, valid, _ = make_loaders(run.config, run.data, train_ds)
    return train_model(run.config, train, valid, None, tag=tag)


def _log_row(row: dict) -> None:
    split = "test" if "test" in row else "valid"
    util, forget = row[split], row["forget"]
    logger.info(
        "[%s] %.2fs | %s ndcg@10 %.4f recall@10 %.4f | forget_hit@10 %.4f mean_rank %.1f",
        row["method"], row["time_s"], split, util.get("ndcg@10", float("nan")),
        util.get("recall@10", float("nan")), forget.get("forget_hit@10", float("nan")),
        forget.get("mean_rank", float("nan")),
    )
