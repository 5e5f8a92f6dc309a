"""Grids of runs: models x tasks x ratios x user selections x request seeds x methods.

A suite YAML (``config/suite/*.yaml``) names the grid; :func:`run_suite` runs it and writes,
under its output folder:

* ``cells/<key>.json``: one record per finished cell (a method on one request), each written
  atomically, so a rerun of the same command skips the cells already done (failed cells are
  recorded with their error and retried on the next run);
* ``suite.json``: every record, rewritten (atomically) after each request;
* ``summary.md`` / ``summary.csv``: mean +- std over the *evaluation* request seeds and a
  paired Wilcoxon signed-rank test of each method against retrain on each measure;
* ``plots/``: each measure against the unlearning ratio, utility against the MIA gap (time as
  marker size), and the hop sweep per model;
* ``models/``: the cached originals (one per model, dataset and training seed) and retrained
  models (one per request), reused by every method and by reruns. Each file name ends in a
  hash of everything that defines the model (:func:`model_cache_key`): a changed setting,
  config file, data file or package version trains a new one instead of reusing a stale one.

Execution units: an *original* (trains once), then a *request* (loads the data and the
original once, evaluates retrain first, then every method of the grid not yet recorded). Units
run serially or as Ray tasks (``tool="ray"``); both call the same functions and give the same
records (times apart).

Design request seeds choose settings (the tuner runs on them); evaluation request seeds only
report. The two lists must not overlap, and the summary reads evaluation seeds only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import yaml

from recbole_unrank.errors import UnrankError
from recbole_unrank.tables import fmt, md_table

__all__ = ["SuiteSpec", "Cell", "load_spec", "plan", "run_suite", "summarise", "forget_cells", "MEASURES"]

logger = logging.getLogger("recbole_unrank")

TASK_KEYS = {"interaction": ("unrank_inter_ratio", "unrank_user_ratio"),
             "user": ("unrank_user_ratio",), "item": ("unrank_item_ratio",)}
SPEC_KEYS = {"dataset", "config_files", "models", "train_seeds", "tasks", "users", "design_seeds",
             "eval_seeds", "seeds", "methods", "hop_sweep", "settings", "output_dir", "cache_dir"}

#: (dotted key in a record, column title, better: "low" | "high" | "retrain" | None)
MEASURES = [
    ("time_s", "time (s)", "low"),
    ("speedup", "speed-up", "high"),
    ("test.ndcg@10", "NDCG@10", "high"),
    ("test.recall@10", "Recall@10", "high"),
    ("request_users.ndcg@10", "req. users NDCG@10", "high"),
    ("forget.forget_hit@10", "forget_hit@10", "low"),
    ("forget.mean_rank", "mean rank", None),
    ("audit.mia_auc", "MIA AUC", "retrain"),
    ("audit.mia_gap", "MIA gap", "low"),
    ("audit.score_auc", "score AUC", "retrain"),
    ("audit.retrain_spearman", "retrain Spearman", "high"),
    ("audit.over_unlearned", "over-unl.", "low"),
    ("audit.under_unlearned", "under-unl.", "low"),
    ("fairness.active_ndcg@10_delta", "active dNDCG", "high"),
    ("fairness.inactive_ndcg@10_delta", "inactive dNDCG", "high"),
    # the method's solve (CG, block or Newton), where it has one: share of the requests whose
    # solve met its tolerance, and the relative residual it ended with
    ("solve.converged", "solved", None),
    ("solve.rel_residual", "solve residual", "low"),
]

#: Measures that describe how a method ran, not what it did: no test against retrain.
_NOT_TESTED = ("speedup", "audit.mia_gap", "solve.converged", "solve.rel_residual")

#: The columns of summary.md's first section (the README's tables come from it).
HEADLINE = ("time_s", "speedup", "test.ndcg@10", "request_users.ndcg@10", "forget.forget_hit@10",
            "audit.mia_auc", "audit.mia_gap", "audit.over_unlearned", "solve.converged")


# --------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Request:
    """One request of the grid: the model it is made for and how it is drawn."""

    model: str
    train_seed: int
    task: str
    vary: str
    ratio: float
    users: str
    seed: int
    split: str  # "design" or "eval"

    @property
    def key(self) -> str:
        return (f"{self.model}-s{self.train_seed}-{self.task}-{self.vary.replace('unrank_', '')}"
                f"{self.ratio:g}-{self.users}-r{self.seed}")


@dataclass(frozen=True)
class Cell:
    """A method (with optional setting overrides, e.g. a hop of the sweep) on one request."""

    request: Request
    method: str
    label: str
    overrides: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.request.key}-{self.label}"


@dataclass
class SuiteSpec:
    dataset: str
    config_files: list[str]
    models: dict[str, list[str]]
    train_seeds: list[int]
    tasks: list[dict]
    users: list[str]
    design_seeds: list[int]
    eval_seeds: list[int]
    seeds: str
    methods: list[str]
    hop_sweep: dict | None
    settings: dict = field(default_factory=dict)
    output_dir: str = "runs/suite"
    source: str = ""
    cache_dir: str = ""  # models/, saved/, runs/ (default: <output_dir>/cache)


def _ints(name: str, value) -> list[int]:
    if not isinstance(value, list) or not value:
        raise UnrankError(f"suite: '{name}' must be a non-empty list of integers, got {value!r}")
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise UnrankError(f"suite: '{name}' must be a list of integers, got {value!r}") from None


def load_spec(path: str, overrides: dict | None = None) -> SuiteSpec:
    """Read and check a suite YAML; every error is one line (UnrankError), nothing written."""
    from recbole_unrank.methods import METHODS
    from recbole_unrank.models import UnknownModelError, get_model
    from recbole_unrank.request import USER_SELECTIONS

    if not os.path.isfile(path):
        raise UnrankError(f"suite file '{path}' does not exist: give a YAML such as config/suite/ml100k.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UnrankError(f"suite file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UnrankError(f"suite file '{path}' must be a mapping of keys (dataset, models, tasks, ...)")
    raw.update(overrides or {})
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], sorted(SPEC_KEYS), n=1)
        raise UnrankError(f"suite: unknown key '{unknown[0]}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                          + f"; keys are {sorted(SPEC_KEYS)}")
    base = os.path.dirname(os.path.abspath(path))

    def resolve(f: str) -> str:
        for cand in (f, os.path.join(base, f), os.path.join(base, "..", "..", f)):
            if os.path.isfile(cand):
                return os.path.abspath(cand)
        raise UnrankError(f"suite: config file '{f}' does not exist")

    models = raw.get("models")
    if isinstance(models, list):
        models = {m: [] for m in models}
    if not isinstance(models, dict) or not models:
        raise UnrankError("suite: 'models' must name at least one model (a list, or model: [config files])")
    for m in models:
        try:
            get_model(m)
        except UnknownModelError as exc:
            raise UnrankError(f"suite: {exc}") from None
    models = {m: [resolve(f) for f in (files or [])] for m, files in models.items()}
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise UnrankError("suite: 'tasks' must list at least one task, e.g. {task: interaction, ratios: [0.2]}")

    def method_list(value, where: str) -> list[str]:
        if not isinstance(value, list) or not value:
            raise UnrankError(f"suite: {where}'methods' must list known methods, at least one (retrain first "
                              "for the audit)")
        for m in value:
            if m not in METHODS:
                raise UnrankError(f"suite: {where}unknown method '{m}': '{m}' is not one of {sorted(METHODS)}")
        return list(dict.fromkeys(value))

    methods = method_list(raw.get("methods"), "")
    checked = []
    for t in tasks:
        if not isinstance(t, dict) or t.get("task") not in TASK_KEYS:
            raise UnrankError(f"suite: unknown task {t!r}: use interaction, item or user")
        extra = sorted(set(t) - {"task", "vary", "ratios", "methods"})
        if extra:
            raise UnrankError(f"suite: task {t['task']} has unknown key '{extra[0]}': a task takes task, vary, "
                              "ratios and (optionally) methods")
        own = method_list(t["methods"], f"task {t['task']}: ") if "methods" in t else methods
        vary = t.get("vary", TASK_KEYS[t["task"]][0])
        if vary not in TASK_KEYS[t["task"]]:
            raise UnrankError(f"suite: task {t['task']} varies one of {list(TASK_KEYS[t['task']])}, not '{vary}'")
        ratios = t.get("ratios")
        if not isinstance(ratios, list) or not ratios:
            raise UnrankError(f"suite: task {t['task']} needs a non-empty list 'ratios'")
        for r in ratios:
            try:
                ok = 0.0 < float(r) <= 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UnrankError(f"suite: ratio {r!r} of task {t['task']} is outside (0, 1]")
        checked.append({"task": t["task"], "vary": vary, "ratios": [float(r) for r in ratios],
                        "methods": own})
    users = raw.get("users", ["random"])
    users = [users] if isinstance(users, str) else list(users or [])
    for u in users:
        if u not in USER_SELECTIONS:
            raise UnrankError(f"suite: unknown user selection '{u}': use {list(USER_SELECTIONS)}")
    design = _ints("design_seeds", raw.get("design_seeds", [101, 102, 103]))
    evals = _ints("eval_seeds", raw.get("eval_seeds"))
    both = sorted(set(design) & set(evals))
    if both:
        raise UnrankError(f"suite: seeds {both} are both design and evaluation seeds: keep them apart")
    seeds = raw.get("seeds", "eval")
    if seeds not in ("eval", "design", "all"):
        raise UnrankError(f"suite: seeds={seeds!r}: use eval, design or all")
    sweep = raw.get("hop_sweep")
    if sweep is not None:
        if not isinstance(sweep, dict) or not sweep.get("hops") or not sweep.get("methods"):
            raise UnrankError("suite: hop_sweep needs 'methods' and 'hops' lists")
        for m in sweep["methods"]:
            if m not in METHODS:
                raise UnrankError(f"suite: hop_sweep: unknown method '{m}'")
        for h in sweep["hops"]:
            if not isinstance(h, int) or h < 0:
                raise UnrankError(f"suite: hop_sweep: hops must be integers >= 0, got {h!r}")
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise UnrankError("suite: 'settings' must be a mapping of config keys")
    if "dataset" not in raw:
        raise UnrankError("suite: 'dataset' is missing (e.g. dataset: ml-100k)")
    return SuiteSpec(
        dataset=str(raw["dataset"]),
        config_files=[resolve(f) for f in raw.get("config_files") or []],
        models=models,
        train_seeds=_ints("train_seeds", raw.get("train_seeds", [2020])),
        tasks=checked, users=users, design_seeds=design, eval_seeds=evals, seeds=seeds,
        methods=methods, hop_sweep=sweep, settings=dict(settings),
        output_dir=str(raw.get("output_dir", "runs/suite")), source=os.path.abspath(path),
        cache_dir=str(raw.get("cache_dir") or os.path.join(str(raw.get("output_dir", "runs/suite")), "cache")),
    )


def plan(spec: SuiteSpec) -> list[tuple[Request, list[Cell]]]:
    """The requests of the grid, each with its cells (retrain first), in the order they run:
    by task and ratio as listed, then seed, then model, so early results cover every model."""
    seeds = {"eval": [(s, "eval") for s in spec.eval_seeds],
             "design": [(s, "design") for s in spec.design_seeds],
             "all": [(s, "design") for s in spec.design_seeds] + [(s, "eval") for s in spec.eval_seeds]}[spec.seeds]
    out = []
    for t in spec.tasks:
        for ratio in t["ratios"]:
            for users in (spec.users if t["task"] != "item" else ["random"]):
                for seed, split in seeds:
                    for model in spec.models:
                        for tseed in spec.train_seeds:
                            req = Request(model, tseed, t["task"], t["vary"], ratio, users, seed, split)
                            methods = sorted(t["methods"], key=lambda m: m != "retrain")
                            cells = [Cell(req, m, m) for m in methods]
                            sw = spec.hop_sweep
                            if sw and t["task"] in sw.get("tasks", [t["task"]]) and \
                                    ratio in [float(r) for r in sw.get("ratios", [ratio])]:
                                for m in sw["methods"]:
                                    for h in sw["hops"]:
                                        cells.append(Cell(req, m, f"{m}[hops={h}]", (("unrank_hops", h),)))
                            out.append((req, cells))
    if not out:
        raise UnrankError("suite: the grid is empty: give at least one task ratio, seed and model")
    return out


# --------------------------------------------------------------------------- files
def _atomic_json(path: str, obj) -> None:
    from recbole_unrank.report import write_text

    write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _cell_path(out: str, cell: Cell) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in cell.key)
    return os.path.join(out, "cells", safe + ".json")


def _load_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


#: Settings that say where files go or which device runs, not what model is trained.
_NOT_DEFINING = frozenset({
    "data_path", "checkpoint_dir", "dataset_save_path", "dataloaders_save_path", "device", "gpu_id",
    "use_gpu", "show_progress", "state", "log_wandb", "wandb_project", "local_rank", "single_spec",
    "nproc", "world_size", "offset", "ip", "port", "worker", "reproducibility",
})


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def model_cache_key(spec: SuiteSpec, model: str, config, req: Request | None = None) -> str:
    """A hash (16 hex digits) of everything that defines a cached model: the resolved RecBole
    settings (every key but file locations and the device; no ``unrank_*`` key, which training
    an original does not read), the contents of the config files, the data fingerprint
    (dataset, ``.inter`` sha256, split settings), this package's and RecBole's versions; for a
    retrained model also the request (task, ratio, users, seed) and ``retrain``'s settings."""
    from importlib.metadata import version

    import recbole

    from recbole_unrank.provenance import data_fingerprint

    __version__ = version("recbole-unrank")

    settings = {k: v for k, v in config.final_config_dict.items()
                if k not in _NOT_DEFINING and not k.startswith("unrank_")}
    files = spec.config_files + spec.models[model]
    what = {
        "model": model,
        "settings": settings,
        "config_files": [_file_sha256(f) for f in files],
        "data": data_fingerprint(config),
        "versions": {"recbole_unrank": __version__, "recbole": recbole.__version__},
    }
    if req is not None:
        from recbole_unrank.methods import METHODS
        from recbole_unrank.pipeline import method_settings

        what["request"] = {k: v for k, v in req.__dict__.items() if k != "split"}
        what["method"] = {"name": "retrain", "settings": method_settings(config, METHODS["retrain"])}
    text = json.dumps(what, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _model_path(cache: str, model: str, dataset: str, tseed: int, req: Request | None = None,
                key: str = "") -> str:
    stem = f"{model}-{dataset}-s{tseed}" + (f"-{req.key}-retrain" if req else "") + (f"-{key}" if key else "")
    return os.path.join(cache, "models", stem + ".pth")


# --------------------------------------------------------------------------- execution
def _config(spec: SuiteSpec, model: str, tseed: int, req: Request | None, out: str):
    from recbole_unrank.config import build_config

    d = {**spec.settings, "seed": tseed, "unrank_output_dir": os.path.join(spec.cache_dir, "runs"),
         "checkpoint_dir": os.path.join(spec.cache_dir, "saved")}
    if req is not None:
        d.update({"unrank_request": req.task, req.vary: req.ratio, "unrank_request_users": req.users,
                  "unrank_request_seed": req.seed})
    return build_config(model, spec.dataset, spec.config_files + spec.models[model], d)


def train_original(spec: SuiteSpec, model: str, tseed: int, out: str) -> dict:
    """Train (once) and cache the original of ``model`` with training seed ``tseed``."""
    import torch

    from recbole_unrank.checkpoints import save_checkpoint
    from recbole_unrank.data import load_data, make_loaders
    from recbole_unrank.training import train_model

    config = _config(spec, model, tseed, None, out)
    path = _model_path(spec.cache_dir, model, spec.dataset, tseed, key=model_cache_key(spec, model, config))
    info_path = path[:-4] + ".json"
    if os.path.isfile(path) and os.path.isfile(info_path):
        return _load_record(info_path)
    torch.set_num_threads(1)
    data = load_data(config)
    train, valid, _ = make_loaders(config, data)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    m, info = train_model(config, train, valid, None, tag=f"original {model}")
    save_checkpoint(m, config, path, {"suite": "original"})
    _atomic_json(info_path, info)
    return info


def _strip(row: dict) -> dict:
    from recbole_unrank.report import _plain

    return _plain({k: v for k, v in row.items() if k != "ranks" and not k.startswith("_")})


def run_request(spec: SuiteSpec, req: Request, cells: list[Cell], out: str, progress=None) -> list[dict]:
    """Run the cells of one request not yet recorded; returns their records."""
    import torch

    from recbole_unrank.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
    from recbole_unrank.pipeline import prepare_run

    todo = [c for c in cells if (_load_record(_cell_path(out, c)) or {}).get("status") != "ok"]
    if not todo:
        return []
    torch.set_num_threads(1)
    config = _config(spec, req.model, req.train_seed, req, out)
    # unrank_* keys do not enter an original's key: the request's config gives the same one
    # the key train_original computed: from the config without the request (the same function
    # and inputs, so a worker process finds the file another one wrote)
    original_path = _model_path(spec.cache_dir, req.model, spec.dataset, req.train_seed,
                                key=model_cache_key(spec, req.model, _config(spec, req.model, req.train_seed, None, out)))
    run, ckpt = prepare_run(config, original_path, methods=sorted({c.method for c in cells} | {"retrain"}))
    run.prepare_original(ckpt, original_path)
    base = {"request": req.__dict__, "dataset": spec.dataset, "request_summary": run.request.summary()}
    records = []

    def record(cell: Cell, rec: dict) -> dict:
        rec = {"key": cell.key, "method": cell.method, "label": cell.label,
               "overrides": dict(cell.overrides), **base, **rec}
        _atomic_json(_cell_path(out, cell), rec)
        records.append(rec)
        if progress is not None:
            progress(cell, rec)
        return rec

    # retrain first: its model fits the audit's attack and its ranks are the agreement reference
    retrain_cell = next((c for c in cells if c.method == "retrain"), None)
    retrain_time = None
    if retrain_cell is not None:
        rpath = _model_path(spec.cache_dir, req.model, spec.dataset, req.train_seed, req,
                            key=model_cache_key(spec, req.model, config, req))
        rinfo_path = rpath[:-4] + ".json"
        try:
            if os.path.isfile(rpath) and os.path.isfile(rinfo_path):
                rinfo = _load_record(rinfo_path)
                model = load_checkpoint(config, read_checkpoint(rpath), run.retain_ds, rpath)
                row, ranks = run.evaluate(model, "retrain", rinfo["time_s"], {k: v for k, v in rinfo.items() if k != "time_s"})
                row["ranks"] = ranks
                run.rows.append(row)
            else:
                row = run.run_method("retrain", save=False)
                save_checkpoint(row["_model"], config, rpath, {"suite": "retrain", "request": req.key})
                _atomic_json(rinfo_path, {"time_s": row["time_s"], **{k: row[k] for k in ("epochs",) if k in row}})
                row.pop("_model", None)
            retrain_time = row["time_s"]
            run.audit_row(row)
            run.audit_row(run.rows[0])  # the original, now that the attack is fitted
            base["original"] = _strip(run.rows[0])
            if retrain_cell in todo:
                record(retrain_cell, {"status": "ok", "row": _strip(row)})
        except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the others go on
            logger.exception("retrain failed on %s", req.key)
            record(retrain_cell, {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc()[-2000:]})
    if "original" not in base:
        base["original"] = _strip(run.audit_row(run.rows[0]))
    retrain_mia = None
    retrain_row = next((r for r in run.rows if r["method"] == "retrain"), None)
    if retrain_row is not None:
        retrain_mia = retrain_row.get("audit", {}).get("mia_auc")
    for cell in todo:
        if cell.method == "retrain":
            continue
        try:
            row = run.run_method(cell.method, overrides=dict(cell.overrides) or None, save=False, label=cell.label)
            row.pop("_model", None)
            run.audit_row(row)
            rec = _strip(row)
            if retrain_time and rec["time_s"] > 0:
                rec["speedup"] = retrain_time / rec["time_s"]
            if retrain_mia is not None and rec["audit"].get("mia_auc") is not None:
                rec["audit"]["mia_gap"] = abs(rec["audit"]["mia_auc"] - retrain_mia)
            record(cell, {"status": "ok", "row": rec})
        except Exception as exc:  # noqa: BLE001
            logger.exception("%s failed on %s", cell.label, req.key)
            record(cell, {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-2000:]})
        finally:
            # keep memory flat: rows of finished cells are on disk
            run.rows = [r for r in run.rows if r["method"] in ("original", "retrain")]
    return records


def forget_cells(spec: SuiteSpec, requests, methods: list[str]) -> int:
    """Remove the records of ``methods`` (a sweep label ``m[hops=h]`` counts as ``m``) so the
    next run computes them again. Unknown names are an error."""
    from recbole_unrank.methods import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UnrankError(f"--redo: unknown method(s) {unknown}: choose from {sorted(METHODS)}")
    n = 0
    for _, cells in requests:
        for c in cells:
            if c.method in methods and os.path.isfile(_cell_path(spec.output_dir, c)):
                os.remove(_cell_path(spec.output_dir, c))
                n += 1
    logger.info("--redo: %d finished cells of %s will run again", n, methods)
    return n


def _ray_original(spec, model, tseed, out):
    return train_original(spec, model, tseed, out)


def _ray_request(spec, req, cells, out, _deps=None):
    return run_request(spec, req, cells, out)


def run_suite(spec: SuiteSpec, tool: str = "serial", num_cpus: int | None = None,
              address: str | None = None, show_progress: bool = True) -> dict:
    """Run the grid (skipping finished cells), then write suite.json, summary and plots."""
    from tqdm import tqdm

    out = spec.output_dir
    requests = plan(spec)
    if tool not in ("serial", "ray"):
        raise UnrankError(f"suite: --tool {tool!r}: use serial or ray")
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    all_cells = [c for _, cells in requests for c in cells]
    done = sum((_load_record(_cell_path(out, c)) or {}).get("status") == "ok" for c in all_cells)
    bar = tqdm(total=len(all_cells), initial=done, desc="suite", unit="cell", disable=not show_progress)
    start = time.perf_counter()

    def progress(cell: Cell, rec: dict) -> None:
        t = rec.get("row", {}).get("time_s")
        bar.set_postfix_str(f"{cell.key} {rec['status']}" + (f" {t:.1f}s" if t is not None else ""))
        bar.update(1)

    originals = sorted({(r.model, r.train_seed) for r, _ in requests})
    if tool == "serial":
        for model, tseed in originals:
            bar.set_postfix_str(f"training original {model} s{tseed}")
            train_original(spec, model, tseed, out)
        for req, cells in requests:
            run_request(spec, req, cells, out, progress)
            _write_suite_json(spec, requests, out)
    else:
        import ray

        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            env = {"OMP_NUM_THREADS": "1"}
            orig_task = ray.remote(num_cpus=1)(_ray_original).options(runtime_env={"env_vars": env})
            req_task = ray.remote(num_cpus=1)(_ray_request).options(runtime_env={"env_vars": env})
            deps = {o: orig_task.remote(spec, o[0], o[1], out) for o in originals}
            pending = {req_task.remote(spec, req, cells, out, deps[(req.model, req.train_seed)]): req
                       for req, cells in requests}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    pending.pop(ref)
                    for rec in ray.get(ref):
                        progress(next(c for _, cs in requests for c in cs if c.key == rec["key"]), rec)
                _write_suite_json(spec, requests, out)
        finally:
            ray.shutdown()
    bar.close()
    record = _write_suite_json(spec, requests, out)
    summarise(spec, record, out)
    logger.info("suite finished in %.0fs: %s", time.perf_counter() - start, out)
    return record


def _write_suite_json(spec: SuiteSpec, requests, out: str) -> dict:
    cells = []
    for _, cs in requests:
        for c in cs:
            rec = _load_record(_cell_path(out, c))
            if rec is not None:
                cells.append(rec)
    record = {"suite": spec.source, "dataset": spec.dataset, "models": list(spec.models),
              "design_seeds": spec.design_seeds, "eval_seeds": spec.eval_seeds,
              "planned": sum(len(cs) for _, cs in requests), "cells": cells}
    _atomic_json(os.path.join(out, "suite.json"), record)
    return record


# --------------------------------------------------------------------------- summary
def _get(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, (int, float)) else None


def _wilcoxon(a: list[float], b: list[float]) -> float | None:
    """Two-sided paired Wilcoxon signed-rank p-value (None when every difference is 0 or n < 2)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a) - np.asarray(b)
    if d.size < 2 or np.allclose(d, 0):
        return None
    try:
        return float(wilcoxon(a, b).pvalue)
    except ValueError:
        return None


def _group_key(rec: dict) -> tuple:
    r = rec["request"]
    return (r["model"], r["task"], r["vary"], r["ratio"], r["users"])


def summary_rows(record: dict, split: str = "eval") -> list[dict]:
    """One row per (model, task, ratio, users, method) over the ``split``'s request seeds
    (evaluation by default): mean, std, n of each measure and the paired Wilcoxon p-value
    against retrain (same requests)."""
    cells = [c for c in record["cells"] if c["status"] == "ok" and c["request"]["split"] == split]
    by_group: dict[tuple, dict[str, dict[int, dict]]] = {}
    for c in cells:
        by_group.setdefault(_group_key(c), {}).setdefault(c["label"], {})[c["request"]["seed"]] = c
    rows = []
    for gkey, methods in by_group.items():
        # the original as a row of its own (from any cell's copy)
        any_method = next(iter(methods.values()))
        orig = {s: {"row": c["original"]} for s, c in any_method.items()}
        retrain = methods.get("retrain", {})
        for label, seeds in [("original", orig)] + sorted(methods.items(), key=lambda kv: _order(kv[0])):
            row = {"model": gkey[0], "task": gkey[1], "vary": gkey[2], "ratio": gkey[3], "users": gkey[4],
                   "method": label, "n": len(seeds)}
            for key, _, _ in MEASURES:
                vals = {s: _get(c["row"], key) for s, c in seeds.items()}
                vals = {s: v for s, v in vals.items() if v is not None}
                row[f"{key}.mean"] = float(np.mean(list(vals.values()))) if vals else None
                row[f"{key}.std"] = float(np.std(list(vals.values()), ddof=1)) if len(vals) > 1 else None
                p = None
                if label not in ("retrain", "original") and retrain and key not in _NOT_TESTED:
                    common = sorted(s for s in vals if _get(retrain.get(s, {}).get("row", {}), key) is not None)
                    if common:
                        p = _wilcoxon([vals[s] for s in common], [_get(retrain[s]["row"], key) for s in common])
                row[f"{key}.p"] = p
                if key == "solve.converged":
                    row["solve.n"] = len(vals)
            rows.append(row)
    return rows


def _order(label: str) -> tuple:
    head = ["retrain", "l2unrank", "l2unrank_paper"]
    base = label.split("[")[0]
    return (head.index(base) if base in head else len(head), label)


def pooled_tests(record: dict, split: str = "eval") -> list[dict]:
    """Per (model, method): the paired Wilcoxon test against retrain over every request of the
    ``split`` (all tasks, ratios and seeds), the test with power at 3 seeds."""
    cells = [c for c in record["cells"] if c["status"] == "ok" and c["request"]["split"] == split]
    index = {(c["request"]["model"], c["label"], _req_id(c)): c for c in cells}
    out = []
    for model in sorted({c["request"]["model"] for c in cells}):
        for label in sorted({c["label"] for c in cells if c["request"]["model"] == model}, key=_order):
            if label == "retrain":
                continue
            row = {"model": model, "method": label}
            for key, _, _better in MEASURES:
                if key in _NOT_TESTED:
                    continue
                a, b = [], []
                for (m, lab, rid), c in index.items():
                    if m != model or lab != label:
                        continue
                    r = index.get((model, "retrain", rid))
                    va, vb = _get(c["row"], key), _get(r["row"], key) if r else None
                    if va is not None and vb is not None:
                        a.append(va)
                        b.append(vb)
                row[f"{key}.n"] = len(a)
                row[f"{key}.diff"] = float(np.mean(np.asarray(a) - np.asarray(b))) if a else None
                row[f"{key}.p"] = _wilcoxon(a, b)
            out.append(row)
    return out


def _req_id(c: dict) -> tuple:
    r = c["request"]
    return (r["task"], r["vary"], r["ratio"], r["users"], r["seed"], r["train_seed"])


def _pm(row: dict, key: str) -> str:
    m, s = row.get(f"{key}.mean"), row.get(f"{key}.std")
    if m is None:
        return "-"
    if key == "solve.converged":  # k of the n requests whose solve met its tolerance
        n = row.get("solve.n") or row["n"]
        return f"{round(m * n)}/{n}"
    digits = 1 if key in ("forget.mean_rank", "speedup") else (2 if key == "time_s" else 4)
    return fmt(m, digits) + ("" if s is None else f" ± {fmt(s, digits)}")


def summary_markdown(record: dict, rows: list[dict], pooled: list[dict], split: str = "eval") -> str:
    done = sum(c["status"] == "ok" for c in record["cells"])
    failed = [c for c in record["cells"] if c["status"] != "ok"]
    if split == "eval":
        which = (f"Evaluation request seeds {record['eval_seeds']} only (design seeds {record['design_seeds']} "
                 "are for choosing settings and never reported here).")
    else:
        which = (f"Design request seeds {record['design_seeds']} only: these choose settings, so their "
                 f"numbers are in-sample; report the evaluation seeds {record['eval_seeds']} (summary.md).")
    lines = [f"# Suite summary: {record['dataset']}" + ("" if split == "eval" else " (design seeds)"), "",
             f"Cells finished: {done} of {record['planned']} planned ({len(failed)} failed). "
             f"{which} Each cell is mean ± std over the "
             "seeds (n = seeds finished); p: two-sided paired Wilcoxon signed-rank test against "
             "retrain on the same requests (with 3 seeds the smallest possible p is 0.25; see the pooled "
             "tests below). MIA gap: |MIA AUC - retrain's| on the same request.", ""]
    if not rows:
        lines += [f"No finished {'evaluation' if split == 'eval' else 'design'} cell yet.", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["task"], r["vary"], r["ratio"], r["users"]), []).append(r)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][3], kv[0][0]))
    for title, cols in (("Headline measures", [m for m in MEASURES if m[0] in HEADLINE]), ("All measures", MEASURES)):
        lines += [f"# {title}", ""]
        for (model, task, vary, ratio, users), rs in ordered:
            lines += [f"## {model}: {task} task, {vary.replace('unrank_', '')} {ratio:g}, {users} users", ""]
            lines += md_table(["method", "n"] + [t for _, t, _ in cols],
                              ([r["method"], r["n"]] + [_pm(r, k) for k, _, _ in cols] for r in rs))
            lines.append("")
    if pooled:
        lines += [f"## Pooled paired tests against retrain (every {'evaluation' if split == 'eval' else 'design'} "
                  "request of the model)", "",
                  "Mean difference (method - retrain) and p-value, over the requests where both finished.", ""]
        keys = [(k, t) for k, t, _ in MEASURES if k not in _NOT_TESTED]
        def diff(r: dict, k: str) -> str:
            d, p = r.get(f"{k}.diff"), r.get(f"{k}.p")
            return fmt(d, signed=True) + ("" if d is None or p is None else f" (p {fmt(p, 3)})")

        lines += md_table(["model", "method", "n"] + [t for _, t in keys],
                          ([r["model"], r["method"], max((r.get(f"{k}.n") or 0) for k, _ in keys)]
                           + [diff(r, k) for k, _ in keys] for r in pooled))
        lines.append("")
    if failed:
        lines += ["## Failed cells", ""]
        lines += [f"- `{c['key']}`: {c.get('error', '')}" for c in failed]
        lines.append("")
    return "\n".join(lines)


def summarise(spec: SuiteSpec | None, record: dict, out: str) -> None:
    """Write summary.md / summary.csv (evaluation seeds) and the plots from a suite record, and
    summary-design.md / summary-design.csv when design cells were run (kept apart: those seeds
    choose settings and are never reported beside the evaluation ones)."""
    import csv
    import io

    from recbole_unrank.report import write_text

    os.makedirs(out, exist_ok=True)
    eval_rows = []
    for split, stem in (("eval", "summary"), ("design", "summary-design")):
        rows = summary_rows(record, split)
        if split == "eval":
            eval_rows = rows
        elif not rows:
            continue
        pooled = pooled_tests(record, split)
        write_text(os.path.join(out, f"{stem}.md"), summary_markdown(record, rows, pooled, split))
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        write_text(os.path.join(out, f"{stem}.csv"), buf.getvalue())
    if not eval_rows:
        logger.info("suite: no finished evaluation cell: no plots")
        return
    try:
        from recbole_unrank import plots

        plots.plot_suite(eval_rows, record, os.path.join(out, "plots"))
    except ImportError:
        logger.info("matplotlib not installed: no suite plots")
