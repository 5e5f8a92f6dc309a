"""Tune recbole-unrank's unrank_* settings with RecBole's HyperTuning, the way RecBole's
run_hyper.py tunes a model (the same command as the installed ``recbole-unrank-hyper``).

    python run_unrank_hyper.py -m LightGCN -d ml-100k --config_files "config/ml-100k.yaml config/LightGCN.yaml" \\
        --params_file config/hyper/lightgcn.hyper --algo bayes --max_evals 20
    python run_unrank_hyper.py -m WMF -d ml-100k --params_file wmf --algo random --max_evals 30 \\
        --checkpoint saved/WMF.pth --unrank_tune_objective weighted --unrank_tune_weight 2
    python run_unrank_hyper.py -m LightGCN --params_file l2unrank --algo bayes --tool ray

See ``recbole_unrank/cli.py`` and ``recbole_unrank/tuning/``.
"""

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.cli import main_hyper as main

PROG = "run_unrank_hyper"

if __name__ == "__main__":
    main()
