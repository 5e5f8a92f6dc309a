"""Tune an unlearning method's ``unrank_*`` settings with RecBole's own ``HyperTuning``
(hyperopt: ``exhaustive``, ``random``, ``bayes``) or, on request, with Ray Tune.

One search, one original model, one request: the original is trained (or loaded from
``--checkpoint``) once and the request drawn once (on a design request seed: the evaluation
seeds of ``unrank_eval_seeds`` are refused); every trial runs the method on a fresh copy of that
original (``Run.run_method(method, overrides=params, save=False, evaluate_test=False)``), so a
trial costs one unlearning step plus a validation and a request evaluation.

Selection never looks at the test split. A trial is scored on the **validation** split
(utility, with only the retained history masked) and on the **request** (forget measures);
the chosen settings are then run once more, with the defaults beside them, and only those two
runs are evaluated on test.

The objective (``unrank_tune_objective``: constrained, weighted, metric:<name>) is described in
:mod:`~recbole_unrank.tuning.objective`, the params file (RecBole's format) in
:mod:`~recbole_unrank.tuning.space`.

Outputs (the run folder ``<unrank_output_dir>/<model>-<dataset>-hyper-<time>``): ``trials.csv``
and ``trials.md`` (every trial's settings and measures), ``best.yaml`` (``unrank_method`` and the
method's complete ``unrank_*`` settings, readable by ``run_unrank.py --config_files``),
``best.json`` (the search, the best trial, and the original / defaults / best rows with
validation, test and forget measures), ``trials.png``, ``request.inter``, ``original.pth``
(when trained here), the best unlearned checkpoint, ``hyper.result`` (RecBole's own export,
hyperopt tool) and ``run.log``. Every file is written to a temporary name and renamed.

The modules, one idea each: :mod:`~recbole_unrank.tuning.space` (the params file and the
search's options), :mod:`~recbole_unrank.tuning.objective` (a trial's loss),
:mod:`~recbole_unrank.tuning.search` (one trial, the trial records, RecBole's ``HyperTuning``),
:mod:`~recbole_unrank.tuning.raytune` (Ray Tune), :mod:`~recbole_unrank.tuning.report` (the
files), :mod:`~recbole_unrank.tuning.job` (the whole job, :func:`tune_unrank`).
"""

from recbole_unrank.tuning.job import TuneResult, prepare_search, tune_unrank
from recbole_unrank.tuning.objective import ERROR_LOSS, INFEASIBLE_LOSS, TIE_WEIGHT, Objective, check_design_seed
from recbole_unrank.tuning.search import TuneSearch
from recbole_unrank.tuning.space import (
                                             ALGOS,
                                             DISTRIBUTIONS,
                                             TOOLS,
                                             ParamSpec,
                                             SearchOptions,
                                             hyperopt_params_dict,
                                             ray_param_space,
                                             read_params_file,
)

__all__ = [
    "ParamSpec",
    "SearchOptions",
    "Objective",
    "TuneSearch",
    "TuneResult",
    "read_params_file",
    "hyperopt_params_dict",
    "ray_param_space",
    "check_design_seed",
    "prepare_search",
    "tune_unrank",
    "ALGOS",
    "TOOLS",
    "DISTRIBUTIONS",
    "TIE_WEIGHT",
    "INFEASIBLE_LOSS",
    "ERROR_LOSS",
]
