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
from dataclasses import dataclass, field

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
    "take_rows",
    "request_from_pairs",
    "check_request_file",
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
        skipped_reasons: where the skipped pairs are (``valid split``, ``test split``,
            ``not in the data``) and how many, when known.
    """

    index: np.ndarray
    users: np.ndarray
    items: np.ndarray
    source: str
    skipped: int = 0
    skipped_reasons: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.size)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "pairs": len(self),
            "users": int(np.unique(self.users).size),
            "items": int(np.unique(self.items).size),
            "skipped": int(self.skipped),
            **({"skipped_reasons": dict(self.skipped_reasons)} if self.skipped_reasons else {}),
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


def _finish(train_ds, index: np.ndarray, source: str, skipped: int = 0, reasons: dict | None = None) -> ForgetRequest:
    index = np.unique(np.asarray(index, dtype=np.int64))
    if index.size == 0:
        raise UnrankError(
            f"the forget request ({source}) is empty: raise the ratios or give pairs of the train split"
        )
    users, items = _train_pairs(train_ds)
    return ForgetRequest(index, users[index], items[index], source, skipped, dict(reasons or {}))


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
    try:
        return _read_tokens(path, uid_field, iid_field)
    except UnicodeDecodeError as exc:
        raise UnrankError(f"request file '{path}' is not UTF-8 text (byte {exc.start}): "
                          "save it as UTF-8, tab-separated") from None
    except IsADirectoryError:
        raise UnrankError(f"request file '{path}' is a folder: give the path of a .inter file") from None
    except PermissionError:
        raise UnrankError(f"request file '{path}' cannot be read (permission denied): "
                          "make it readable or copy it") from None
    except OSError as exc:
        raise UnrankError(f"request file '{path}' cannot be read ({exc.strerror or type(exc).__name__}): "
                          "give the path of a readable .inter file") from None


def check_request_file(path: str, uid_field: str, iid_field: str) -> int:
    """Read the request file for its form only (exists, readable, UTF-8, the id columns, at
    least one pair): a bad file is refused before the dataset is loaded. Returns its pairs."""
    u_tok, _ = _read_token_file(path, uid_field, iid_field)
    if not u_tok:
        raise UnrankError(f"request file '{path}' holds no pairs: add user/item token lines")
    return len(u_tok)


def _read_tokens(path: str, uid_field: str, iid_field: str) -> tuple[list[str], list[str]]:
    if os.path.isdir(path):
        raise IsADirectoryError(path)
    if not os.path.exists(path):
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


def request_from_pairs(train_ds, users: np.ndarray, items: np.ndarray, source: str,
                       others: dict | None = None, where: str = "the request") -> ForgetRequest:
    """The train rows holding the given internal-id pairs; pairs not in train are skipped and
    counted (by where they are, when ``others`` maps names such as ``"valid split"`` to those
    datasets). A request of skipped pairs only is refused, saying why."""
    tu, ti = _train_pairs(train_ds)
    n_items = int(train_ds.item_num)
    train_keys = tu.astype(np.int64) * n_items + ti
    want = np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))
    rows = np.flatnonzero(np.isin(train_keys, want))
    missing = np.setdiff1d(want, np.unique(train_keys[rows]))
    reasons: dict[str, int] = {}
    if missing.size and others:
        left = missing
        for name, ds in others.items():
            du, di = _train_pairs(ds)
            hit = np.isin(left, du.astype(np.int64) * n_items + di)
            if hit.any():
                reasons[name] = int(hit.sum())
            left = left[~hit]
        if left.size:
            reasons["not in the data"] = int(left.size)
    if rows.size == 0 and want.size:
        why = ", ".join(f"{n} {k if k.startswith('not') else 'in the ' + k}" for k, n in reasons.items())
        raise UnrankError(
            f"{where}: all {want.size} pairs were skipped{f' ({why})' if why else ''}, none is in the train "
            "split: only train interactions can be forgotten"
        )
    return _finish(train_ds, rows, source, skipped=int(missing.size), reasons=reasons)


def read_request_file(path: str, dataset, train_ds, valid_ds=None, test_ds=None) -> ForgetRequest:
    """Read a request of dataset tokens; unknown tokens are an error, pairs not in train skipped
    (counted by split when ``valid_ds`` / ``test_ds`` are given)."""
    u_tok, i_tok = _read_token_file(path, dataset.uid_field, dataset.iid_field)
    if not u_tok:
        raise UnrankError(f"request file '{path}' holds no pairs: add user/item token lines")
    users = _tokens_to_ids(dataset, dataset.uid_field, u_tok, path)
    items = _tokens_to_ids(dataset, dataset.iid_field, i_tok, path)
    others = {k: v for k, v in (("valid split", valid_ds), ("test split", test_ds)) if v is not None}
    return request_from_pairs(train_ds, users, items, "file", others, where=f"request file '{path}'")


def write_request_file(path: str, request: ForgetRequest, dataset) -> str:
    """Write the request as tokens (``file`` source format), via a temporary name."""
    uf, itf = dataset.uid_field, dataset.iid_field
    u_tok = dataset.id2token(uf, request.users)
    i_tok = dataset.id2token(itf, request.items)
    from recbole_unrank.atomic import atomic_text

    lines = [f"{uf}:token\t{itf}:token\n"] + [f"{u}\t{i}\n" for u, i in zip(u_tok, i_tok)]
    return atomic_text(path, "".join(lines))


def take_rows(ds, rows):
    """``ds`` restricted to the rows ``rows`` of its ``inter_feat`` (indices or a bool mask,
    numpy or torch), ids and sizes unchanged: ``ds.copy(ds.inter_feat[rows])`` without RecBole
    1.2.1's ``Interaction.__getitem__``, which turns a tensor index into a Python list first
    (on ml-100k's train split 25 ms per call, most of a stream request's time on WMF). Same rows,
    same order, same dtypes, each column indexed on its own device."""
    from recbole.data.interaction import Interaction

    index = rows if torch.is_tensor(rows) else torch.as_tensor(np.asarray(rows))
    if index.dtype == torch.bool:
        index = index.nonzero().squeeze(1)
    index = index.reshape(-1).long()
    feat = ds.inter_feat
    return ds.copy(Interaction({k: v[index.to(v.device)] for k, v in feat.interaction.items()}))


def split_train(train_ds, request: ForgetRequest):
    """``(retain_ds, forget_ds)``: in-memory copies of the train split without / with D_t.
    Ids, ``user_num`` and ``item_num`` are those of ``train_ds``."""
    n = len(train_ds.inter_feat)
    keep = np.ones(n, dtype=bool)
    keep[request.index] = False
    retain = take_rows(train_ds, np.flatnonzero(keep))
    forget = take_rows(train_ds, request.index)
    return retain, forget
