"""Tune an unlearning method's ``unrank_*`` settings with RecBole's own ``HyperTuning``
(hyperopt: ``exhaustive``, ``random``, ``bayes``) or, on request, with Ray Tune.

One search, one original model, one request: the original is trained (or loaded from
``--checkpoint``) once and the request drawn once; every trial runs the method on a fresh copy
of that original (``Run.run_method(method, overrides=params, save=False, evaluate_test=False)``),
so a trial costs one unlearning step plus a validation and a request evaluation.

Selection never looks at the test split. A trial is scored on the **validation** split
(utility, with only the retained history masked) and on the **request** (forget measures);
the chosen settings are then run once more, with the defaults beside them, and only those two
runs are evaluated on test.

Objective (``unrank_tune_objective``; every objective is a loss, lower is better):

* ``constrained`` (default): minimise ``forget_hit@10`` subject to
  ``valid NDCG@10 >= unrank_tune_utility_floor x`` the original's validation NDCG@10 (both
  measured with the same retained-history loader). Ties on ``forget_hit@10`` go to the higher
  validation NDCG@10 (the loss is ``forget_hit@10 - 1e-6 x ratio``: smaller than one forget pair
  on any request under a million pairs). An infeasible trial scores ``1000 + shortfall`` (worse
  than every feasible one, and ordered by how far it misses the floor, which guides TPE); it is
  never chosen as best. A trial that fails (settings the method refuses, or an exception in
  the method) is recorded as an error trial and scores ``1e6``; the search goes on.
* ``weighted``: ``unrank_tune_weight x forget_hit@10 - valid NDCG@10 / original's`` (no floor).
* ``metric:<name>[:min|max]``: one reported measure, in its own direction unless told:
  ``forget_*`` and ``time_s`` are minimised, ``mean_rank``, ``rdr``, ``urr``,
  ``rank_decline_ratio`` and the validation utility metrics (``ndcg@10``, ``recall@20``, ...,
  optionally written ``valid.ndcg@10``) maximised; maximised measures enter the loss negated.

Params files use RecBole's format (``recbole.trainer.HyperTuning``), one setting a line::

    unrank_damping loguniform -6.9,0        # exp(U(-6.9, 0)): 1e-3 .. 1
    unrank_hops choice [1,2,3]
    unrank_step_floor choice [0.0,1.0]
    unrank_view_share uniform 0,0.2

(``#`` comment lines and blank lines are allowed here; RecBole's own parser does not accept
comments.) Only ``unrank_*`` settings of the tuned method may be searched; the file is checked
completely, and every value it can produce (choices, range ends) is checked by the method,
before anything runs or is written.

Outputs (the run folder ``<unrank_output_dir>/<model>-<dataset>-hyper-<time>``): ``trials.csv``
and ``trials.md`` (every trial's settings and measures), ``best.yaml`` (``unrank_method`` and the
method's complete ``unrank_*`` settings, readable by ``run_unrank.py --config_files``),
``best.json`` (the search, the best trial, and the original / defaults / best rows with
validation, test and forget measures), ``trials.png``, ``request.inter``, ``original.pth``
(when trained here), the best unlearned checkpoint, ``hyper.result`` (RecBole's own export,
hyperopt tool) and ``run.log``. Every file is written to a temporary name and renamed.

Notes on RecBole's ``HyperTuning`` (1.2.1), which runs the hyperopt searches:

* the best trial is chosen here, from the trial records (lowest loss among feasible trials,
  earliest among equals), not from ``HyperTuning.best_params``: its ``if not self.best_score``
  treats a best score of exactly 0 as "no best yet";
* ``exhaustive`` takes every combination of the choices (``max_evals`` is the grid's size);
  ranges are refused for it. Its no-progress early stop is lifted for exhaustive searches, and
  kept for ``random`` / ``bayes`` (``--early_stop``, RecBole's 10 by default): a search may end
  before ``max_evals`` (``best.json`` says so);
* the proposals are reproducible: ``HYPEROPT_FMIN_SEED`` is set to the config's ``seed`` for the
  search unless it is already set.

Ray Tune (``--tool ray``) runs the same space (``bayes``: ``HyperOptSearch`` with the hyperopt
space; ``random``: ``tune.choice`` / ``uniform`` / ``quniform`` / ``loguniform``; ``exhaustive``:
``tune.grid_search``) one trial at a time on a local Ray instance
(``ray.init(num_cpus=1, include_dashboard=False)``). The compat patches do not reach Ray's worker
processes, and ``ray.tune`` itself needs them there (``np.bool8``), so the instance is started
with a ``worker_process_setup_hook`` that imports ``recbole_unrank`` first; the prepared run is
pickled once (without its loaders, rebuilt in the worker) and handed to the workers through
``tune.with_parameters`` (Ray's object store). Ray Tune 2.x also needs ``pyarrow``. A Ray
instance started by the caller is used as it is, and must have been given the same hook.
"""

from __future__ import annotations

import ast
import copy
import csv
import io
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from recbole_unrank import compat  # noqa: F401  (before RecBole)
from recbole_unrank import pipeline
from recbole_unrank.checkpoints import atomic_write
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import METHODS
from recbole_unrank.report import write_text

__all__ = [
    "ParamSpec",
    "Objective",
    "TuneSearch",
    "TuneResult",
    "read_params_file",
    "hyperopt_params_dict",
    "ray_param_space",
    "tune_unrank",
    "ALGOS",
    "TOOLS",
    "DISTRIBUTIONS",
]

logger = logging.getLogger("recbole_unrank")

ALGOS = ("exhaustive", "random", "bayes")
TOOLS = ("hyperopt", "ray")
DISTRIBUTIONS = ("choice", "uniform", "quniform", "loguniform")
TIE_WEIGHT = 1e-6          # constrained: weight of the validation ratio that breaks ties
INFEASIBLE_LOSS = 1000.0   # constrained: base loss of a trial below the utility floor
ERROR_LOSS = 1e6           # a trial whose settings the method refuses
# Measures that are better when larger (among the forget measures; validation utility
# metrics follow RecBole's smaller_metrics).
BIGGER_FORGET = {"mean_rank", "rdr", "urr", "rank_decline_ratio"}
DEFAULTS = {
    "unrank_tune_method": "l2unrank",
    "unrank_tune_objective": "constrained",
    "unrank_tune_utility_floor": 0.97,
    "unrank_tune_weight": 1.0,
}


def _setting(config, key: str):
    value = config[key]  # RecBole's Config returns None for a key it does not hold
    return DEFAULTS.get(key) if value is None else value


# --------------------------------------------------------------------------- params files
@dataclass
class ParamSpec:
    """One searched setting: ``name kind value`` of a RecBole params file."""

    name: str
    kind: str                 # choice | uniform | quniform | loguniform
    values: list = field(default_factory=list)   # choice values
    low: float = 0.0
    high: float = 0.0
    q: float = 0.0

    def probe_values(self) -> list:
        """Every value a choice can take, the range ends of the others (in setting units)."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "loguniform":
            return [math.exp(self.low), math.exp(self.high)]
        if self.kind == "quniform":
            return [self.normalise(round(self.low / self.q) * self.q),
                    self.normalise(round(self.high / self.q) * self.q)]
        return [self.low, self.high]

    def normalise(self, value):
        """A sampled value as plain Python (quniform with an integral step: an int)."""
        if isinstance(value, np.generic):
            value = value.item()
        if self.kind == "quniform" and float(self.q).is_integer() and float(value).is_integer():
            return int(value)
        if self.kind in ("uniform", "loguniform"):
            return float(value)
        return value

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {self.values}"
        if self.kind == "quniform":
            return f"quniform {self.low:g}..{self.high:g} step {self.q:g}"
        if self.kind == "loguniform":
            return f"loguniform exp({self.low:g})..exp({self.high:g}) = {math.exp(self.low):.3g}..{math.exp(self.high):.3g}"
        return f"uniform {self.low:g}..{self.high:g}"


def _floats(text: str, n: int, where: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != n:
        raise UnrankError(f"{where}: expected {n} comma-separated numbers, got {text!r}")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise UnrankError(f"{where}: expected {n} comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise UnrankError(f"{where}: numbers must be finite, got {text!r}")
    return vals


def read_params_file(path: str, method: str = "l2unrank") -> list[ParamSpec]:
    """Parse and check a RecBole params file for tuning ``method``; any problem -> UnrankError
    (one line naming the file and line)."""
    if not path:
        raise UnrankError("no params file: pass --params_file (e.g. config/hyper/l2unrank.hyper)")
    if not os.path.isfile(path):
        raise UnrankError(f"params file '{path}' does not exist")
    allowed = set(METHODS[method].settings.values())
    specs: dict[str, ParamSpec] = {}
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"params file '{path}' line {no}"
        parts = line.split()
        if len(parts) < 3:
            raise UnrankError(f"{where}: expected '<unrank_key> <distribution> <values>', got {line!r}")
        name, kind, value = parts[0], parts[1], "".join(parts[2:])
        if not name.startswith("unrank_"):
            raise UnrankError(f"{where}: '{name}' is not an unrank_* setting (the original model is trained "
                              "once; only the unlearning stage's settings are searched)")
        if name not in allowed:
            raise UnrankError(f"{where}: '{name}' is not a setting of {method}; its settings are "
                              f"{', '.join(sorted(allowed))}")
        if name in specs:
            raise UnrankError(f"{where}: '{name}' is given twice")
        if kind not in DISTRIBUTIONS:
            raise UnrankError(f"{where}: unknown distribution '{kind}' (use {', '.join(DISTRIBUTIONS)})")
        if kind == "choice":
            try:
                values = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise UnrankError(f"{where}: choice needs a Python list such as [0,1,2], got {value!r}") from None
            if not isinstance(values, (list, tuple)) or not values:
                raise UnrankError(f"{where}: choice needs a non-empty list such as [0,1,2], got {value!r}")
            spec = ParamSpec(name, kind, values=list(values))
        elif kind == "quniform":
            low, high, q = _floats(value, 3, where)
            if not q > 0:
                raise UnrankError(f"{where}: quniform step must be > 0, got {q:g}")
            spec = ParamSpec(name, kind, low=low, high=high, q=q)
        else:
            low, high = _floats(value, 2, where)
            spec = ParamSpec(name, kind, low=low, high=high)
        if kind != "choice" and not low < high:
            raise UnrankError(f"{where}: low must be below high, got {value!r}")
        specs[name] = spec
    if not specs:
        raise UnrankError(f"params file '{path}' names no setting: write lines such as 'unrank_hops choice [0,1,2]'")
    return list(specs.values())


def check_values(config, method: str, specs: list[ParamSpec], path: str) -> None:
    """Every value the space can produce must be accepted by the method."""
    cls = METHODS[method]
    base = pipeline.method_settings(config, cls)
    inverse = {v: k for k, v in cls.settings.items()}
    for spec in specs:
        for value in spec.probe_values():
            try:
                cls(**{**base, inverse[spec.name]: value})
            except UnrankError as exc:
                raise UnrankError(f"params file '{path}': {spec.name} value {value!r} is refused: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise UnrankError(f"params file '{path}': {spec.name} value {value!r} is refused: {exc}") from None


def hyperopt_params_dict(specs: list[ParamSpec]) -> dict:
    """The ``params_dict`` of RecBole's ``HyperTuning`` (it builds the hyperopt space itself)."""
    out: dict[str, dict] = {}
    for s in specs:
        if s.kind == "choice":
            out.setdefault("choice", {})[s.name] = list(s.values)
        elif s.kind == "quniform":
            out.setdefault("quniform", {})[s.name] = [s.low, s.high, s.q]
        else:
            out.setdefault(s.kind, {})[s.name] = [s.low, s.high]
    return out


def hyperopt_space(specs: list[ParamSpec]) -> dict:
    from recbole.trainer import HyperTuning

    return HyperTuning._build_space_from_dict(hyperopt_params_dict(specs))


def ray_param_space(specs: list[ParamSpec], algo: str) -> dict:
    """The same space for Ray Tune (as RecBole's run_hyper.py converts it: loguniform's bounds
    are exponents). ``exhaustive``: a grid over the choices."""
    from ray import tune

    space = {}
    for s in specs:
        if algo == "exhaustive":
            space[s.name] = tune.grid_search(list(s.values))
        elif s.kind == "choice":
            space[s.name] = tune.choice(list(s.values))
        elif s.kind == "uniform":
            space[s.name] = tune.uniform(s.low, s.high)
        elif s.kind == "quniform":
            space[s.name] = tune.quniform(s.low, s.high, s.q)
        else:
            space[s.name] = tune.loguniform(math.exp(s.low), math.exp(s.high))
    return space


def space_size(specs: list[ParamSpec]) -> int:
    return int(np.prod([len(s.values) for s in specs]))


# --------------------------------------------------------------------------- objective
@dataclass
class Objective:
    """How a trial's measures become one loss (lower is better), and whether it is feasible."""

    kind: str                      # constrained | weighted | metric
    floor: float = 0.97
    weight: float = 1.0
    metric: str | None = None      # metric: the measure's key
    section: str | None = None     # metric: "forget", "valid" or "" (time_s)
    bigger: bool = False           # metric: larger is better

    @classmethod
    def from_config(cls, config) -> "Objective":
        spec = str(_setting(config, "unrank_tune_objective")).strip()
        try:
            floor = float(_setting(config, "unrank_tune_utility_floor"))
            weight = float(_setting(config, "unrank_tune_weight"))
        except (TypeError, ValueError):
            raise UnrankError("unrank_tune_utility_floor and unrank_tune_weight must be numbers") from None
        if not (math.isfinite(floor) and floor > 0):
            raise UnrankError(f"unrank_tune_utility_floor={floor} must be > 0 (e.g. 0.97: keep 97% of the "
                              "original's validation NDCG@10)")
        if not math.isfinite(weight):
            raise UnrankError(f"unrank_tune_weight={weight} must be finite")
        forget_topk = [int(k) for k in config["unrank_topk"] or []]
        forget_names = [m.lower() for m in config["unrank_metrics"] or []]
        if spec in ("constrained", "weighted"):
            if 10 not in forget_topk or "forget_hit" not in forget_names:
                raise UnrankError(f"unrank_tune_objective={spec} needs forget_hit@10: keep forget_hit in "
                                  "unrank_metrics and 10 in unrank_topk")
            return cls(spec, floor=floor, weight=weight)
        if spec.startswith("metric:"):
            rest = spec[len("metric:"):]
            direction = None
            if rest.endswith((":min", ":max")):
                rest, direction = rest.rsplit(":", 1)
            name = rest.strip().lower()
            section, key = _resolve_metric(config, name)
            if direction is None:
                bigger = _bigger(section, key)
            else:
                bigger = direction == "max"
            return cls("metric", floor=floor, weight=weight, metric=key, section=section, bigger=bigger)
        raise UnrankError(f"unrank_tune_objective={spec!r}: use constrained, weighted or metric:<name> "
                          "(e.g. metric:forget_hit@20, metric:mean_rank, metric:valid.ndcg@10)")

    def describe(self) -> str:
        if self.kind == "constrained":
            return (f"minimise forget_hit@10 subject to valid NDCG@10 >= {self.floor:g} x original's "
                    "(ties: higher valid NDCG@10)")
        if self.kind == "weighted":
            return f"minimise {self.weight:g} x forget_hit@10 - valid NDCG@10 / original's"
        where = f"{self.section}." if self.section else ""
        return f"{'maximise' if self.bigger else 'minimise'} {where}{self.metric}"

    @property
    def label(self) -> str:
        """What the plot's y axis shows."""
        if self.kind == "constrained":
            return "forget_hit@10 (lower is better)"
        if self.kind == "weighted":
            return "weighted loss (lower is better)"
        return f"{self.metric} ({'higher' if self.bigger else 'lower'} is better)"

    def value(self, record: dict) -> float | None:
        """The measure the objective is about (un-penalised), for tables and plots."""
        if record.get("status") != "ok":
            return None
        if self.kind == "constrained":
            return record["forget"].get("forget_hit@10")
        if self.kind == "weighted":
            return record["loss"]
        if self.section == "":
            return record.get(self.metric)
        return record[self.section].get(self.metric)

    def score(self, record: dict, original_ndcg: float) -> None:
        """Fill ``loss``, ``valid_ratio``, ``meets_floor``, ``feasible`` of a trial record."""
        if record.get("status") != "ok":
            record.update(loss=ERROR_LOSS, valid_ratio=None, meets_floor=False, feasible=False)
            return
        ndcg = float(record["valid"]["ndcg@10"])
        ratio = ndcg / original_ndcg if original_ndcg > 0 else (1.0 if ndcg >= 0 else 0.0)
        meets = ratio >= self.floor - 1e-12
        record["valid_ratio"] = ratio
        record["meets_floor"] = bool(meets)
        hit = record["forget"].get("forget_hit@10")
        if self.kind == "constrained":
            record["feasible"] = bool(meets)
            record["loss"] = (float(hit) - TIE_WEIGHT * ratio) if meets else INFEASIBLE_LOSS + (self.floor - ratio)
        elif self.kind == "weighted":
            record["feasible"] = True
            record["loss"] = self.weight * float(hit) - ratio
        else:
            value = self.value(record)
            if value is None or not math.isfinite(float(value)):
                raise UnrankError(f"unrank_tune_objective metric '{self.metric}' was not reported by the trial")
            record["feasible"] = True
            record["loss"] = -float(value) if self.bigger else float(value)


def _valid_names(config) -> list[str]:
    return [f"{m.lower()}@{k}" for m in config["metrics"] or [] for k in config["topk"] or []]


def _forget_names(config) -> list[str]:
    out = []
    for m in (config["unrank_metrics"] or []):
        m = m.lower()
        if m in BIGGER_FORGET:
            out.append(m)
        else:
            out.extend(f"{m}@{k}" for k in config["unrank_topk"] or [])
    return out


def _resolve_metric(config, name: str) -> tuple[str, str]:
    if name == "time_s":
        return "", "time_s"
    if name.startswith("valid.") or name.startswith("valid_"):
        key = name[len("valid."):]
        if key in _valid_names(config):
            return "valid", key
    elif name.startswith("forget.") and name[len("forget."):] in _forget_names(config):
        return "forget", name[len("forget."):]
    elif name in _forget_names(config):
        return "forget", name
    elif name in _valid_names(config):
        return "valid", name
    raise UnrankError(f"unrank_tune_objective=metric:{name}: not a reported measure; choose from "
                      f"{', '.join(_forget_names(config) + ['valid.' + n for n in _valid_names(config)] + ['time_s'])}")


def _bigger(section: str, key: str) -> bool:
    from recbole.evaluator import register

    base = key.split("@", 1)[0]
    if section == "":
        return False
    if section == "forget":
        return base in BIGGER_FORGET
    return base not in register.smaller_metrics


# --------------------------------------------------------------------------- the search
def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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

    def evaluate_original(self) -> dict:
        run = self.run
        row, _ = run.evaluate_forget_only(run.original, "original", 0.0)
        if "ndcg@10" not in row["valid"]:
            row["valid"]["ndcg@10"] = run.valid_score(run.original)
        self.original_valid = row
        return row

    def _params(self, params: dict) -> dict:
        by_name = {s.name: s for s in self.specs}
        return {k: by_name[k].normalise(v) if k in by_name else _plain(v) for k, v in params.items()}

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
                             label, _params_str(params))
        else:
            if "ndcg@10" not in row["valid"]:
                row["valid"]["ndcg@10"] = run.valid_score(row["_model"])
            record.update(
                valid=_plain(row["valid"]), forget=_plain(row["forget"]), time_s=float(row["time_s"]),
                stages=_plain(row.get("stages", {})),
                info=_plain({k: v for k, v in row.items()
                             if k not in ("method", "time_s", "valid", "forget", "stages", "ranks", "_model")}),
            )
        finally:
            del run.rows[n_rows:]  # trial rows (and their models) are not kept on the run
        self.objective.score(record, self.original_ndcg)
        return record

    def add(self, record: dict) -> dict:
        record["trial"] = len(self.trials) + 1
        self.trials.append(record)
        if record["status"] == "ok":
            logger.info("[trial %d] %s | loss %.6g | forget_hit@10 %.4f | valid ndcg@10 %.4f (x%.3f of original) %s",
                        record["trial"], _params_str(record["params"]), record["loss"],
                        record["forget"].get("forget_hit@10", float("nan")), record["valid"].get("ndcg@10", float("nan")),
                        record["valid_ratio"], "feasible" if record["feasible"] else "INFEASIBLE")
        return record

    # ---- RecBole's HyperTuning calls this -------------------------------------------------
    def objective_function(self, config_dict: dict, config_file_list=None) -> dict:
        """``HyperTuning``'s objective: ``config_dict`` holds one sample of the space.
        ``config_file_list`` is ignored: the config was built once, before the search."""
        n = len(self.trials) + 1
        record = self.add(self.evaluate_trial(dict(config_dict), label=f"trial{n}"))
        return {
            "model": self.run.config["model"],
            "best_valid_score": record["loss"],
            "valid_score_bigger": False,
            "best_valid_result": {"loss": record["loss"], "feasible": record["feasible"],
                                  **{f"valid.{k}": v for k, v in record["valid"].items()},
                                  **record["forget"]},
            "test_result": {},  # the search never looks at test
        }

    def best(self) -> dict | None:
        """The feasible trial with the lowest loss (the earliest among equals)."""
        ok = [t for t in self.trials if t["status"] == "ok" and t["feasible"]]
        if not ok:
            return None
        return min(ok, key=lambda t: (t["loss"], t["trial"]))

    # ---- Ray: what a worker needs, without loaders (rebuilt there) -------------------------
    def pack(self) -> bytes:
        self.run.valid_ndcg_sum  # noqa: B018  (computed once here, pickled with the run)
        run = copy.copy(self.run)
        run.loaders, run.forget_loader, run.rows, run.run_dir = (), None, [], None
        slim = copy.copy(self)
        slim.run, slim.trials = run, []
        return pickle.dumps(slim, protocol=4)

    @staticmethod
    def unpack(blob: bytes) -> "TuneSearch":
        search = pickle.loads(blob)
        run = search.run
        run.loaders = pipeline.make_loaders(run.config, run.data, run.retain_ds)
        run.forget_loader = pipeline.make_forget_loader(run.config, run.retain_ds, run.forget_ds)
        return search


def _params_str(params: dict) -> str:
    return ", ".join(f"{k[len('unrank_'):] if k.startswith('unrank_') else k}={_fmt(v)}" for k, v in params.items())


# --------------------------------------------------------------------------- tools
def _run_hyperopt(search: TuneSearch, algo: str, max_evals: int, early_stop: int, seed: int,
                  config_files: list[str] | None, run_dir: str) -> int:
    from recbole.trainer import HyperTuning

    if algo == "exhaustive":  # every combination: RecBole's no-progress stop would cut the grid short
        early_stop = max(int(early_stop), space_size(search.specs))
    tuner = HyperTuning(search.objective_function, params_dict=hyperopt_params_dict(search.specs),
                        fixed_config_file_list=config_files, algo=algo, max_evals=max_evals,
                        early_stop=early_stop)
    saved = os.environ.get("HYPEROPT_FMIN_SEED")
    if not saved:  # a reproducible search: the config's seed drives hyperopt's proposals
        os.environ["HYPEROPT_FMIN_SEED"] = str(int(seed))
    try:
        tuner.run()
    finally:
        if not saved:
            os.environ.pop("HYPEROPT_FMIN_SEED", None)
    atomic_write(os.path.join(run_dir, "hyper.result"), lambda tmp: tuner.export_result(output_file=tmp))
    return int(tuner.max_evals)


def check_ray(algo: str) -> None:
    """Ray Tune must be importable, with pyarrow (its result storage needs it)."""
    try:
        import ray  # noqa: F401
        from ray import air, tune  # noqa: F401
        from ray.air import session  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (any import failure means no ray here)
        raise UnrankError(f"--tool ray: Ray Tune cannot be imported ({type(exc).__name__}: {exc}); "
                          "pip install 'ray[tune]' or use --tool hyperopt") from None
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UnrankError("--tool ray: Ray Tune 2.x stores its results through pyarrow, which is not "
                          "installed: pip install pyarrow, or use --tool hyperopt") from None
    if algo == "bayes":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            raise UnrankError(f"--tool ray --algo bayes needs hyperopt: {exc}") from None


def _ray_worker_setup() -> None:
    """Run in every Ray worker before anything else: the compat patches (numpy 2 aliases that
    ray.tune itself needs, torch.load for RecBole checkpoints) do not travel from the driver."""
    import recbole_unrank  # noqa: F401


_WORKER_CACHE: dict[str, TuneSearch] = {}


def _ray_trainable(config: dict, blob: bytes | None = None) -> None:
    """Ray Tune function trainable: one trial on the run prepared by the driver."""
    import hashlib

    import recbole_unrank  # noqa: F401  (compat inside the worker, before RecBole is unpickled)
    from ray.air import session

    key = hashlib.sha1(blob).hexdigest()
    search = _WORKER_CACHE.get(key)
    if search is None:
        _WORKER_CACHE.clear()
        search = _WORKER_CACHE[key] = TuneSearch.unpack(blob)
    record = search.evaluate_trial(dict(config), label=f"ray-{session.get_trial_id()}")
    session.report({"loss": float(record["loss"]), "record": json.dumps(_plain(record))})


def _run_ray(search: TuneSearch, algo: str, max_evals: int, seed: int) -> int:
    from ray import air, tune

    storage = tempfile.mkdtemp(prefix="unrank-ray-")
    try:
        blob = search.pack()
        resources = {"cpu": 1}
        if str(search.run.config["device"]).startswith("cuda"):
            resources["gpu"] = 1
        trainable = tune.with_resources(tune.with_parameters(_ray_trainable, blob=blob), resources)
        search_alg, param_space, num_samples = None, None, max_evals
        if algo == "bayes":
            from ray.tune.search.hyperopt import HyperOptSearch

            search_alg = HyperOptSearch(space=hyperopt_space(search.specs), metric="loss", mode="min",
                                        random_state_seed=int(seed))
        else:
            param_space = ray_param_space(search.specs, algo)
            if algo == "exhaustive":
                num_samples = 1  # the grid is every combination
            else:
                from ray.tune.search import BasicVariantGenerator

                search_alg = BasicVariantGenerator(random_state=int(seed))
        kwargs = {"param_space": param_space} if param_space is not None else {}
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric="loss", mode="min", search_alg=search_alg,
                                        num_samples=num_samples, max_concurrent_trials=1),
            run_config=air.RunConfig(storage_path=storage, name="unrank-hyper", verbose=0),
            **kwargs,
        )
        grid = tuner.fit()
        records = []
        for result in grid:
            if result.error is not None or "record" not in (result.metrics or {}):
                raise UnrankError(f"a Ray Tune trial failed: {str(result.error).strip().splitlines()[-1]}")
            records.append(json.loads(result.metrics["record"]))
        for record in sorted(records, key=lambda r: r["started"]):
            search.add(record)
        return len(records)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def start_ray() -> bool:
    """A local Ray instance (1 CPU, no dashboard) whose workers import recbole_unrank first;
    returns whether it was started here (then it is shut down at the end). An instance the
    caller started is used as it is: it must have been given the same worker setup hook."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"worker_process_setup_hook": _ray_worker_setup})
    except Exception as exc:  # noqa: BLE001  (any failure to start means no ray here)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UnrankError(f"--tool ray: a local Ray instance could not start ({type(exc).__name__}: {first}); "
                          "use --tool hyperopt") from None
    return True


# --------------------------------------------------------------------------- reports
def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def _trial_columns(search: TuneSearch) -> tuple[list[str], list[str], list[str]]:
    names = [s.name for s in search.specs]
    forget = list(dict.fromkeys(k for t in search.trials for k in t.get("forget", {})))
    valid = list(dict.fromkeys(k for t in search.trials for k in t.get("valid", {})))
    return names, forget, valid


def trials_csv(search: TuneSearch) -> str:
    names, forget, valid = _trial_columns(search)
    header = (["trial", "status"] + names + ["objective", "loss", "feasible", "valid_ratio"] + forget
              + [f"valid_{k}" for k in valid] + ["time_s", "error"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for t in search.trials:
        w.writerow([t["trial"], t["status"]] + [_csvv(t["params"].get(n)) for n in names]
                   + [_csvv(search.objective.value(t)), _csvv(t["loss"]), t["feasible"], _csvv(t.get("valid_ratio"))]
                   + [_csvv(t.get("forget", {}).get(k)) for k in forget]
                   + [_csvv(t.get("valid", {}).get(k)) for k in valid]
                   + [_csvv(t.get("time_s")), t.get("error", "")])
    return buf.getvalue()


def _csvv(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    return value


def trials_markdown(search: TuneSearch, summary: dict) -> str:
    cfg, obj = search.run.config, search.objective
    names = [s.name for s in search.specs]
    best = summary.get("best_trial")
    lines = [
        f"# {cfg['model']} on {cfg['dataset']}: tuning {search.method} ({summary['tool']}, {summary['algo']}, "
        f"{len(search.trials)} trials)",
        "",
        f"Objective: {obj.describe()}. Original validation NDCG@10: {search.original_ndcg:.4f}.",
        f"Request: {search.run.request.summary()}.",
        "",
        "Search space: " + "; ".join(f"`{s.name}` {s.describe()}" for s in search.specs) + ".",
        "",
        "| trial | " + " | ".join(n[len("unrank_"):] for n in names)
        + " | objective | feasible | forget_hit@10 | forget_hit@20 | mean rank | URR | valid NDCG@10 | x original | time (s) |",
        "|---" * (len(names) + 10) + "|",
    ]
    for t in search.trials:
        f, v = t.get("forget", {}), t.get("valid", {})
        mark = " **best**" if best is not None and t["trial"] == best else ""
        status = "error" if t["status"] != "ok" else _fmt(t["feasible"])
        lines.append(
            f"| {t['trial']}{mark} | " + " | ".join(_fmt(t["params"].get(n)) for n in names)
            + f" | {_fmt(obj.value(t))} | {status} | {_fmt(f.get('forget_hit@10'))} | {_fmt(f.get('forget_hit@20'))} | "
            f"{_fmt(f.get('mean_rank'))} | {_fmt(f.get('urr'))} | {_fmt(v.get('ndcg@10'))} | "
            f"{_fmt(t.get('valid_ratio'))} | {_fmt(t.get('time_s'))} |"
        )
    lines += ["", "## Best settings against the defaults", ""]
    if best is None:
        lines.append("No trial met the objective's constraint: no best settings (see best.json).")
    if summary.get("defaults_better"):
        lines += ["**The defaults score better on the objective (validation + request) than every trial**: "
                  "keep them, or search longer or in a narrower space.", ""]
    lines.append("Each row below is one more run, reported on test (selection used validation only); "
                 "`objective` and `feasible` are on validation.")
    lines.append("")
    rows = summary.get("rows", [])
    if rows:
        lines += ["| model | objective | feasible | valid NDCG@10 | test NDCG@10 | test Recall@10 | test NDCG@20 | "
                  "forget_hit@10 | forget_hit@20 | mean rank | URR | time (s) |", "|---" * 12 + "|"]
        for r in rows:
            v, te, f = r.get("valid", {}), r.get("test", {}), r.get("forget", {})
            lines.append(f"| {r['method']} | {_fmt(r.get('objective'))} | {_fmt(r.get('feasible'))} | "
                         f"{_fmt(v.get('ndcg@10'))} | {_fmt(te.get('ndcg@10'))} | "
                         f"{_fmt(te.get('recall@10'))} | {_fmt(te.get('ndcg@20'))} | {_fmt(f.get('forget_hit@10'))} | "
                         f"{_fmt(f.get('forget_hit@20'))} | {_fmt(f.get('mean_rank'))} | {_fmt(f.get('urr'))} | "
                         f"{_fmt(r.get('time_s'))} |")
    return "\n".join(lines) + "\n"


def best_yaml(search: TuneSearch, best: dict, summary: dict) -> str:
    cfg = search.run.config
    cls = METHODS[search.method]
    settings = {key: _plain(cfg[key]) for key in cls.settings.values()}
    settings.update(best["params"])
    body = yaml.safe_dump({"unrank_method": search.method, **dict(sorted(settings.items()))},
                          sort_keys=False, default_flow_style=None)
    head = (f"# run_unrank_hyper.py: best of {len(search.trials)} trials ({summary['tool']}, {summary['algo']}), "
            f"trial {best['trial']}\n"
            f"# {cfg['model']} on {cfg['dataset']}, seed {cfg['seed']}; objective: {search.objective.describe()}\n"
            f"# searched: {', '.join(s.name for s in search.specs)}\n"
            f"# use: python run_unrank.py -m {cfg['model']} -d {cfg['dataset']} "
            f"--config_files \"<the same config files> best.yaml\"\n")
    return head + body


def plot_trials(search: TuneSearch, path: str, best: dict | None, default_value: float | None,
                default_feasible: bool = True) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no trials.png")
        return None
    obj = search.objective
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    xs = [t["trial"] for t in search.trials]
    groups = {
        "feasible": [t for t in search.trials if t["status"] == "ok" and t["feasible"]],
        "infeasible": [t for t in search.trials if t["status"] == "ok" and not t["feasible"]],
    }
    if groups["feasible"]:
        ax.scatter([t["trial"] for t in groups["feasible"]], [obj.value(t) for t in groups["feasible"]],
                   color="tab:blue", label="feasible", zorder=3)
    if groups["infeasible"]:
        ax.scatter([t["trial"] for t in groups["infeasible"]], [obj.value(t) for t in groups["infeasible"]],
                   color="tab:red", marker="x", label="infeasible (below the utility floor)", zorder=3)
    errors = [t["trial"] for t in search.trials if t["status"] != "ok"]
    for n, x in enumerate(errors):
        ax.axvline(x, color="grey", alpha=0.3, lw=4, label="error (no result)" if n == 0 else None)
    # running best among feasible trials
    run_x, run_y, cur = [], [], None
    for t in search.trials:
        if t["status"] == "ok" and t["feasible"] and (cur is None or t["loss"] < cur["loss"]):
            cur = t
        if cur is not None:
            run_x.append(t["trial"])
            run_y.append(obj.value(cur))
    if run_x:
        ax.step(run_x, run_y, where="post", color="tab:blue", alpha=0.5, lw=1, label="best so far")
    if best is not None:
        ax.scatter([best["trial"]], [obj.value(best)], marker="*", s=260, color="gold", edgecolor="black",
                   zorder=4, label=f"best (trial {best['trial']})")
    if default_value is not None:
        ax.axhline(default_value, color="grey", ls="--", lw=1,
                   label="defaults" + ("" if default_feasible else " (infeasible)"))
    ax.set_ylabel(obj.label)
    ax.legend(fontsize=8, loc="best")
    cfg = search.run.config
    ax.set_title(f"{cfg['model']} on {cfg['dataset']}: {search.method} trials (validation + request)")
    ok = [t for t in search.trials if t["status"] == "ok"]
    ax2.scatter([t["trial"] for t in ok], [t["valid_ratio"] for t in ok],
                c=["tab:blue" if t["meets_floor"] else "tab:red" for t in ok], s=18)
    if obj.kind == "constrained":
        ax2.axhline(obj.floor, color="tab:red", ls="--", lw=1, label=f"utility floor {obj.floor:g}")
        ax2.legend(fontsize=8, loc="best")
    ax2.set_ylabel("valid NDCG@10 / original")
    ax2.set_xlabel("trial")
    if xs:
        ax2.set_xticks(xs if len(xs) <= 30 else xs[:: max(1, len(xs) // 15)])
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- the job
@dataclass
class TuneResult:
    run_dir: str
    trials: list[dict]
    best: dict | None
    record: dict


def _final_row(search: TuneSearch, overrides: dict | None, label: str, save: bool) -> dict:
    """Run the method once more with ``overrides``, evaluated on test and on validation."""
    run = search.run
    row = run.audit_row(run.run_method(search.method, overrides=overrides, save=save, evaluate_test=True, label=label))
    valid_row, _ = run.evaluate_forget_only(row["_model"], label, row["time_s"])
    out = {k: v for k, v in row.items() if k not in ("ranks", "_model")}
    out["valid"] = valid_row["valid"]
    if "ndcg@10" not in out["valid"]:
        out["valid"]["ndcg@10"] = run.valid_score(row["_model"])
    out["params"] = dict(overrides or {})
    scored = {"status": "ok", "valid": out["valid"], "forget": out["forget"], "time_s": out["time_s"]}
    search.objective.score(scored, search.original_ndcg)
    out.update(loss=scored["loss"], feasible=scored["feasible"], valid_ratio=scored["valid_ratio"])
    out["objective"] = search.objective.value(scored)
    row.pop("_model", None)
    return _plain(out)


def check_design_seed(config) -> int:
    """Settings are chosen on design request seeds only: a request seed listed in
    ``unrank_eval_seeds`` (kept for reporting) is refused. Returns the request seed."""
    seed = pipeline.request_seed(config)
    reserved = [int(s) for s in (_setting(config, "unrank_eval_seeds") or [])]
    if seed in reserved:
        raise UnrankError(f"request seed {seed} is an evaluation seed (unrank_eval_seeds {reserved}): tune on a "
                          "design seed, e.g. --unrank_request_seed=101, and report on the evaluation seeds")
    return seed


def prepare_search(config, params_file: str, algo: str, max_evals: int, tool: str, checkpoint: str | None):
    """Every check of the user's input, before anything is written: settings, params file,
    objective, tool; then the data and the request (``pipeline.prepare_run``)."""
    method = str(_setting(config, "unrank_tune_method"))
    if method not in METHODS:
        raise UnrankError(f"unrank_tune_method={method!r} is not a method: choose from {sorted(METHODS)}")
    if not METHODS[method].settings:
        raise UnrankError(f"unrank_tune_method={method} has no unrank_* settings to tune")
    if algo not in ALGOS:
        raise UnrankError(f"--algo {algo!r}: use {', '.join(ALGOS)}")
    if tool not in TOOLS:
        raise UnrankError(f"--tool {tool!r}: use hyperopt or ray")
    if int(max_evals) < 1:
        raise UnrankError(f"--max_evals {max_evals} must be at least 1")
    specs = read_params_file(params_file, method)
    if algo == "exhaustive":
        continuous = [s.name for s in specs if s.kind != "choice"]
        if continuous:
            raise UnrankError(f"--algo exhaustive needs 'choice' settings only; {', '.join(continuous)} "
                              "are ranges: use --algo random or bayes")
    check_values(config, method, specs, params_file)
    check_design_seed(config)
    objective = Objective.from_config(config)
    if tool == "ray":
        check_ray(algo)
    run, ckpt = pipeline.prepare_run(config, checkpoint)
    return TuneSearch(run, method, specs, objective), ckpt


def tune_unrank(config, params_file: str, algo: str = "exhaustive", max_evals: int = 100, tool: str = "hyperopt",
                checkpoint: str | None = None, early_stop: int = 10, config_files: list[str] | None = None) -> TuneResult:
    """The whole job: checks, the original (once), the search, the best and the defaults on
    test, the reports. Returns where it all went."""
    tool = tool.lower()
    search, ckpt = prepare_search(config, params_file, algo, max_evals, tool, checkpoint)
    run = search.run
    ray_started = start_ray() if tool == "ray" else False
    try:
        run.run_dir = pipeline.new_run_dir(config, "hyper")
        with pipeline.tensorboard_in(run.run_dir):
            result = _tune(search, ckpt, config, params_file, algo, max_evals, tool, checkpoint, early_stop,
                           config_files)
        pipeline.finish_run_dir(run.run_dir)
        return result
    finally:
        if ray_started:
            import ray

            ray.shutdown()


def _tune(search, ckpt, config, params_file, algo, max_evals, tool, checkpoint, early_stop, config_files):
    run = search.run
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
        if tool == "ray":
            planned = _run_ray(search, algo, int(max_evals), int(config["seed"]))
        else:
            planned = _run_hyperopt(search, algo, int(max_evals), int(early_stop), int(config["seed"]),
                                    config_files, run.run_dir)
        search_s = time.perf_counter() - wall
        if len(search.trials) < planned:
            logger.info("the search stopped after %d of %d trials: %d trials in a row without a better loss "
                        "(RecBole's HyperTuning early stop; raise --early_stop to run them all)",
                        len(search.trials), planned, early_stop)
        best = search.best()
        run.audit_row(run.rows[0])
        original_row = _plain({**{k: v for k, v in run.rows[0].items() if k not in ("ranks", "_model")},
                               "valid": search.original_valid["valid"]})
        scored = {"status": "ok", "valid": original_row["valid"], "forget": original_row["forget"]}
        search.objective.score(scored, search.original_ndcg)
        original_row.update(loss=scored["loss"], feasible=scored["feasible"], valid_ratio=scored["valid_ratio"],
                            objective=search.objective.value(scored))
        rows = [original_row]
        default_row = _final_row(search, None, "default", save=False)
        rows.append(default_row)
        best_row = None
        if best is not None:
            best_row = _final_row(search, best["params"], "best", save=True)
            rows.append(best_row)
            logger.info("best: trial %d (%s)", best["trial"], _params_str(best["params"]))
        else:
            logger.warning("no trial met the objective's constraint: no best.yaml")
        defaults_better = bool(default_row["feasible"] and (best is None or default_row["loss"] < best["loss"]))
        if defaults_better:
            logger.warning("the defaults score better on the objective (validation + request) than every trial: "
                           "keep them, or search longer / narrower")
        summary = {"tool": tool, "algo": algo, "best_trial": best["trial"] if best else None, "rows": rows,
                   "defaults_better": defaults_better}
        record = {
            "model": config["model"],
            "dataset": config["dataset"],
            "seed": int(config["seed"]),
            "request": run.request.summary(),
            "original": _plain(run.original_info),
            "search": {
                "tool": tool, "algo": algo, "method": search.method, "params_file": os.path.abspath(params_file),
                "space": {s.name: s.describe() for s in search.specs},
                "max_evals": int(max_evals), "planned_evals": planned, "early_stop": int(early_stop),
                "trials": len(search.trials),
                "stopped_early": len(search.trials) < planned,
                "feasible_trials": sum(1 for t in search.trials if t["status"] == "ok" and t["feasible"]),
                "objective": search.objective.describe(),
                "objective_kind": search.objective.kind,
                "utility_floor": search.objective.floor,
                "weight": search.objective.weight,
                "original_valid_ndcg@10": search.original_ndcg,
                "search_s": search_s,
                "selection": "validation split and the request only; test is read for the best and the defaults",
            },
            "best": None if best is None else {
                "trial": best["trial"], "params": best["params"], "loss": best["loss"],
                "objective": search.objective.value(best), "valid": best["valid"], "forget": best["forget"],
                "valid_ratio": best["valid_ratio"],
            },
            "rows": rows,
            "defaults_better": defaults_better,
            "test_comparison": _comparison(rows),
        }
        d = run.run_dir
        write_text(os.path.join(d, "trials.csv"), trials_csv(search))
        write_text(os.path.join(d, "trials.md"), trials_markdown(search, summary))
        if best is not None:
            write_text(os.path.join(d, "best.yaml"), best_yaml(search, best, summary))
        write_text(os.path.join(d, "best.json"), json.dumps(_plain(record), indent=2) + "\n")
        plot_trials(search, os.path.join(d, "trials.png"), best,
                    search.objective.value({"status": "ok", **default_row}), bool(default_row["feasible"]))
        print(trials_markdown(search, summary), flush=True)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return TuneResult(run.run_dir, search.trials, best, record)


def _comparison(rows: list[dict]) -> dict:
    """Test utility and forget measures side by side: original, defaults, best."""
    out: dict[str, dict] = {}
    for r in rows:
        for section in ("test", "forget"):
            for k, v in (r.get(section) or {}).items():
                out.setdefault(f"{section}.{k}", {})[r["method"]] = v
    return out
