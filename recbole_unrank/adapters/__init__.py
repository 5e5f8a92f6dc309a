"""Model adapters: specific ones for WMF / BPR, NeuMF and LightGCN, a generic one for the rest."""

from torch import nn

from recbole_unrank.adapters.base import AdapterError, ModelAdapter
from recbole_unrank.adapters.generic import GenericAdapter
from recbole_unrank.adapters.lightgcn import LightGCNAdapter
from recbole_unrank.adapters.lightgcn_graph import normalized_adjacency
from recbole_unrank.adapters.mf import DotProductAdapter, NeuMFAdapter

__all__ = [
    "AdapterError",
    "ModelAdapter",
    "GenericAdapter",
    "LightGCNAdapter",
    "DotProductAdapter",
    "NeuMFAdapter",
    "get_adapter",
    "normalized_adjacency",
]


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The fastest adapter that fits ``model`` (by class name, so subclasses keep theirs)."""
    name = type(model).__name__
    if name == "WMF":
        return DotProductAdapter(model, pairwise=False)
    if name == "BPR":
        return DotProductAdapter(model, pairwise=True)
    if name == "NeuMF":
        return NeuMFAdapter(model)
    if name == "LightGCN":
        return LightGCNAdapter(model)
    return GenericAdapter(model)
