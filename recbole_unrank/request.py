"""Forget requests D_t: drawn from the train split, reproducible from a seed.

A request is a set of *rows of the train split's* ``inter_feat``. Everything downstream
(retained dataset, forget loader, scope) works from these row indices, so internal ids and
shapes stay those of the original model. Sources (DESIGN.md section 2):

* ``interaction``: ``user_ratio`` of the train users, ``inter_ratio`` of each one's train rows;
* ``user``: every train row of ``user_ratio`` of the users;
* ``item``: every train row of ``item_ratio`` of the items;
* ``file``: an atomic file of ``user_id`` / ``item_id`` tokens (the privacy-request path).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from recbole_unrank.errors import UnrankError

__all__ = [
    "ForgetRequest",
    "SOURCES",
    "USER_SELECTIONS",
    "sample_request",
    "read_request_file",
    "write_request_file",
    "split_train",
    "request_from_pairs",
]

SOURCES = ("interaction", "user", "item", "file")
#: How the users of an ``interaction`` / ``user`` request are chosen (CURE4Rec's selections).
USER_SELECTIONS = ("random", "core", "edge")
#: ``core`` / ``edge`` draw from this share of the users (the most / least active), or from
#: twice the number of users wanted when that is larger, so the seed still varies the request.
SELECTION_POOL = 0.2


@dataclass
class ForgetRequest:
    """The forget set D_t as rows of the train split.

    Attributes:
        index: sorted row indices into ``train_ds.inter_feat`` (int64, shape [T]).
        users, items: internal ids of those rows (shape [T]).
        source: how the request was made (one of :data:`SOURCES`).
        skipped: pairs of a file that are not in the train split (counted, not used).
    """

    index: np.ndarray
    users: np.ndarray
    items: np.ndarray
    source: str
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.index.size)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "pairs": len(self),
            "users": int(np.unique(self.users).size),
            "items": int(np.unique(self.items).size),
            "skipped": int(self.skipped),
        }


def _train_pairs(train_ds) -> tuple[np.ndarray, np.ndarray]:
    feat = train_ds.inter_feat
    return feat[train_ds.uid_field].numpy(), feat[train_ds.iid_field].numpy()


def _check_ratio(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UnrankError(f"{name}={value!r} is not a number: give a ratio in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise UnrankError(f"{name}={value} is outside (0, 1]: give a ratio such as 0.1")
    return value


def _finish(train_ds, index: np.ndarray, source: str, skipped: int = 0) -> ForgetRequest:
    index = np.unique(np.asarray(index, dtype=np.int64))
    if index.size == 0:
        raise UnrankError(
            f"the forget request ({source}) is empty: raise the ratios or give pairs of the train split"
        )
    users, items = _train_pairs(train_ds)
    return ForgetRequest(index, users[index], items[index], source, skipped)


def sample_request(
    train_ds,
    source: str = "interaction",
    user_ratio: float = 0.1,
    inter_ratio: float = 0.2,
    item_ratio: float = 0.05,
    seed: int = 2020,
    user_selection: str = "random",
) -> ForgetRequest:
    """Draw a request from the train split. Same seed, same request.

    ``user_selection`` (interaction and user tasks): ``random`` users, or CURE4Rec's ``core``
    (drawn from the most active users) and ``edge`` (from the least active): the pool is the
    :data:`SELECTION_POOL` share of the users ranked by train interactions (ties by id), or
    twice the number of users wanted when that is larger, and the seed draws from the pool.
    """
    if source not in SOURCES or source == "file":
        raise UnrankError(
            f"unknown request source '{source}': use interaction, user, item, or give unrank_request_file"
        )
    if user_selection not in USER_SELECTIONS:
        raise UnrankError(
            f"unrank_request_users={user_selection!r} is not known: use random, core or edge"
        )
    rng = np.random.default_rng(seed)
    users, items = _train_pairs(train_ds)
    if source in ("interaction", "user"):
        user_ratio = _check_ratio("unrank_user_ratio", user_ratio)
        present, degree = np.unique(users, return_counts=True)
        n_pick = max(1, math.ceil(user_ratio * present.size))
        pool = present
        if user_selection != "random":
            size = min(present.size, max(2 * n_pick, math.ceil(SELECTION_POOL * present.size)))
            # Most active first for core, least active first for edge; ties broken by id.
            key = -degree if user_selection == "core" else degree
            pool = present[np.lexsort((present, key))[:size]]
        chosen = np.sort(rng.choice(pool, size=n_pick, replace=False))
        rows = np.flatnonzero(np.isin(users, chosen))
        if source == "user":
            return _finish(train_ds, rows, source)
        inter_ratio = _check_ratio("unrank_inter_ratio", inter_ratio)
        # Per chosen user: a random max(1, round(ratio * deg)) of its rows.
        rows = rows[np.argsort(users[rows], kind="stable")]
        u_sorted = users[rows]
        starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
        ends = np.r_[starts[1:], u_sorted.size]
        picked = []
        for s, e in zip(starts, ends):
            k = max(1, int(round(inter_ratio * (e - s))))
            picked.append(rng.choice(rows[s:e], size=k, replace=False))
        return _finish(train_ds, np.concatenate(picked), source)
    item_ratio = _check_ratio("unrank_item_ratio", item_ratio)
    present = np.unique(items)
    n_pick = max(1, math.ceil(item_ratio * present.size))
    chosen = rng.choice(present, size=n_pick, replace=False)
    return _finish(train_ds, np.flatnonzero(np.isin(items, chosen)), source)


def _read_token_file(path: str, uid_field: str, iid_field: str) -> tuple[list[str], list[str]]:
    if not os.path.isfile(path):
        raise UnrankError(f"request file '{path}' does not exist: give the path of a .inter file")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        names = [h.split(":")[0] for h in header]
        if uid_field not in names or iid_field not in names:
            raise UnrankError(
                f"request file '{path}' needs the columns '{uid_field}' and '{iid_field}' "
                f"(header like '{uid_field}:token\\t{iid_field}:token'), found {header}"
            )
        ucol, icol = names.index(uid_field), names.index(iid_field)
        u_tok, i_tok = [], []
        for n, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cells = line.split("\t")
            if len(cells) <= max(ucol, icol):
                raise UnrankError(f"request file '{path}' line {n} has too few columns: {line!r}")
            u_tok.append(cells[ucol])
            i_tok.append(cells[icol])
    return u_tok, i_tok


def _tokens_to_ids(dataset, field: str, tokens: list[str], path: str) -> np.ndarray:
    mapping = dataset.field2token_id[field]
    unknown = sorted({t for t in tokens if t not in mapping})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise UnrankError(
            f"request file '{path}' has {len(unknown)} unknown {field} token(s) ({shown}): "
            f"use tokens of dataset '{dataset.dataset_name}'"
        )
    return np.fromiter((mapping[t] for t in tokens), dtype=np.int64, count=len(tokens))


def request_from_pairs(train_ds, users: np.ndarray, items: np.ndarray, source: str) -> ForgetRequest:
    """The train rows holding the given internal-id pairs; pairs not in train are skipped."""
    tu, ti = _train_pairs(train_ds)
    n_items = int(train_ds.item_num)
    train_keys = tu.astype(np.int64) * n_items + ti
    want = np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))
    rows = np.flatnonzero(np.isin(train_keys, want))
    found = np.unique(train_keys[rows]).size
    return _finish(train_ds, rows, source, skipped=int(want.size - found))


def read_request_file(path: str, dataset, train_ds) -> ForgetRequest:
    """Read a request of dataset tokens; unknown tokens are an error, pairs not in train skipped."""
    u_tok, i_tok = _read_token_file(path, dataset.uid_field, dataset.iid_field)
    if not u_tok:
        raise UnrankError(f"request file '{path}' holds no pairs: add user/item token lines")
    users = _tokens_to_ids(dataset, dataset.uid_field, u_tok, path)
    items = _tokens_to_ids(dataset, dataset.iid_field, i_tok, path)
    return request_from_pairs(train_ds, users, items, "file")


def write_request_file(path: str, request: ForgetRequest, dataset) -> str:
    """Write the request as tokens (``file`` source format), via a temporary name."""
    uf, itf = dataset.uid_field, dataset.iid_field
    u_tok = dataset.id2token(uf, request.users)
    i_tok = dataset.id2token(itf, request.items)
    from recbole_unrank.checkpoints import atomic_text

    lines = [f"{uf}:token\t{itf}:token\n"] + [f"{u}\t{i}\n" for u, i in zip(u_tok, i_tok)]
    return atomic_text(path, "".join(lines))


def split_train(train_ds, request: ForgetRequest):
    """``(retain_ds, forget_ds)``: in-memory copies of the train split without / with D_t.
    Ids, ``user_num`` and ``item_num`` are those of ``train_ds``."""
    n = len(train_ds.inter_feat)
    keep = np.ones(n, dtype=bool)
    keep[request.index] = False
    retain = train_ds.copy(train_ds.inter_feat[torch.from_numpy(np.flatnonzero(keep))])
    forget = train_ds.copy(train_ds.inter_feat[torch.from_numpy(request.index)])
    return retain, forget
