"""Measures beyond rank (DESIGN.md sections 4 and 9): the request users' utility, fairness and
agreement with retrain. Pure functions on arrays, each tested on hand-made arrays:

* :func:`per_user_ndcg_recall`: NDCG@K / Recall@K of each user from the ranks of the user's
  positive items (the same definitions as RecBole's ``NDCG`` and ``Recall``), so the request
  users' own utility (``request_users``) and the active / inactive split (``fairness``) come
  from one test evaluation;
* :func:`retrain_agreement`: rank correlation of the forget pairs' ranks with retrain's, and
  the shares over- / under-unlearned (ranked more than 2x lower / higher than retrain does);
* :func:`align_ranks`: one model's pair ranks put in the order of another's pair keys.

The membership-inference audit is in :mod:`recbole_unrank.evaluation.audit`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "per_user_ndcg_recall",
    "group_mean",
    "active_users",
    "retrain_agreement",
    "align_ranks",
    "ACTIVE_SHARE",
]

#: Share of users (by train interactions) counted as active in ``fairness`` (CURE4Rec).
ACTIVE_SHARE = 0.2


# --------------------------------------------------------------------------- utility per user
def per_user_ndcg_recall(keys, ranks, n_items: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user NDCG@k and Recall@k from the ranks of each user's positive items.

    Args:
        keys: ``user * n_items + item`` of each (user, positive item) pair.
        ranks: the rank of each pair in its user's list (1 = top), history masked.
    Returns:
        ``(users, ndcg, recall)``, sorted by user id. ``DCG = sum_{r <= k} 1 / log2(r + 1)``,
        ``IDCG = sum_{j=1..min(|P|, k)} 1 / log2(j + 1)``, ``Recall = |{r <= k}| / |P|``.
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if keys.shape != ranks.shape:
        raise ValueError(f"keys and ranks differ in length ({keys.size} and {ranks.size})")
    if keys.size == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    users = keys // int(n_items)
    uniq, inv, n_pos = np.unique(users, return_inverse=True, return_counts=True)
    hit = ranks <= k
    gain = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
    dcg = np.bincount(inv, weights=gain, minlength=uniq.size)
    hits = np.bincount(inv, weights=hit.astype(np.float64), minlength=uniq.size)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = ideal[np.minimum(n_pos, k) - 1]
    return uniq, dcg / idcg, hits / n_pos


def group_mean(users: np.ndarray, values: np.ndarray, group) -> float | None:
    """Mean of ``values`` over the ``users`` that are in ``group`` (None when none are)."""
    mask = np.isin(users, np.asarray(list(group) if not isinstance(group, np.ndarray) else group))
    return float(values[mask].mean()) if mask.any() else None


def active_users(train_users: np.ndarray, share: float = ACTIVE_SHARE) -> np.ndarray:
    """The ``share`` most active users by number of train interactions (ties by id)."""
    uniq, counts = np.unique(np.asarray(train_users, dtype=np.int64), return_counts=True)
    n = max(1, int(np.ceil(share * uniq.size)))
    order = np.lexsort((uniq, -counts))
    return np.sort(uniq[order[:n]])


# --------------------------------------------------------------------------- retrain agreement
def retrain_agreement(ranks, retrain_ranks, factor: float = 2.0) -> dict:
    """Agreement of the forget pairs' ranks with retrain's (pair by pair).

    ``retrain_spearman``: Spearman correlation; ``over_unlearned``: share of pairs ranked more
    than ``factor`` times lower (a larger rank number) than retrain ranks them;
    ``under_unlearned``: more than ``factor`` times higher.
    """
    from scipy.stats import spearmanr

    a = np.asarray(ranks, dtype=np.float64).reshape(-1)
    b = np.asarray(retrain_ranks, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"ranks and retrain_ranks differ in length ({a.size} and {b.size})")
    if a.size == 0:
        return {"retrain_spearman": None, "over_unlearned": 0.0, "under_unlearned": 0.0}
    rho = None
    if a.size > 1 and np.ptp(a) > 0 and np.ptp(b) > 0:
        rho = float(spearmanr(a, b).statistic)
    elif np.array_equal(a, b):
        rho = 1.0
    return {
        "retrain_spearman": rho,
        "over_unlearned": float(np.mean(a > factor * b)),
        "under_unlearned": float(np.mean(a * factor < b)),
    }


def align_ranks(keys: np.ndarray, ranks: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``ranks`` (one per pair ``keys``) reordered to follow the pair keys ``want`` (the same
    pairs, another order)."""
    order = np.argsort(keys, kind="stable")
    return np.asarray(ranks)[order][np.searchsorted(np.asarray(keys)[order], want)]
