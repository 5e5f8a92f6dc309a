"""Synthetic implicit-feedback datasets in RecBole's atomic-file format.

Power-law user activity and item popularity (Zipf-like ranks), plus ``n_clusters`` latent
tastes so that collaborative filtering has a signal to learn: a draw comes from the user's
own cluster with probability ``affinity`` (items weighted by popularity inside it), else
from the whole catalogue. Seeded; vectorised (5M interactions in seconds).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["generate_interactions", "write_atomic"]


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    w = (np.arange(1, n + 1, dtype=np.float64)) ** (-exponent)
    return rng.permutation(w) / w.sum()


def generate_interactions(
    n_users: int,
    n_items: int,
    n_inter: int,
    seed: int = 2020,
    n_clusters: int = 8,
    affinity: float = 0.8,
    user_exponent: float = 0.8,
    item_exponent: float = 0.9,
    min_user_inter: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(users, items, timestamps)`` (int64, int64, float64) of about ``n_inter``
    distinct pairs; every user has at least ``min_user_inter`` of them."""
    if min(n_users, n_items, n_inter) <= 0:
        raise ValueError("n_users, n_items and n_inter must all be positive")
    if n_inter > 0.5 * n_users * n_items:
        raise ValueError(
            f"{n_inter} interactions do not fit a sparse {n_users} x {n_items} matrix: "
            "ask for at most half of users x items"
        )
    rng = np.random.default_rng(seed)
    activity = _zipf_weights(n_users, user_exponent, rng)
    cap = max(min_user_inter, n_items // 2)
    scale = 1.0
    for _ in range(20):  # rescale so the clipped per-user counts add up to n_inter
        per_user = np.clip(np.round(activity * n_inter * scale), min_user_inter, cap)
        scale *= n_inter / max(per_user.sum(), 1)
    per_user = per_user.astype(np.int64)
    popularity = _zipf_weights(n_items, item_exponent, rng)
    item_cluster = rng.integers(0, n_clusters, n_items)
    user_cluster = rng.integers(0, n_clusters, n_users)

    # Items sorted by cluster: each cluster is one contiguous segment of a single CDF.
    order = np.argsort(item_cluster, kind="stable")
    seg_start = np.searchsorted(item_cluster[order], np.arange(n_clusters))
    seg_end = np.searchsorted(item_cluster[order], np.arange(n_clusters), side="right")
    cdf = np.cumsum(popularity[order])
    cdf_all = np.cumsum(popularity)
    before = np.concatenate([[0.0], cdf])

    users, items = [], []
    need = per_user.copy()
    for _ in range(8):  # oversample, dedupe, top up the users still short
        draw_users = np.repeat(np.arange(n_users), np.ceil(need * 1.3).astype(np.int64))
        if draw_users.size == 0:
            break
        c = user_cluster[draw_users]
        lo, hi = before[seg_start[c]], before[seg_end[c]]
        empty = hi <= lo
        u01 = rng.random(draw_users.size)
        own = np.searchsorted(cdf, lo + u01 * (hi - lo), side="right").clip(max=n_items - 1)
        glob = np.searchsorted(cdf_all, u01 * cdf_all[-1], side="right").clip(max=n_items - 1)
        take_own = (rng.random(draw_users.size) < affinity) & ~empty
        drawn = np.where(take_own, order[own], glob)
        users.append(draw_users)
        items.append(drawn)
        key = np.unique(np.concatenate(users) * n_items + np.concatenate(items))
        have = np.bincount(key // n_items, minlength=n_users)
        need = np.maximum(per_user - have, 0)
        if not need.any():
            break
    key = np.unique(np.concatenate(users) * n_items + np.concatenate(items))
    u, i = key // n_items, key % n_items
    # Keep at most per_user pairs per user (random ones), so sizes track the request.
    perm = rng.permutation(u.size)
    u, i = u[perm], i[perm]
    order_u = np.argsort(u, kind="stable")
    u, i = u[order_u], i[order_u]
    rank_in_user = np.arange(u.size) - np.searchsorted(u, u)
    keep = rank_in_user < per_user[u]
    u, i = u[keep], i[keep]
    ts = rng.random(u.size) * 1e6 + 8e8
    return u.astype(np.int64), i.astype(np.int64), ts


def write_atomic(folder: str, name: str, users, items, timestamps) -> str:
    """Write ``<folder>/<name>/<name>.inter`` (tokens ``u<id>``/``i<id>``); returns the path.
    Written to a temporary name and renamed, so a crash never leaves half a file."""
    path = os.path.join(folder, name, f"{name}.inter")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from recbole_unrank.atomic import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("user_id:token\titem_id:token\ttimestamp:float\n")
            for chunk in range(0, len(users), 500_000):
                sl = slice(chunk, chunk + 500_000)
                f.writelines(
                    f"u{u}\ti{i}\t{t:.0f}\n"
                    for u, i, t in zip(users[sl].tolist(), items[sl].tolist(), timestamps[sl].tolist())
                )

    return atomic_write(path, write)
