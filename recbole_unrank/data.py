"""The data of a run: RecBole's dataset and splits, the loaders, the request.

RecBole's objects are built here and nowhere else (with :mod:`recbole_unrank.config`): the
random split exactly as ``run_recbole`` makes it, loaders whose history masks follow the
*retained* train set, the forget loader over the request's pairs, and the request itself
(read from a file or drawn from the train split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from recbole.data import create_dataset
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.utils import create_samplers, get_dataloader
from recbole.sampler import Sampler
from recbole.utils import init_seed

from recbole_unrank import compat  # noqa: F401
from recbole_unrank.errors import UnrankError
from recbole_unrank.request import ForgetRequest, read_request_file, sample_request, take_rows

__all__ = ["Data", "without_forgotten", "load_data", "make_train_loader", "make_loaders", "make_forget_loader",
           "make_request", "request_seed", "split_valid", "method_valid", "monitor_valid", "make_monitor_loader"]


@dataclass
class Data:
    """The dataset and its three splits (RecBole ``Dataset`` objects)."""

    dataset: Any
    train_ds: Any
    valid_ds: Any
    test_ds: Any
    # Starting from an unlearned checkpoint: train_ds is the full train split without the
    # pairs it already forgot (prior_rows, rows of full_train_ds); row_map[i] is the full
    # split's row of train_ds's row i.
    full_train_ds: Any = None
    prior_rows: np.ndarray | None = None
    row_map: np.ndarray | None = None
    # The validation split in two (split_valid): the part methods may read (step calibration,
    # utility guard) and the monitor part nothing that changes a model reads (the evaluator's
    # valid row, the stream budget, the tuner's floor). None: not split (the whole split).
    method_valid_ds: Any = None
    monitor_valid_ds: Any = None


def method_valid(data: Data):
    """The validation rows methods may read (the whole split where it was not divided)."""
    return data.valid_ds if data.method_valid_ds is None else data.method_valid_ds


def monitor_valid(data: Data):
    """The validation rows only monitors read (the whole split where it was not divided)."""
    return data.valid_ds if data.monitor_valid_ds is None else data.monitor_valid_ds


def split_valid(valid_ds, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``valid_ds`` for methods and for the monitor (sorted int64 arrays).

    Each user's validation rows are split on their own: in a seeded random order, the first
    ``floor(n_u * share + r_u)`` go to the monitor (``r_u`` uniform in [0, 1): stochastic
    rounding, so the monitor holds ``share`` of the rows in expectation and a user with two or
    more rows at share 0.5 keeps rows on both sides). ``numpy.random.default_rng(seed)``."""
    u = valid_ds.inter_feat[valid_ds.uid_field].numpy().astype(np.int64)
    rng = np.random.default_rng(int(seed))
    key = rng.random(u.size)
    counts = np.bincount(u, minlength=int(u.max()) + 1 if u.size else 0)
    bump = rng.random(counts.size)
    order = np.lexsort((key, u))  # by user, random within a user
    starts = np.cumsum(counts) - counts
    pos = np.empty(u.size, dtype=np.int64)
    pos[order] = np.arange(u.size) - starts[u[order]]
    take = np.floor(counts * float(share) + bump).astype(np.int64)
    monitor = pos < take[u]
    return np.flatnonzero(~monitor), np.flatnonzero(monitor)


def _monitor_settings(config) -> tuple[float, int]:
    share, seed = config["unrank_monitor_share"], config["unrank_monitor_seed"]
    from recbole_unrank.config import default_of, given_as

    share = default_of("unrank_monitor_share") if share is None else share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < float(share) < 1.0:
        raise UnrankError(f"{given_as(config, 'unrank_monitor_share', share)} must lie strictly between 0 and 1: "
                          "the validation split needs a part for methods and a monitor part (e.g. 0.5)")
    seed = config["seed"] if seed is None else seed
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise UnrankError(f"{given_as(config, 'unrank_monitor_seed', seed)} is not an integer: give e.g. 7, "
                          "or leave it unset (the run's seed)") from None
    return float(share), seed


def divide_valid(config, data: Data) -> Data:
    """``data`` with its validation split divided (:func:`split_valid`); refused, one line,
    when either part would be empty."""
    share, seed = _monitor_settings(config)
    method_rows, monitor_rows = split_valid(data.valid_ds, share, seed)
    if monitor_rows.size == 0 or method_rows.size == 0:
        from recbole_unrank.config import given_as

        part = "monitor" if monitor_rows.size == 0 else "method"
        raise UnrankError(f"the validation split's {part} part would be empty ({len(data.valid_ds.inter_feat)} "
                          f"validation rows, {given_as(config, 'unrank_monitor_share', share)}): use a dataset "
                          "with more validation rows or another unrank_monitor_share")
    v = data.valid_ds
    data.method_valid_ds = take_rows(v, method_rows)
    data.monitor_valid_ds = take_rows(v, monitor_rows)
    return data


def without_forgotten(data: Data, rows: np.ndarray) -> Data:
    """``data`` whose train split leaves out ``rows`` (pairs an unlearned model already forgot),
    ids and shapes unchanged."""
    keep = np.ones(len(data.train_ds.inter_feat), dtype=bool)
    keep[rows] = False
    row_map = np.flatnonzero(keep)
    reduced = take_rows(data.train_ds, row_map)
    return Data(data.dataset, reduced, data.valid_ds, data.test_ds, data.train_ds, rows, row_map,
                data.method_valid_ds, data.monitor_valid_ds)


def load_data(config) -> Data:
    # RecBole's random split shuffles with torch's global generator: seed it first, as
    # run_recbole does, so that the same seed gives the same splits.
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_ds, valid_ds, test_ds = dataset.build()
    return divide_valid(config, Data(dataset, train_ds, valid_ds, test_ds))


def make_train_loader(config, data: Data, train_ds):
    """A RecBole training loader over ``train_ds`` alone (no evaluation loaders built)."""
    built = [train_ds, data.valid_ds, data.test_ds]
    train_sampler, _, _ = create_samplers(config, data.dataset, built)
    return get_dataloader(config, "train")(config, train_ds, train_sampler, shuffle=config["shuffle"])


def make_loaders(config, data: Data, train_ds=None):
    """RecBole train / valid / test loaders whose history masks follow ``train_ds``
    (the retained train set for everything after the request)."""
    train_ds = data.train_ds if train_ds is None else train_ds
    built = [train_ds, data.valid_ds, data.test_ds]
    train_sampler, valid_sampler, test_sampler = create_samplers(config, data.dataset, built)
    train = get_dataloader(config, "train")(config, train_ds, train_sampler, shuffle=config["shuffle"])
    valid = get_dataloader(config, "valid")(config, data.valid_ds, valid_sampler, shuffle=False)
    test = get_dataloader(config, "test")(config, data.test_ds, test_sampler, shuffle=False)
    return train, valid, test


def make_monitor_loader(config, data: Data, train_ds=None):
    """RecBole's validation loader over the monitor part only (history masks as
    :func:`make_loaders`' validation loader: ``train_ds``)."""
    train_ds = data.train_ds if train_ds is None else train_ds
    built = [train_ds, data.valid_ds, data.test_ds]
    _, valid_sampler, _ = create_samplers(config, data.dataset, built)
    return get_dataloader(config, "valid")(config, monitor_valid(data), valid_sampler, shuffle=False)


def make_forget_loader(config, retain_ds, forget_ds) -> FullSortEvalDataLoader:
    """Full-sort loader over the forget pairs with only the *retained* history masked."""
    sampler = Sampler(["retain", "forget"], [retain_ds, forget_ds], distribution="uniform")
    return FullSortEvalDataLoader(config, forget_ds, sampler.set_phase("forget"), shuffle=False)


def make_request(config, data: Data) -> ForgetRequest:
    path = config["unrank_request_file"]
    if path:
        return read_request_file(path, data.dataset, data.train_ds, data.valid_ds, data.test_ds)
    return sample_request(
        data.train_ds,
        source=config["unrank_request"],
        user_ratio=config["unrank_user_ratio"],
        inter_ratio=config["unrank_inter_ratio"],
        item_ratio=config["unrank_item_ratio"],
        seed=request_seed(config),
        user_selection=config["unrank_request_users"],
    )


def request_seed(config) -> int:
    """The seed the request is drawn from: ``unrank_request_seed``, else the run's ``seed``."""
    value = config["unrank_request_seed"]
    value = config["seed"] if value is None else value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnrankError(f"unrank_request_seed={value!r} is not an integer: give e.g. 1001") from None
