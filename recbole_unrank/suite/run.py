"""Planning and execution of a suite: the grid's requests and cells in run order, the model
cache, and the runs (serial or as Ray tasks).

Under the suite's output folder:

* ``cells/<key>.json``: one record per finished cell (a method on one request), each written
  atomically, so a rerun of the same command skips the cells already done (failed cells are
  recorded with their error and retried on the next run);
* ``suite.json``: every record, rewritten (atomically) after each request;
* ``models/`` (under the cache folder): the cached originals (one per model, dataset and
  training seed) and retrained models (one per request), reused by every method and by reruns.
  Each file name ends in a hash of everything that defines the model (:func:`model_cache_key`):
  a changed setting, config file, data file or package version trains a new one instead of
  reusing a stale one.

Execution units: an *original* (trains once), then a *request* (loads the data and the
original once, evaluates retrain first, then every method of the grid not yet recorded). Units
run serially or as Ray tasks (``tool="ray"``); both call the same functions and give the same
records (times apart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback

import numpy as np

from recbole_unrank.errors import UnrankError
from recbole_unrank.report import plain, write_text
from recbole_unrank.suite.spec import Cell, Request, SuiteSpec
from recbole_unrank.suite.summary import summarise

__all__ = ["plan", "run_suite", "forget_cells", "write_suite_json", "model_cache_key", "model_config",
           "train_original", "run_request"]

logger = logging.getLogger("recbole_unrank")


# the setting a hop sweep varies, where a method reads its own (default: unrank_hops)
HOPS_KEY = {"l2unrank_twosided": "unrank_twosided_hops"}


def _short(key: str) -> str:
    """A setting's name in a cell label: ``unrank_twosided_sides`` -> ``sides``."""
    for prefix in ("unrank_twosided_", "unrank_"):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def plan(spec: SuiteSpec) -> list[tuple[Request, list[Cell]]]:
    """The requests of the grid, each with its cells (retrain first), in the order they run:
    by task and ratio as listed, then seed, then model, so early results cover every model."""
    seeds = {"eval": [(s, "eval") for s in spec.eval_seeds],
             "design": [(s, "design") for s in spec.design_seeds],
             "all": [(s, "design") for s in spec.design_seeds] + [(s, "eval") for s in spec.eval_seeds]}[spec.seeds]
    out = []
    for t in spec.tasks:
        for ratio in t["ratios"]:
            for users in t["users"]:
                for seed, split in seeds:
                    for model in spec.models:
                        for tseed in spec.train_seeds:
                            req = Request(model, tseed, t["task"], t["vary"], ratio, users, seed, split)
                            skipped = spec.skip.get(model, {})
                            methods = sorted((m for m in t["methods"] if m not in skipped), key=lambda m: m != "retrain")
                            cells = [Cell(req, m, m) for m in methods]
                            sw = spec.hop_sweep
                            if sw and t["task"] in sw.get("tasks", [t["task"]]) and \
                                    ratio in [float(r) for r in sw.get("ratios", [ratio])]:
                                extra = tuple(sorted((sw.get("set") or {}).items()))
                                tag = "".join(f",{_short(k)}={v}" for k, v in extra)
                                for m in (m for m in sw["methods"] if m not in skipped):
                                    for h in sw["hops"]:
                                        cells.append(Cell(req, m, f"{m}[hops={h}{tag}]",
                                                          ((HOPS_KEY.get(m, "unrank_hops"), h),) + extra))
                            out.append((req, cells))
    if not out:
        raise UnrankError("suite: the grid is empty: give at least one task ratio, seed and model")
    return out


# --------------------------------------------------------------------------- files
def _atomic_json(path: str, obj) -> None:
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
def model_config(spec: SuiteSpec, model: str, tseed: int, req: Request | None, out: str):
    """The RecBole config of ``model`` with training seed ``tseed``, for request ``req`` (or the
    original when ``req`` is None): the suite's settings and config files, its cache folders."""
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

    config = model_config(spec, model, tseed, None, out)
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
    return plain({k: v for k, v in row.items() if k != "ranks" and not k.startswith("_")})


def run_request(spec: SuiteSpec, req: Request, cells: list[Cell], out: str, progress=None) -> list[dict]:
    """Run the cells of one request not yet recorded; returns their records."""
    import torch

    from recbole_unrank.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
    from recbole_unrank.pipeline import prepare_run

    todo = [c for c in cells if (_load_record(_cell_path(out, c)) or {}).get("status") != "ok"]
    if not todo:
        return []
    torch.set_num_threads(1)
    config = model_config(spec, req.model, req.train_seed, req, out)
    # unrank_* keys do not enter an original's key: the request's config gives the same one
    # the key train_original computed: from the config without the request (the same function
    # and inputs, so a worker process finds the file another one wrote)
    original_path = _model_path(spec.cache_dir, req.model, spec.dataset, req.train_seed,
                                key=model_cache_key(spec, req.model, model_config(spec, req.model, req.train_seed, None, out)))
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
    retrain_mia = retrain_lira = None
    retrain_row = next((r for r in run.rows if r["method"] == "retrain"), None)
    if retrain_row is not None:
        retrain_mia = retrain_row.get("audit", {}).get("mia_auc")
        retrain_lira = retrain_row.get("audit", {}).get("lira_auc")  # with unrank_audit_shadows >= 2
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
            if retrain_lira is not None and rec["audit"].get("lira_auc") is not None:
                rec["audit"]["lira_gap"] = abs(rec["audit"]["lira_auc"] - retrain_lira)
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


def _as_plain_process() -> None:
    """A Ray worker's command line is Ray's (``--gcs-address=...``, ``--startup-token=...``), and
    RecBole's ``Config`` reads the command line as settings: each worker's config would hold
    its own values of them, so a model's cache key (:func:`model_cache_key`) would differ
    between the worker that trains an original and the one that looks it up. Dropped here."""
    del sys.argv[1:]


def _ray_original(spec, model, tseed, out):
    _as_plain_process()
    return train_original(spec, model, tseed, out)


def _ray_request(spec, req, cells, out, _deps=None):
    _as_plain_process()
    return run_request(spec, req, cells, out)


def run_suite(spec: SuiteSpec, tool: str = "serial", num_cpus: int | None = None,
              address: str | None = None, show_progress: bool = True, only: list[str] | None = None) -> dict:
    """Run the grid (skipping finished cells), then write suite.json, summary and plots.

    ``only``: run these methods' cells now (a method name, or a sweep label such as
    ``l2unrank_twosided[hops=1]``; retrain always runs); the others wait for a later run."""
    from tqdm import tqdm

    out = spec.output_dir
    whole = plan(spec)
    requests = whole if only is None else [
        (req, [c for c in cells if c.method == "retrain" or c.method in only or c.label in only])
        for req, cells in whole]
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
            write_suite_json(spec, whole, out)
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
                write_suite_json(spec, whole, out)
        finally:
            ray.shutdown()
    bar.close()
    record = write_suite_json(spec, whole, out)
    summarise(spec, record, out)
    logger.info("suite finished in %.0fs: %s", time.perf_counter() - start, out)
    return record


def write_suite_json(spec: SuiteSpec, requests, out: str) -> dict:
    cells = []
    for _, cs in requests:
        for c in cs:
            rec = _load_record(_cell_path(out, c))
            if rec is not None:
                cells.append(rec)
    record = {"suite": spec.source, "dataset": spec.dataset, "models": list(spec.models),
              "design_seeds": spec.design_seeds, "eval_seeds": spec.eval_seeds,
              "planned": sum(len(cs) for _, cs in requests), "skipped": spec.skip, "cells": cells}
    _atomic_json(os.path.join(out, "suite.json"), record)
    return record
