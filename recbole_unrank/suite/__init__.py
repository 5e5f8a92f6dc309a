"""Grids of runs: models x tasks x ratios x user selections x request seeds x methods.

A suite YAML (``config/suite/*.yaml``) names the grid; :func:`run_suite` runs it and writes,
under its output folder, one record per finished cell (``cells/``), every record
(``suite.json``), the summary (``summary.md`` / ``summary.csv``) and plots (``plots/``); the
originals and retrained models it trains are cached and reused by every method and by reruns.

Three modules, one concern each:

* :mod:`~recbole_unrank.suite.spec`: the suite YAML, read and checked (:func:`load_spec`);
* :mod:`~recbole_unrank.suite.run`: the grid's requests and cells in run order (:func:`plan`),
  the model cache and the runs, serial or as Ray tasks (:func:`run_suite`);
* :mod:`~recbole_unrank.suite.summary`: statistics over the evaluation request seeds and the
  markdown / csv summary with its plots (:func:`summarise`).

Design request seeds choose settings (the tuner runs on them); evaluation request seeds only
report. The two lists must not overlap, and the summary reads evaluation seeds only.
"""

from recbole_unrank.suite.run import (
    forget_cells,
    model_cache_key,
    model_config,
    plan,
    run_request,
    run_suite,
    train_original,
    write_suite_json,
)
from recbole_unrank.suite.spec import Cell, Request, SuiteSpec, load_spec
from recbole_unrank.suite.summary import (
    HEADLINE,
    MEASURES,
    cell_text,
    pooled_tests,
    summarise,
    summary_markdown,
    summary_rows,
)

__all__ = ["SuiteSpec", "Request", "Cell", "load_spec", "plan", "run_suite", "summarise", "forget_cells",
           "MEASURES", "HEADLINE", "summary_rows", "pooled_tests", "summary_markdown", "cell_text",
           "write_suite_json", "model_cache_key", "model_config", "train_original", "run_request"]
