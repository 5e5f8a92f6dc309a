"""The search space and the search's options: a RecBole params file parsed and checked, and
the same space for hyperopt (through RecBole's ``HyperTuning``) and for Ray Tune.

Params files use RecBole's format (``recbole.trainer.HyperTuning``), one setting a line::

    unrank_damping loguniform -6.9,0        # exp(U(-6.9, 0)): 1e-3 .. 1
    unrank_hops choice [1,2,3]
    unrank_step_floor choice [0.0,1.0]
    unrank_view_share uniform 0,0.2

(``#`` comment lines and blank lines are allowed here; RecBole's own parser does not accept
comments.) Only ``unrank_*`` settings of the tuned method may be searched; the file is checked
completely, and every value it can produce (choices, range ends) is checked by the method,
before anything runs or is written.
"""

from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass, field

import numpy as np

from recbole_unrank.errors import UnrankError, arg, option
from recbole_unrank.methods import METHODS

__all__ = ["ParamSpec", "SearchOptions", "read_params_file", "check_values", "hyperopt_params_dict",
           "hyperopt_space", "ray_param_space", "space_size", "ALGOS", "TOOLS", "DISTRIBUTIONS"]

ALGOS = ("exhaustive", "random", "bayes")
TOOLS = ("hyperopt", "ray")
DISTRIBUTIONS = ("choice", "uniform", "quniform", "loguniform")


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
            return (f"loguniform exp({self.low:g})..exp({self.high:g}) = "
                    f"{math.exp(self.low):.3g}..{math.exp(self.high):.3g}")
        return f"uniform {self.low:g}..{self.high:g}"


@dataclass(frozen=True)
class SearchOptions:
    """How to search (``recbole-unrank-hyper``'s own options, or :func:`tune_unrank`'s
    arguments), checked in one place: :meth:`check`."""

    params_file: str
    algo: str = "exhaustive"
    max_evals: int = 100
    tool: str = "hyperopt"
    early_stop: int = 10

    def check(self) -> "SearchOptions":
        if self.algo not in ALGOS:
            raise UnrankError(f"{option('algo', self.algo)}: use {', '.join(ALGOS)}")
        tool = str(self.tool).lower()
        if tool not in TOOLS:
            raise UnrankError(f"{option('tool', self.tool)}: use {' or '.join(TOOLS)}")
        try:
            max_evals, early_stop = int(self.max_evals), int(self.early_stop)
        except (TypeError, ValueError):
            raise UnrankError(f"{arg('max_evals')} and {arg('early_stop')} take whole numbers, got "
                              f"{self.max_evals!r} and {self.early_stop!r}") from None
        if max_evals < 1:
            raise UnrankError(f"{option('max_evals', max_evals)} must be at least 1")
        return SearchOptions(self.params_file, self.algo, max_evals, tool, early_stop)


def _floats(text: str, n: int, where: str) -> list[float]:
    parts = text.split(",")
    try:
        if len(parts) != n:
            raise ValueError
        vals = [float(p) for p in parts]
    except ValueError:
        raise UnrankError(f"{where}: expected {n} comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise UnrankError(f"{where}: numbers must be finite, got {text!r}")
    return vals


def _spec(name: str, kind: str, value: str, where: str) -> ParamSpec:
    """One line's distribution and values."""
    if kind not in DISTRIBUTIONS:
        raise UnrankError(f"{where}: unknown distribution '{kind}' (use {', '.join(DISTRIBUTIONS)})")
    if kind == "choice":
        try:
            values = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise UnrankError(f"{where}: choice needs a Python list such as [0,1,2], got {value!r}") from None
        if not isinstance(values, (list, tuple)) or not values:
            raise UnrankError(f"{where}: choice needs a non-empty list such as [0,1,2], got {value!r}")
        return ParamSpec(name, kind, values=list(values))
    if kind == "quniform":
        low, high, q = _floats(value, 3, where)
        if not q > 0:
            raise UnrankError(f"{where}: quniform step must be > 0, got {q:g}")
    else:
        (low, high), q = _floats(value, 2, where), 0.0
    if not low < high:
        raise UnrankError(f"{where}: low must be below high, got {value!r}")
    return ParamSpec(name, kind, low=low, high=high, q=q)


def read_params_file(path: str, method: str = "l2unrank") -> list[ParamSpec]:
    """Parse and check a RecBole params file for tuning ``method``; any problem -> UnrankError
    (one line naming the file and line). ``#`` comment lines and blank lines are allowed."""
    if not path:
        raise UnrankError(f"no params file: pass {arg('params_file')} (e.g. config/hyper/l2unrank.hyper)")
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
        specs[name] = _spec(name, kind, value, where)
    if not specs:
        raise UnrankError(f"params file '{path}' names no setting: write lines such as 'unrank_hops choice [0,1,2]'")
    return list(specs.values())


def check_values(method_settings: dict, method: str, specs: list[ParamSpec], path: str) -> None:
    """Every value the space can produce must be accepted by the method (built with
    ``method_settings``, its keyword arguments from the config, and the value in place)."""
    cls = METHODS[method]
    inverse = {v: k for k, v in cls.settings.items()}
    for spec in specs:
        for value in spec.probe_values():
            try:
                cls(**{**method_settings, inverse[spec.name]: value})
            except (UnrankError, TypeError, ValueError) as exc:
                raise UnrankError(f"params file '{path}': {spec.name} value {value!r} is refused: {exc}") from None


def check_exhaustive(specs: list[ParamSpec]) -> None:
    continuous = [s.name for s in specs if s.kind != "choice"]
    if continuous:
        raise UnrankError(f"{option('algo', 'exhaustive')} needs 'choice' settings only; {', '.join(continuous)} "
                          "are ranges: use random or bayes")


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
