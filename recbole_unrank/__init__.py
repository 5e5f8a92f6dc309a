"""recbole-unrank: fast recommendation unlearning (L2UnRank) as a RecBole post-training stage."""

from recbole_unrank import compat  # noqa: F401  (must run before RecBole is imported)
from recbole_unrank.models import WMF, ShardEnsemble, get_model
from recbole_unrank.checkpoints import load_unlearned

__version__ = "0.1.0"

__all__ = ["WMF", "ShardEnsemble", "get_model", "load_unlearned", "__version__"]
