"""original -> request -> methods -> evaluate -> report: the main job, and nothing else.

The pieces live in their own modules: the settings in :mod:`~recbole_unrank.config`
(:func:`build_config`), the data, loaders and request in :mod:`~recbole_unrank.data`,
training in :mod:`~recbole_unrank.training`, checkpoints in
:mod:`~recbole_unrank.checkpoints`, scoring in :mod:`~recbole_unrank.evaluator` and the run
folder in :mod:`~recbole_unrank.run_folder`. Every check of the user's input happens in
:func:`prepare_run`, before the run folder is created, so bad input writes nothing. The names
those modules define are importable from here too.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from recbole_unrank import compat  # noqa: F401
from recbole_unrank.adapters.train_data import keeps_train_data
from recbole_unrank.checkpoints import (
    forgotten_rows,
    load_checkpoint,
    read_checkpoint,
    request_record,
    save_checkpoint,
)
from recbole_unrank.config import build_config, given_as, user_settings
from recbole_unrank.data import (
    Data,
    load_data,
    make_forget_loader,
    make_loaders,
    make_request,
    make_train_loader,
    method_valid,
    request_seed,
    without_forgotten,
)
from recbole_unrank.errors import UnrankError
from recbole_unrank.evaluation import lira
from recbole_unrank.evaluator import Evaluator, log_row, score_users
from recbole_unrank.hooks import pause_point
from recbole_unrank.methods import METHODS, UnlearnTask, check_finite
from recbole_unrank.methods.partition import PartitionMethod
from recbole_unrank.methods.retrain import Retrain
from recbole_unrank.models import UnknownModelError, get_model
from recbole_unrank.provenance import adopt_checkpoint_config, check_provenance
from recbole_unrank.request import check_request_file, split_train
from recbole_unrank.run_folder import (
    INCOMPLETE,
    attach_file_log,
    check_output_dir,
    finish_run_dir,
    log_to_file,
    new_run_dir,
    tensorboard_in,
)
from recbole_unrank.training import initial_model, train_model

__all__ = [
    "Run",
    "prepare_run",
    "run_pipeline",
    "method_names",
    "method_settings",
    "method_keys",
    "check_unread_settings",
    # defined elsewhere, importable from here
    "Data",
    "build_config",
    "load_data",
    "make_loaders",
    "make_train_loader",
    "make_forget_loader",
    "make_request",
    "request_seed",
    "train_model",
    "read_checkpoint",
    "adopt_checkpoint_config",
    "load_checkpoint",
    "save_checkpoint",
    "score_users",
    "new_run_dir",
    "finish_run_dir",
    "tensorboard_in",
    "INCOMPLETE",
]

logger = logging.getLogger("recbole_unrank")
_attach_file_log = attach_file_log  # the name recbole_unrank.tuning uses


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
    """The keyword arguments of ``method_cls`` that the user gave (config files, presets,
    ``config_dict``, command line) with a value other than the YAML default: the method fills
    in every other one from ``properties/unrank.yaml`` itself, and must act on or refuse each
    one given here."""
    given = user_settings(config)
    return {arg: given[key] for arg, key in method_cls.settings.items() if key in given}


def method_keys() -> dict[str, list[str]]:
    """Each ``unrank_*`` key some method reads -> the methods that read it."""
    out: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        for key in cls.settings.values():
            out.setdefault(key, []).append(name)
    return out


def check_unread_settings(config, names: list[str]) -> None:
    """A method setting the user gave that none of the run's methods ``names`` reads would be
    silently ignored: refuse it (one line naming the key and the methods that read it)."""
    readers = method_keys()
    for key, value in user_settings(config).items():
        if key in readers and not any(key in METHODS[n].settings.values() for n in names):
            who = readers[key]
            shown = ", ".join(who[:4]) + (", ..." if len(who) > 4 else "")
            raise UnrankError(f"{given_as(config, key, value)} has no effect: no method of this run "
                              f"({', '.join(names)}) reads it (read by {shown}); unset it or add such a method")


def _reference_names(config) -> list[str]:
    return _as_list(config["unrank_reference_models"])


@dataclass
class Run(Evaluator):
    """A prepared run: the :class:`~recbole_unrank.evaluator.Evaluator` of its request's split,
    the original model, and the methods to run on it (each row lands in ``rows``)."""

    original_info: dict = field(default_factory=dict)
    run_dir: str | None = None
    method_names: list[str] = field(default_factory=list)

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
        self.open()
        row, ranks = self.evaluate(self.original, "original", 0.0,
                                   {"train_s": self.original_info["time_s"], "epochs": self.original_info["epochs"]})
        self.reference = ranks
        row["ranks"] = ranks
        self.rows.append(row)
        log_row(row)
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
            train_fresh=self._train_on,
            seed=config["seed"],
            valid_ds=method_valid(self.data),
            make_train_loader=lambda ds: make_train_loader(config, self.data, ds),
            train_batch_size=int(config["train_batch_size"]),
            show_progress=bool(config["show_progress"]),
            learning_rate=float(config["learning_rate"]),
            initial_model=lambda: initial_model(config, self.data.train_ds),
        )

    def _train_on(self, train_ds, tag: str, seed: int | None = None):
        """A fresh model trained on ``train_ds`` with the run's recipe: ``(model, info)``; with
        ``seed``, that training seed instead of the run's (``retrain_reseeded``)."""
        old = self.config["seed"]
        self.config["seed"] = old if seed is None else int(seed)
        try:
            train, valid, _ = make_loaders(self.config, self.data, train_ds)
            return train_model(self.config, train, valid, None, tag=tag)
        finally:
            self.config["seed"] = old

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
        row, ranks = self.evaluate(result.model, label, result.info["time_s"], extra,
                                   split="test" if evaluate_test else "valid")
        row["ranks"] = ranks
        row["_model"] = result.model
        self.rows.append(row)
        self.rows.extend(result.extra_rows)
        log_row(row)
        return row

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
        log_row(row)
        return row


def prepare_run(config, checkpoint: str | None = None, ckpt: dict | None = None,
                methods: list[str] | None = None) -> tuple[Run, dict | None]:
    """Everything that can fail on bad input, before anything is written: the settings and
    files first (cheap), then the data, the request and the checkpoint's fit. ``ckpt``: the
    checkpoint already read (else it is read from ``checkpoint``). ``methods``: the methods the
    caller will run (a suite's cells, a tuner's method; default ``unrank_method(s)``): a method
    setting none of them reads is refused."""
    names = method_names(config) if methods is None else list(methods)
    check_unread_settings(config, names)
    for name in names:  # bad settings fail here, before anything is written
        METHODS[name](**method_settings(config, METHODS[name]))
    for ref in _reference_names(config):
        try:
            get_model(ref)
        except UnknownModelError as exc:
            raise UnrankError(f"reference model: {exc}") from None
    _check_train_data_model(config, names)
    lira.check_settings(config)
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
    run = Run(config, data, request, retain_ds, forget_ds, method_names=names)
    if ckpt is not None:  # a checkpoint that does not fit the dataset fails here, before any write
        run.original = load_checkpoint(config, ckpt, data.train_ds, checkpoint)
    return run, ckpt


def check_fit(run: Run) -> None:
    """Each method of the run refuses, before anything is written, a model or a drawn request it
    cannot act on (``UnlearningMethod.check_fit``: e.g. a scope hop that adds no block)."""
    for name in run.method_names:
        METHODS[name](**method_settings(run.config, METHODS[name])).check_fit(
            run.config["model"], run.data.train_ds, run.request.index)


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


def run_pipeline(config, checkpoint: str | None = None, ckpt: dict | None = None) -> Run:
    """The main job: original -> request -> each method -> evaluate -> report. Returns the
    :class:`Run` (``run.record`` is results.json's record, ``run.run_dir`` the folder).
    :func:`recbole_unrank.run_unrank` is the same job returning a plain dict."""
    from recbole_unrank import report

    run, ckpt = prepare_run(config, checkpoint, ckpt)
    check_fit(run)
    run.run_dir = new_run_dir(config)
    pause_point("run_dir")
    handler = run.log_handler = attach_file_log(run.run_dir)
    config["checkpoint_dir"] = run.run_dir
    try:
        log_to_file(handler, "RecBole configuration:", config)
        log_to_file(handler, "dataset:", run.data.dataset)
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
