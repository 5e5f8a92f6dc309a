"""Model lookup: this package's models first (WMF, and ShardEnsemble, the saved form of a
SISA / RecEraser ensemble), then RecBole's. Importing this module
also gives RecBole's NeuMF an all-item scorer (``neumf_scoring``).

Our models are also made visible to RecBole's own ``recbole.utils.get_model`` (which
``Config(model="WMF")`` and ``recbole.quick_start.load_data_and_model`` call) by aliasing
each module under ``recbole.model.general_recommender``: RecBole finds a model through
``importlib.util.find_spec``, which answers from ``sys.modules``.
"""

from __future__ import annotations

import importlib
import sys

from recbole.utils import get_model as _recbole_get_model

from recbole_unrank.models import wmf  # noqa: F401 (registers WMF where RecBole looks)
from recbole_unrank.models.ensemble import ShardEnsemble
from recbole_unrank.models.neumf_scoring import install_full_sort_predict
from recbole_unrank.models.wmf import WMF

__all__ = ["WMF", "ShardEnsemble", "get_model", "OUR_MODELS", "UnknownModelError"]

OUR_MODELS = {"WMF": WMF, "ShardEnsemble": ShardEnsemble}


class UnknownModelError(ValueError):
    """A model name that neither this package nor RecBole knows."""


def _register_with_recbole() -> None:
    import recbole.model.general_recommender as general

    for name, cls in OUR_MODELS.items():
        alias = f"recbole.model.general_recommender.{name.lower()}"
        sys.modules.setdefault(alias, importlib.import_module(cls.__module__))
        setattr(general, name, cls)


def get_model(name: str):
    """Return the model class called ``name``: ours first, then RecBole's."""
    if name in OUR_MODELS:
        return OUR_MODELS[name]
    try:
        return _recbole_get_model(name)
    except (ValueError, ImportError, AttributeError, ModuleNotFoundError) as exc:
        raise UnknownModelError(
            f"unknown model '{name}': use WMF or a RecBole general recommender "
            "(e.g. BPR, NeuMF, LightGCN)"
        ) from exc


_register_with_recbole()
install_full_sort_predict()
