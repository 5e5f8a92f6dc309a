"""The tuning job: every check of the input before anything is written, the original (once),
the search, the defaults and the best run once more and reported on test, the reports."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from recbole_unrank import (
    compat,  # noqa: F401  (before RecBole)
    pipeline,
)
from recbole_unrank.config import given_as
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import METHODS
from recbole_unrank.tuning import report
from recbole_unrank.tuning.objective import Objective, check_design_seed, tune_setting
from recbole_unrank.tuning.search import TuneSearch, params_str, plain, run_hyperopt
from recbole_unrank.tuning.space import SearchOptions, check_exhaustive, check_values, read_params_file

__all__ = ["TuneResult", "prepare_search", "tune_unrank"]

logger = logging.getLogger("recbole_unrank")


@dataclass
class TuneResult:
    run_dir: str
    trials: list[dict]
    best: dict | None
    record: dict


def _method(config) -> str:
    method = str(tune_setting(config, "unrank_tune_method"))
    if method not in METHODS:
        raise UnrankError(f"{given_as(config, 'unrank_tune_method', method)} is not a method: choose from "
                          f"{sorted(METHODS)}")
    if not METHODS[method].settings:
        raise UnrankError(f"{given_as(config, 'unrank_tune_method', method)} has no unrank_* settings to tune")
    return method


def prepare_search(config, options: SearchOptions, checkpoint: str | None):
    """Every check of the user's input, before anything is written: settings, params file,
    objective, tool; then the data and the request (``pipeline.prepare_run``)."""
    method = _method(config)
    options = options.check()
    specs = read_params_file(options.params_file, method)
    if options.algo == "exhaustive":
        check_exhaustive(specs)
    check_values(pipeline.method_settings(config, METHODS[method]), method, specs, options.params_file)
    check_design_seed(config)
    objective = Objective.from_config(config)
    if options.tool == "ray":
        from recbole_unrank.tuning.raytune import check_ray

        check_ray(options.algo)
    run, ckpt = pipeline.prepare_run(config, checkpoint, methods=[method])
    pipeline.check_fit(run)
    return TuneSearch(run, method, specs, objective), options, ckpt


def tune_unrank(config, params_file: str, algo: str = "exhaustive", max_evals: int = 100, tool: str = "hyperopt",
                checkpoint: str | None = None, early_stop: int = 10, config_files: list[str] | None = None) -> TuneResult:
    """The whole job: checks, the original (once), the search, the best and the defaults on
    test, the reports. Returns where it all went."""
    search, options, ckpt = prepare_search(config, SearchOptions(params_file, algo, max_evals, tool, early_stop),
                                           checkpoint)
    ray_started = False
    if options.tool == "ray":
        from recbole_unrank.tuning.raytune import start_ray

        ray_started = start_ray()
    try:
        search.run.run_dir = pipeline.new_run_dir(config, "hyper")
        with pipeline.tensorboard_in(search.run.run_dir):
            result = _tune(search, options, ckpt, checkpoint, config_files)
        pipeline.finish_run_dir(search.run.run_dir)
        return result
    finally:
        if ray_started:
            import ray

            ray.shutdown()


def _search(search: TuneSearch, options: SearchOptions, config_files: list[str] | None) -> int:
    """The trials, by the chosen tool; returns how many were planned."""
    seed = int(search.run.config["seed"])
    if options.tool == "ray":
        from recbole_unrank.tuning.raytune import run_ray

        return run_ray(search, options.algo, options.max_evals, seed)
    return run_hyperopt(search, options.algo, options.max_evals, options.early_stop, seed, config_files,
                        search.run.run_dir)


def _scored(search: TuneSearch, row: dict) -> dict:
    """``row`` with the objective's ``loss``, ``feasible``, ``valid_ratio`` and ``objective``."""
    scored = search.objective.score({"status": "ok", "valid": row["valid"], "forget": row["forget"],
                                     "time_s": row.get("time_s")}, search.original_ndcg)
    row.update(loss=scored["loss"], feasible=scored["feasible"], valid_ratio=scored["valid_ratio"],
               objective=search.objective.value(scored))
    return row


def _original_row(search: TuneSearch) -> dict:
    run = search.run
    run.audit_row(run.rows[0])
    row = plain({**{k: v for k, v in run.rows[0].items() if k not in ("ranks", "_model")},
                 "valid": search.original_valid["valid"]})
    return _scored(search, row)


def _final_row(search: TuneSearch, overrides: dict | None, label: str, save: bool) -> dict:
    """Run the method once more with ``overrides``, evaluated on test and on validation."""
    run = search.run
    row = run.audit_row(run.run_method(search.method, overrides=overrides, save=save, evaluate_test=True, label=label))
    valid_row, _ = run.evaluate_forget_only(row["_model"], label, row["time_s"])
    out = {k: v for k, v in row.items() if k not in ("ranks", "_model")}
    out["valid"] = search._with_valid_ndcg(valid_row, row["_model"])["valid"]
    out["params"] = dict(overrides or {})
    row.pop("_model", None)
    return plain(_scored(search, out))


def _tune(search: TuneSearch, options: SearchOptions, ckpt, checkpoint, config_files) -> TuneResult:
    run, config = search.run, search.run.config
    handler = pipeline._attach_file_log(run.run_dir)
    config["checkpoint_dir"] = run.run_dir
    wall = time.perf_counter()
    try:
        run.prepare_original(ckpt, checkpoint)
        from recbole_unrank.request import write_request_file

        write_request_file(os.path.join(run.run_dir, "request.inter"), run.request, run.data.dataset)
        search.evaluate_original()
        logger.info("tuning %s on %s %s: %s; %s", search.method, config["model"], config["dataset"],
                    search.objective.describe(), "; ".join(f"{s.name} {s.describe()}" for s in search.specs))
        planned = _search(search, options, config_files)
        search_s = time.perf_counter() - wall
        if len(search.trials) < planned:
            logger.info("the search stopped after %d of %d trials: %d trials in a row without a better loss "
                        "(RecBole's HyperTuning early stop; raise --early_stop to run them all)",
                        len(search.trials), planned, options.early_stop)
        best = search.best()
        rows = [_original_row(search), _final_row(search, None, "default", save=False)]
        if best is not None:
            rows.append(_final_row(search, best["params"], "best", save=True))
            logger.info("best: trial %d (%s)", best["trial"], params_str(best["params"]))
        else:
            logger.warning("no trial met the objective's constraint: no best.yaml")
        default_row = rows[1]
        defaults_better = bool(default_row["feasible"] and (best is None or default_row["loss"] < best["loss"]))
        if defaults_better:
            logger.warning("the defaults score better on the objective (validation + request) than every trial: "
                           "keep them, or search longer / narrower")
        record = report.search_record(search, options, planned, search_s, best, rows, defaults_better)
        print(report.write_reports(search, record, best), flush=True)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return TuneResult(run.run_dir, search.trials, best, record)
