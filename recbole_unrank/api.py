"""The Python API, in RecBole's style (``recbole.quick_start.run_recbole``)::

    import recbole_unrank
    result = recbole_unrank.run_unrank(model="WMF", dataset="ml-100k", preset=["ml-100k", "WMF"],
                                       config_dict={"unrank_methods": ["l2unrank", "retrain"]})
    result["rows"]       # one dict per model, as in results.json
    result["run_dir"]    # the run folder

Bad input raises :class:`~recbole_unrank.errors.UnrankError` whose message names the Python
argument (``model=``, ``config_dict['unrank_hops']``); nothing is written then. Unlike
RecBole's ``Config`` called directly, the API does not read ``sys.argv``: settings come from
``config_file_list``, ``preset`` and ``config_dict`` only. :func:`run_job` is the same run
returning the :class:`~recbole_unrank.pipeline.Run` itself (what the command line and tests use).
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from recbole_unrank.errors import UnrankError, arg

__all__ = ["run_unrank", "run_unrank_hyper", "load_unlearned", "run_job", "tune_job", "make_config"]


def run_unrank(
    model: str | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    preset: str | list[str] | None = None,
) -> dict:
    """Train (or load ``checkpoint``), draw the request, unlearn, evaluate, write the run folder.

    Args:
        model: RecBole model name; default: the checkpoint's, else ``model`` of the settings.
        dataset: dataset name; default: the checkpoint's, else ``dataset`` of the settings.
        config_file_list: YAML files, lowest priority first (after the presets).
        config_dict: settings that override the files (any RecBole or ``unrank_*`` key).
        checkpoint: a RecBole checkpoint (.pth) to start from instead of training.
        preset: name(s) of config files shipped with the package (``ml-100k``, ``LightGCN``,
            ``l2unrank-paper``, ``quickstart``, ...), read before ``config_file_list``.

    Returns:
        ``results.json``'s record as a plain dict, plus ``run_dir``. A method that failed in a
        comparison is a row with ``status: failed`` and its ``error``.
    """
    run = run_job(model, dataset, config_file_list, config_dict, checkpoint, preset, argv=[])
    return {**run.record, "run_dir": run.run_dir}


def run_unrank_hyper(
    model: str | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    preset: str | list[str] | None = None,
    params_file: str | None = None,
    algo: str = "exhaustive",
    max_evals: int = 100,
    tool: str = "hyperopt",
    early_stop: int = 10,
) -> dict:
    """``recbole-unrank-hyper`` from Python: tune ``unrank_tune_method``'s settings over the
    space of ``params_file`` (a path, or a shipped one: ``l2unrank``, ``lightgcn``, ...) with
    ``algo`` (exhaustive, random, bayes) and ``tool`` (hyperopt through RecBole's HyperTuning,
    or ray). The other arguments are :func:`run_unrank`'s.

    Returns:
        ``best.json``'s record as a plain dict, plus ``run_dir``.
    """
    result = tune_job(model, dataset, config_file_list, config_dict, checkpoint, preset, argv=[],
                      params_file=params_file, algo=algo, max_evals=max_evals, tool=tool, early_stop=early_stop)
    return {**result.record, "run_dir": result.run_dir}


def run_job(model=None, dataset=None, config_file_list=None, config_dict=None, checkpoint=None, preset=None,
            argv: list[str] | None = None, default_model: str | None = None, default_dataset: str | None = None):
    """:func:`run_unrank` returning the :class:`~recbole_unrank.pipeline.Run`. ``argv``:
    ``--key=value`` settings for RecBole's ``Config`` (None: RecBole reads ``sys.argv``)."""
    from recbole_unrank import pipeline

    config, ckpt = make_config(model, dataset, config_file_list, config_dict, checkpoint, preset, argv,
                               default_model, default_dataset)
    return pipeline.run_pipeline(config, checkpoint, ckpt=ckpt)


def tune_job(model=None, dataset=None, config_file_list=None, config_dict=None, checkpoint=None, preset=None,
             argv=None, params_file=None, algo="exhaustive", max_evals=100, tool="hyperopt", early_stop=10,
             default_model=None, default_dataset=None):
    """``recbole-unrank-hyper``: :func:`recbole_unrank.tuning.tune_unrank` on the resolved config.
    ``params_file`` is a path or the name of a shipped one (``l2unrank``, ``lightgcn``, ...)."""
    from recbole_unrank.tuning import tune_unrank

    if not params_file:
        raise UnrankError(f"no params file: pass {arg('params_file')} (e.g. config/hyper/l2unrank.hyper)")
    params_file = _params_path(params_file)
    config, _ = make_config(model, dataset, config_file_list, config_dict, checkpoint, preset, argv,
                            default_model, default_dataset)
    files = _files(config_file_list, preset)
    return tune_unrank(config, params_file, algo=algo, max_evals=max_evals, tool=tool, checkpoint=checkpoint,
                       early_stop=early_stop, config_files=files or None)


def _params_path(name: str) -> str:
    from recbole_unrank.config import PRESETS_DIR

    if os.path.exists(name):
        return name
    stem = name[:-6] if name.endswith(".hyper") else name
    shipped = os.path.join(PRESETS_DIR, "hyper", f"{stem}.hyper")
    return shipped if os.path.isfile(shipped) else name  # tuning's own check names a missing file


def _names(preset) -> list[str]:
    if preset is None:
        return []
    if isinstance(preset, str):
        return preset.replace(",", " ").split()
    if not isinstance(preset, (list, tuple)) or not all(isinstance(p, str) for p in preset):
        raise UnrankError(f"{arg('preset')} takes a preset name or a list of names, got {preset!r}")
    return list(preset)


def _files(config_file_list, preset) -> list[str]:
    from recbole_unrank.config import preset_path

    if config_file_list is not None and (isinstance(config_file_list, (str, bytes))
                                         or not isinstance(config_file_list, (list, tuple))):
        raise UnrankError(f"{arg('config_file_list')} takes a list of YAML paths, got {config_file_list!r}")
    return [preset_path(n) for n in _names(preset)] + [os.fspath(f) for f in (config_file_list or [])]


def _ckpt_value(ckpt: dict | None, key: str):
    if ckpt is None:
        return None
    try:
        return ckpt["config"][key]
    except (KeyError, TypeError, AttributeError):
        return None


def _given(files: list[str], config_dict: dict | None, argv: list[str] | None, key: str):
    """``key`` as the settings give it: the command line, else ``config_dict``, else the last
    config file that sets it (RecBole's priority)."""
    for token in argv or []:
        if token.startswith(f"--{key}="):
            return token.split("=", 1)[1]
    if config_dict and config_dict.get(key):
        return config_dict[key]
    value = None
    for f in files:
        if not os.path.isfile(f):
            continue  # build_config names a missing file
        try:
            with open(f, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            raise UnrankError(f"config file '{f}' cannot be read as YAML ({type(exc).__name__}): "
                              "fix the file or leave it out") from None
        if isinstance(loaded, dict) and loaded.get(key):
            value = loaded[key]
    return value


def make_config(model=None, dataset=None, config_file_list=None, config_dict=None, checkpoint=None, preset=None,
                argv=None, default_model=None, default_dataset=None):
    """The run's config and the checkpoint (read once, or None). The model and dataset come from
    the arguments, else the checkpoint, else the settings, else the defaults."""
    from recbole_unrank.checkpoints import read_checkpoint
    from recbole_unrank.config import build_config

    if config_dict is not None and not isinstance(config_dict, dict):
        raise UnrankError(f"{arg('config_dict')} takes a dict of settings, got {type(config_dict).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise UnrankError(f"{arg('checkpoint')} takes the path of a .pth file, got {checkpoint!r}")
    files = _files(config_file_list, preset)
    ckpt = None
    if checkpoint is not None:  # read once, here: it may name the model and the dataset
        trust = str(_given(files, config_dict, argv, "unrank_trust_checkpoint")).lower() == "true"
        ckpt = read_checkpoint(os.fspath(checkpoint), trust=trust)
    model = (model or _ckpt_value(ckpt, "model") or _given(files, config_dict, argv, "model") or default_model)
    dataset = (dataset or _ckpt_value(ckpt, "dataset") or _given(files, config_dict, argv, "dataset")
               or default_dataset)
    if not model:
        raise UnrankError(f"no model given: pass {arg('model')} (e.g. WMF, NeuMF, LightGCN), a checkpoint, "
                          "or settings with 'model:'")
    if not dataset:
        raise UnrankError(f"no dataset given: pass {arg('dataset')} (e.g. ml-100k), a checkpoint, "
                          "or settings with 'dataset:'")
    config = build_config(str(model), str(dataset), files or None, config_dict, argv=argv)
    return config, ckpt


def load_unlearned(path: str, trust: bool = False, gpu_id: str | None = None):
    """An unlearned checkpoint as RecBole's ``load_data_and_model`` returns a checkpoint:
    ``(config, model, dataset, train_data, valid_data, test_data)``, where ``train_data`` is
    the *retained* train split (the request removed) and valid / test mask only the retained
    history, so ``Trainer(config, model).evaluate(test_data, load_best_model=False)`` gives
    the run's ``results.json`` test metrics. A checkpoint without a request (an original
    model) gives the full train split. ``gpu_id`` overrides the checkpoint's (``""``: the CPU);
    a checkpoint written on a GPU loads on a machine without one."""
    import numpy as np
    from recbole.utils import init_seed

    from recbole_unrank.adapters import get_adapter
    from recbole_unrank.checkpoints import read_checkpoint, request_rows
    from recbole_unrank.data import load_data, make_loaders
    from recbole_unrank.device import config_device
    from recbole_unrank.models import get_model
    from recbole_unrank.provenance import check_provenance, inter_file
    from recbole_unrank.request import ForgetRequest, split_train

    ckpt = read_checkpoint(path, trust)
    config = ckpt["config"]
    if gpu_id is not None:
        config["gpu_id"] = str(gpu_id)
    config["device"] = config_device(config)
    if not os.path.isfile(inter_file(config)):
        raise UnrankError(f"checkpoint '{path}' was trained on {inter_file(config)}, which does not "
                          "exist here: load it from the folder the run was started in")
    check_provenance(config, ckpt, path)
    data = load_data(config)
    record = (ckpt.get("unrank") or {}).get("request")
    retain_ds = data.train_ds
    if isinstance(record, dict) and "train_rows" in record:
        rows = request_rows(data, record, path)
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
