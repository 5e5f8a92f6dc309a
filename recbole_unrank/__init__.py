"""recbole-unrank: fast recommendation unlearning (L2UnRank) as a RecBole post-training stage."""

from recbole_unrank import compat  # noqa: F401  (must run before RecBole is imported)
from recbole_unrank.models import WMF, get_model

__version__ = "0.1.0"

__all__ = ["WMF", "get_model", "__version__"]
