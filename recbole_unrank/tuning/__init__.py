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

The modules, one idea each: :mod:`~recbole_unrank.tuning.space` (the params file and the
search's options), :mod:`~recbole_unrank.tuning.objective` (a trial's loss),
:mod:`~recbole_unrank.tuning.search` (one trial, the trial records, RecBole's ``HyperTuning``),
:mod:`~recbole_unrank.tuning.raytune` (Ray Tune), :mod:`~recbole_unrank.tuning.report` (the
files), :mod:`~recbole_unrank.tuning.job` (the whole job, :func:`tune_unrank`).
"""

from recbole_unrank.tuning.job import TuneResult, prepare_search, tune_unrank
from recbole_unrank.tuning.objective import (ERROR_LOSS, INFEASIBLE_LOSS, TIE_WEIGHT, Objective,
                                             check_design_seed)
from recbole_unrank.tuning.search import TuneSearch
from recbole_unrank.tuning.space import (ALGOS, DISTRIBUTIONS, TOOLS, ParamSpec, SearchOptions, hyperopt_params_dict,
                                         ray_param_space, read_params_file)

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
