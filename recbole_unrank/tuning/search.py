"""The search: :class:`TuneSearch` runs one trial (the method on a fresh copy of the prepared
original, scored on validation and the request, never on test) and records every trial;
:func:`run_hyperopt` lets RecBole's own ``HyperTuning`` propose the trials."""

from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import time
from typing import Any

import numpy as np

from recbole_unrank.atomic import atomic_write
from recbole_unrank.errors import UnrankError
from recbole_unrank.tables import fmt
from recbole_unrank.tuning.objective import Objective
from recbole_unrank.tuning.space import ParamSpec, hyperopt_params_dict, space_size

__all__ = ["TuneSearch", "run_hyperopt", "plain", "params_str"]

logger = logging.getLogger("recbole_unrank")


def plain(value):
    """JSON-able: str keys, Python numbers, lists for arrays, None for a non-finite float."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def params_str(params: dict) -> str:
    """``hops=2, damping=0.0100``: a trial's settings for a log line."""
    return ", ".join(f"{k[len('unrank_'):] if k.startswith('unrank_') else k}={fmt(v)}" for k, v in params.items())


class TuneSearch:
    """The objective of a search: one prepared :class:`~recbole_unrank.pipeline.Run` (its
    original evaluated), the method, the space, the objective; every trial is recorded."""

    def __init__(self, run, method: str, specs: list[ParamSpec], objective: Objective):
        self.run = run
        self.method = method
        self.specs = specs
        self.objective = objective
        self.trials: list[dict] = []
        self.original_valid: dict = {}

    @property
    def original_ndcg(self) -> float:
        return float(self.original_valid["valid"]["ndcg@10"])

    def _with_valid_ndcg(self, row: dict, model) -> dict:
        """``row['valid']`` with NDCG@10 (the objective's utility), computed when the
        configured metrics do not include it."""
        if "ndcg@10" not in row["valid"]:
            row["valid"]["ndcg@10"] = self.run.valid_score(model)
        return row

    def evaluate_original(self) -> dict:
        run = self.run
        row, _ = run.evaluate_forget_only(run.original, "original", 0.0)
        self.original_valid = self._with_valid_ndcg(row, run.original)
        return row

    def _params(self, params: dict) -> dict:
        by_name = {s.name: s for s in self.specs}
        return {k: by_name[k].normalise(v) if k in by_name else plain(v) for k, v in params.items()}

    def evaluate_trial(self, params: dict, label: str) -> dict:
        """Run the method with ``params`` on a copy of the original; score it (validation and
        request only); return the trial record (JSON-able)."""
        run = self.run
        params = self._params(params)
        record: dict[str, Any] = {"trial": None, "label": label, "params": params, "status": "ok",
                                  "started": time.time()}
        n_rows = len(run.rows)
        try:
            row = run.run_method(self.method, overrides=params, save=False, evaluate_test=False, label=label)
        except UnrankError as exc:  # settings the method refuses (or a NaN update it will not keep)
            record.update(status="error", error=str(exc), valid={}, forget={}, time_s=None)
            logger.warning("[%s] refused: %s", label, exc)
        except Exception as exc:  # noqa: BLE001  a failing combination must not end a long search
            msg = (str(exc).strip().splitlines() or [""])[0]
            record.update(status="error", error=f"{type(exc).__name__}: {msg}", valid={}, forget={}, time_s=None)
            logger.exception("[%s] failed with %s (recorded as an error trial; the search goes on)",
                             label, params_str(params))
        else:
            self._with_valid_ndcg(row, row["_model"])
            record.update(
                valid=plain(row["valid"]), forget=plain(row["forget"]), time_s=float(row["time_s"]),
                stages=plain(row.get("stages", {})),
                info=plain({k: v for k, v in row.items()
                            if k not in ("method", "time_s", "valid", "forget", "stages", "ranks", "_model")}),
            )
        finally:
            del run.rows[n_rows:]  # trial rows (and their models) are not kept on the run
        return self.objective.score(record, self.original_ndcg)

    def add(self, record: dict) -> dict:
        record["trial"] = len(self.trials) + 1
        self.trials.append(record)
        if record["status"] == "ok":
            logger.info("[trial %d] %s | loss %.6g | forget_hit@10 %s | valid ndcg@10 %s (x%s of original) %s",
                        record["trial"], params_str(record["params"]), record["loss"],
                        fmt(record["forget"].get("forget_hit@10")), fmt(record["valid"].get("ndcg@10")),
                        fmt(record["valid_ratio"], 3), "feasible" if record["feasible"] else "INFEASIBLE")
        return record

    def best(self) -> dict | None:
        """The feasible trial with the lowest loss (the earliest among equals). Chosen here from
        the records, not from ``HyperTuning.best_params``: its ``if not self.best_score``
        treats a best score of exactly 0 as "no best yet"."""
        ok = [t for t in self.trials if t["status"] == "ok" and t["feasible"]]
        if not ok:
            return None
        return min(ok, key=lambda t: (t["loss"], t["trial"]))

    # ---- RecBole's HyperTuning calls this -------------------------------------------------
    def objective_function(self, config_dict: dict, config_file_list=None) -> dict:
        """``HyperTuning``'s objective: ``config_dict`` holds one sample of the space.
        ``config_file_list`` is ignored: the config was built once, before the search."""
        record = self.add(self.evaluate_trial(dict(config_dict), label=f"trial{len(self.trials) + 1}"))
        return {
            "model": self.run.config["model"],
            "best_valid_score": record["loss"],
            "valid_score_bigger": False,
            "best_valid_result": {"loss": record["loss"], "feasible": record["feasible"],
                                  **{f"valid.{k}": v for k, v in record["valid"].items()},
                                  **record["forget"]},
            "test_result": {},  # the search never looks at test
        }

    # ---- Ray: what a worker needs, without loaders (rebuilt there) -------------------------
    def pack(self) -> bytes:
        run = copy.copy(self.run)
        run.loaders, run.forget_loader, run.rows, run.run_dir = (), None, [], None
        slim = copy.copy(self)
        slim.run, slim.trials = run, []
        return pickle.dumps(slim, protocol=4)

    @staticmethod
    def unpack(blob: bytes) -> "TuneSearch":

        search = pickle.loads(blob)
        run = search.run
        run.open()  # the evaluator's loaders (its validation loader: the monitor part)
        return search


def run_hyperopt(search: TuneSearch, algo: str, max_evals: int, early_stop: int, seed: int,
                 config_files: list[str] | None, run_dir: str) -> int:
    """RecBole's ``HyperTuning`` over the space; returns the planned number of trials.

    ``exhaustive`` takes every combination (``max_evals`` is the grid's size) and its
    no-progress early stop is lifted; ``random`` / ``bayes`` keep it, so they may end before
    ``max_evals``. ``HYPEROPT_FMIN_SEED`` is the config's ``seed`` unless already set: the
    proposals are reproducible. RecBole's own export goes to ``hyper.result``."""
    from recbole.trainer import HyperTuning

    if algo == "exhaustive":  # every combination: RecBole's no-progress stop would cut the grid short
        early_stop = max(int(early_stop), space_size(search.specs))
    tuner = HyperTuning(search.objective_function, params_dict=hyperopt_params_dict(search.specs),
                        fixed_config_file_list=config_files, algo=algo, max_evals=max_evals,
                        early_stop=early_stop)
    saved = os.environ.get("HYPEROPT_FMIN_SEED")
    if not saved:
        os.environ["HYPEROPT_FMIN_SEED"] = str(int(seed))
    try:
        tuner.run()
    finally:
        if not saved:
            os.environ.pop("HYPEROPT_FMIN_SEED", None)
    atomic_write(os.path.join(run_dir, "hyper.result"), lambda tmp: tuner.export_result(output_file=tmp))
    return int(tuner.max_evals)
