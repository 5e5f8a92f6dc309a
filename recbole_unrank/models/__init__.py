"""This package's models (WMF, and ShardEnsemble, the saved form of a SISA / RecEraser
ensemble) and the lookup by name, ours first, then RecBole's (:mod:`.registry`, a leaf that the
ensemble uses too, so no model module imports this package). Importing this module also gives
RecBole's NeuMF an all-item scorer (``neumf_scoring``).

Our models are also made visible to RecBole's own ``recbole.utils.get_model`` (which
``Config(model="WMF")`` and ``recbole.quick_start.load_data_and_model`` call) by aliasing
each module under ``recbole.model.general_recommender``: RecBole finds a model through
``importlib.util.find_spec``, which answers from ``sys.modules``.
"""

from __future__ import annotations

import importlib
import sys

from recbole_unrank.models import wmf  # noqa: F401 (registers WMF where RecBole looks)
from recbole_unrank.models.ensemble import ShardEnsemble
from recbole_unrank.models.neumf_scoring import install_full_sort_predict
from recbole_unrank.models.registry import OUR_MODELS, UnknownModelError, get_model
from recbole_unrank.models.wmf import WMF

__all__ = ["WMF", "ShardEnsemble", "get_model", "OUR_MODELS", "UnknownModelError"]

OUR_MODELS.update({"WMF": WMF, "ShardEnsemble": ShardEnsemble})  # the registry get_model reads


def _register_with_recbole() -> None:
    import recbole.model.general_recommender as general

    for name, cls in OUR_MODELS.items():
        alias = f"recbole.model.general_recommender.{name.lower()}"
        sys.modules.setdefault(alias, importlib.import_module(cls.__module__))
        setattr(general, name, cls)


_register_with_recbole()
install_full_sort_predict()
