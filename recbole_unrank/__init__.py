"""recbole-unrank: fast recommendation unlearning (L2UnRank) as a RecBole post-training stage.

``recbole_unrank.run_unrank(model=..., dataset=..., config_file_list=..., config_dict=...,
checkpoint=...)`` runs the whole job the way ``recbole.quick_start.run_recbole`` trains and
returns results.json's record as a dict (``run_unrank_hyper(..., params_file=...)``: the tuner,
best.json's record); bad input raises :class:`UnrankError`.
"""

from recbole_unrank import compat  # noqa: F401  (must run before RecBole is imported)
from recbole_unrank.errors import UnrankError
from recbole_unrank.models import WMF, ShardEnsemble, get_model

__version__ = "0.1.0"

__all__ = ["run_unrank", "run_unrank_hyper", "load_unlearned", "UnrankError", "WMF", "ShardEnsemble", "get_model",
           "__version__"]


def __getattr__(name):  # the API pulls in RecBole's data and trainers: load it on first use
    if name in ("run_unrank", "run_unrank_hyper", "load_unlearned"):
        from recbole_unrank import api

        return getattr(api, name)
    raise AttributeError(f"module 'recbole_unrank' has no attribute {name!r}")
