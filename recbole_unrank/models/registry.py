"""Model lookup by name: this package's models first, then RecBole's.

A leaf of ``models/`` (imports none of its siblings), so that a model that builds others by
name (:class:`~recbole_unrank.models.ensemble.ShardEnsemble`) looks them up here without
importing the package that imports it. ``recbole_unrank.models`` fills :data:`OUR_MODELS`
once, at import, before any lookup can run.
"""

from __future__ import annotations

from recbole.utils import get_model as _recbole_get_model

__all__ = ["OUR_MODELS", "UnknownModelError", "get_model"]

#: This package's models by name (filled by ``recbole_unrank.models``).
OUR_MODELS: dict[str, type] = {}


class UnknownModelError(ValueError):
    """A model name that neither this package nor RecBole knows."""


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
