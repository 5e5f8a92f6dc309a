"""What one trial is worth: its measures (validation utility, request forget measures) become
one loss, lower is better, and a feasibility flag. The settings are read from the config
(``unrank_tune_*``); the request seed must be a design seed (:func:`check_design_seed`).

Objective (``unrank_tune_objective``; every objective is a loss, lower is better):

* ``constrained`` (default): minimise ``forget_hit@10`` subject to
  ``valid NDCG@10 >= unrank_tune_utility_floor x`` the original's validation NDCG@10 (both
  measured with the same retained-history loader). Ties on ``forget_hit@10`` go to the higher
  validation NDCG@10. An infeasible trial scores ``1000 + shortfall`` (worse than every feasible
  one, and ordered by how far it misses the floor, which guides TPE); it is never chosen as
  best. A trial that fails (settings the method refuses, or an exception in the method) is
  recorded as an error trial and scores ``1e6``; the search goes on.
* ``weighted``: ``unrank_tune_weight x forget_hit@10 - valid NDCG@10 / original's`` (no floor).
* ``metric:<name>[:min|max]``: one reported measure, in its own direction unless told:
  ``forget_*`` and ``time_s`` are minimised, ``mean_rank``, ``rdr``, ``urr``,
  ``rank_decline_ratio`` and the validation utility metrics (``ndcg@10``, ``recall@20``, ...,
  optionally written ``valid.ndcg@10``) maximised; maximised measures enter the loss negated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recbole_unrank.config import default_of, given_as
from recbole_unrank.errors import UnrankError, setting

__all__ = ["Objective", "check_design_seed", "tune_setting", "TIE_WEIGHT", "INFEASIBLE_LOSS", "ERROR_LOSS",
           "BIGGER_FORGET"]

TIE_WEIGHT = 1e-6          # constrained: weight of the validation ratio that breaks ties
INFEASIBLE_LOSS = 1000.0   # constrained: base loss of a trial below the utility floor
ERROR_LOSS = 1e6           # a trial whose settings the method refuses
# Measures that are better when larger (among the forget measures; validation utility
# metrics follow RecBole's smaller_metrics).
BIGGER_FORGET = {"mean_rank", "rdr", "urr", "rank_decline_ratio"}
def tune_setting(config, key: str):
    """``key`` of the config, else the tuner's default (RecBole's Config returns None for a
    key it does not hold)."""
    value = config[key]
    return default_of(key) if value is None else value


def _number(config, key: str) -> float:
    try:
        value = float(tune_setting(config, key))
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise UnrankError(f"{given_as(config, key)} is not a finite number: {key} takes a number "
                          f"(default {default_of(key)})")
    return value


def check_design_seed(config) -> int:
    """Settings are chosen on design request seeds only: a request seed listed in
    ``unrank_eval_seeds`` (kept for reporting) is refused. Returns the request seed."""
    from recbole_unrank.data import request_seed

    seed = request_seed(config)
    reserved = [int(s) for s in (tune_setting(config, "unrank_eval_seeds") or [])]
    if seed in reserved:
        raise UnrankError(f"request seed {seed} is an evaluation seed (unrank_eval_seeds {reserved}): tune on a "
                          f"design seed, e.g. {setting('unrank_request_seed', 101)}, and report on the evaluation "
                          "seeds")
    return seed


@dataclass
class Objective:
    """How a trial's measures become one loss (lower is better), and whether it is feasible
    (the kinds: this module's docstring)."""

    kind: str                      # constrained | weighted | metric
    floor: float = 0.97
    weight: float = 1.0
    metric: str | None = None      # metric: the measure's key
    section: str | None = None     # metric: "forget", "valid" or "" (time_s)
    bigger: bool = False           # metric: larger is better

    @classmethod
    def from_config(cls, config) -> "Objective":
        spec = str(tune_setting(config, "unrank_tune_objective")).strip()
        shown = given_as(config, "unrank_tune_objective", spec)
        floor = _number(config, "unrank_tune_utility_floor")
        weight = _number(config, "unrank_tune_weight")
        if not floor > 0:
            raise UnrankError(f"{given_as(config, 'unrank_tune_utility_floor', floor)} must be > 0 (e.g. 0.97: "
                              "keep 97% of the original's validation NDCG@10)")
        if spec in ("constrained", "weighted"):
            forget_topk = [int(k) for k in config["unrank_topk"] or []]
            forget_names = [m.lower() for m in config["unrank_metrics"] or []]
            if 10 not in forget_topk or "forget_hit" not in forget_names:
                raise UnrankError(f"{shown} needs forget_hit@10: keep forget_hit in unrank_metrics and 10 in "
                                  "unrank_topk")
            return cls(spec, floor=floor, weight=weight)
        if spec.startswith("metric:"):
            rest, direction = spec[len("metric:"):], None
            if rest.endswith((":min", ":max")):
                rest, direction = rest.rsplit(":", 1)
            section, key = _resolve_metric(config, rest.strip().lower(), shown)
            bigger = _bigger(section, key) if direction is None else direction == "max"
            return cls("metric", floor=floor, weight=weight, metric=key, section=section, bigger=bigger)
        raise UnrankError(f"{shown}: use constrained, weighted or metric:<name> "
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

    def score(self, record: dict, original_ndcg: float) -> dict:
        """Fill ``loss``, ``valid_ratio``, ``meets_floor``, ``feasible`` of a trial record
        (``status``, ``valid``, ``forget``); returns it."""
        if record.get("status") != "ok":
            record.update(loss=ERROR_LOSS, valid_ratio=None, meets_floor=False, feasible=False)
            return record
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
        return record


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


def _resolve_metric(config, name: str, shown: str) -> tuple[str, str]:
    """``(section, key)`` of a reported measure: ``time_s``, ``valid.<metric>@k`` (or a bare
    validation metric), ``forget.<measure>`` (or a bare forget measure)."""
    forget, valid = _forget_names(config), _valid_names(config)
    if name == "time_s":
        return "", "time_s"
    if name.startswith(("valid.", "valid_")):
        if name[len("valid."):] in valid:
            return "valid", name[len("valid."):]
    elif name.startswith("forget.") and name[len("forget."):] in forget:
        return "forget", name[len("forget."):]
    elif name in forget:
        return "forget", name
    elif name in valid:
        return "valid", name
    raise UnrankError(f"{shown}: not a reported measure; choose from "
                      f"{', '.join(forget + ['valid.' + n for n in valid] + ['time_s'])}")


def _bigger(section: str, key: str) -> bool:
    from recbole.evaluator import register

    base = key.split("@", 1)[0]
    if section == "":
        return False
    if section == "forget":
        return base in BIGGER_FORGET
    return base not in register.smaller_metrics
