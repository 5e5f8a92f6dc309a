"""A suite's grid, read and checked: the suite YAML (``config/suite/*.yaml``) as a
:class:`SuiteSpec`, and the :class:`Request` and :class:`Cell` that :func:`~recbole_unrank.suite.run.plan`
draws from it.

Every error in a suite YAML is one line (:class:`~recbole_unrank.errors.UnrankError`), raised
before anything is written. Design request seeds choose settings (the tuner runs on them);
evaluation request seeds only report: the two lists must not overlap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from recbole_unrank.errors import UnrankError

__all__ = ["SuiteSpec", "Request", "Cell", "load_spec", "TASK_KEYS", "SPEC_KEYS"]

TASK_KEYS = {"interaction": ("unrank_inter_ratio", "unrank_user_ratio"),
             "user": ("unrank_user_ratio",), "item": ("unrank_item_ratio",)}
SPEC_KEYS = {"dataset", "config_files", "models", "train_seeds", "tasks", "users", "design_seeds",
             "eval_seeds", "seeds", "methods", "hop_sweep", "settings", "output_dir", "cache_dir", "skip"}


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
    skip: dict = field(default_factory=dict)  # model -> {method: reason}: cells not run, listed with the reason
    source: str = ""
    cache_dir: str = ""  # models/, saved/, runs/ (default: <output_dir>/cache)


def _ints(name: str, value) -> list[int]:
    if not isinstance(value, list) or not value:
        raise UnrankError(f"suite: '{name}' must be a non-empty list of integers, got {value!r}")
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise UnrankError(f"suite: '{name}' must be a list of integers, got {value!r}") from None


def _users(value, where: str) -> list[str]:
    from recbole_unrank.request import USER_SELECTIONS

    users = [value] if isinstance(value, str) else list(value or [])
    if not users:
        raise UnrankError(f"suite: {where}'users' must name at least one selection of {list(USER_SELECTIONS)}")
    for u in users:
        if u not in USER_SELECTIONS:
            raise UnrankError(f"suite: {where}unknown user selection '{u}': use {list(USER_SELECTIONS)}")
    return list(dict.fromkeys(users))


def load_spec(path: str, overrides: dict | None = None) -> SuiteSpec:
    """Read and check a suite YAML; every error is one line (UnrankError), nothing written."""
    from recbole_unrank.methods import METHODS
    from recbole_unrank.models import UnknownModelError, get_model

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
        extra = sorted(set(t) - {"task", "vary", "ratios", "methods", "users"})
        if extra:
            raise UnrankError(f"suite: task {t['task']} has unknown key '{extra[0]}': a task takes task, vary, "
                              "ratios and (optionally) methods and users")
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
                        "methods": own, "users": _users(t["users"], f"task {t['task']}: ") if "users" in t else None})
    users = _users(raw.get("users", ["random"]), "")
    for t in checked:
        if t["users"] is None:
            t["users"] = users if t["task"] != "item" else ["random"]
        elif t["task"] == "item" and t["users"] != ["random"]:
            raise UnrankError("suite: task item draws items, not users: drop its 'users' (or give [random])")
    skip = raw.get("skip") or {}
    if not isinstance(skip, dict) or not all(isinstance(v, dict) for v in skip.values()):
        raise UnrankError("suite: 'skip' must map a model to {method: reason}, e.g. {NeuMF: {if: 'why'}}")
    for m, reasons in skip.items():
        if m not in models:
            raise UnrankError(f"suite: skip: '{m}' is not one of the suite's models {list(models)}")
        for meth, why in reasons.items():
            if meth not in METHODS:
                raise UnrankError(f"suite: skip: unknown method '{meth}' for {m}")
            if meth == "retrain":
                raise UnrankError("suite: skip: retrain cannot be skipped (its model fits the audit)")
            if not isinstance(why, str) or not why.strip():
                raise UnrankError(f"suite: skip: give the reason {m}'s {meth} is not run (a sentence)")
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
        extra = sweep.get("set", {})
        if not isinstance(extra, dict) or any(not isinstance(k, str) or k.endswith("_hops") or k == "unrank_hops"
                                              for k in extra):
            raise UnrankError("suite: hop_sweep: 'set' must map config keys (not a hops key: the sweep sets that) "
                              "to values, e.g. set: {unrank_twosided_sides: both}")
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
        skip={m: dict(r) for m, r in skip.items()},
        cache_dir=str(raw.get("cache_dir") or os.path.join(str(raw.get("output_dir", "runs/suite")), "cache")),
    )
