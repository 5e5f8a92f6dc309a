"""RecBole models that keep training interactions outside their parameters.

Such a model builds, in ``__init__``, a structure from the train split that its scores use:
a normalised graph (NGCF, SGL, NCL, ...), a user-history matrix (DMF, FISM, MultiVAE, ...) or
a similarity matrix (ItemKNN, EASE, ...). An unlearning method that changes a copy of the
original's parameters leaves that structure holding the forgotten pairs. LightGCN is not
listed: its adapter replaces the graph with the retained one (``LightGCNAdapter.set_graph``).
"""

from __future__ import annotations

__all__ = ["TRAIN_DATA_MODELS", "keeps_train_data"]

_GRAPH = "training graph"
_HISTORY = "user-item history matrix"
_SIMILARITY = "similarity / item-item matrix built from the training data"

TRAIN_DATA_MODELS: dict[str, str] = {
    **dict.fromkeys(["NGCF", "SGL", "NCL", "GCMC", "SpectralCF", "DGCF", "NNCF"], _GRAPH),
    **dict.fromkeys(
        ["DMF", "FISM", "NAIS", "SimpleX", "ENMF", "MultiVAE", "MultiDAE", "RecVAE", "MacridVAE",
         "RaCT", "CDAE", "DiffRec", "LDiffRec"],
        _HISTORY,
    ),
    **dict.fromkeys(["ItemKNN", "AsymKNN", "EASE", "SLIMElastic", "ADMMSLIM", "NCEPLRec"], _SIMILARITY),
}


def keeps_train_data(model_name: str) -> str | None:
    """What training-data structure ``model_name`` keeps (None: only its parameters)."""
    return TRAIN_DATA_MODELS.get(model_name)
