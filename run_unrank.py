"""Unlearn with recbole-unrank, the way RecBole's run_recbole.py trains (the same command as
the installed ``recbole-unrank``; ``--help`` lists every option and ``unrank_*`` key).

    python run_unrank.py -m LightGCN --preset ml-100k --preset LightGCN --preset quickstart
    python run_unrank.py -m LightGCN -d ml-100k --config_files "config/ml-100k.yaml config/LightGCN.yaml"
    python run_unrank.py -m WMF -d ml-100k --unrank_method retrain --epochs 5
    python run_unrank.py --checkpoint saved/LightGCN.pth --unrank_request_file forget.inter
"""

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.cli import main_unrank as main

if __name__ == "__main__":
    main()
