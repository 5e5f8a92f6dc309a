"""The interactions of a split, indexed once per loaded data set and device.

A request touches a handful of users and items, but the whole train split is ``N`` rows
(16 million at 20M interactions). Every O(N) pass a request makes (a boolean mask gathered
over all rows, a sort, a host-to-device copy of the id columns) is paid again per request;
this index pays them once: the id columns on the device, and the rows grouped by user and by
item (CSR: a stable order and the start of each group), so that "the rows of these users" or
"of these items" costs the number of rows returned, not ``N``.

:func:`interaction_index` keeps one :class:`InteractionIndex` per (id tensors, device), held
as long as the id tensors live (a weak reference to the user column): a process that serves
requests from one loaded data set builds it on the first request (or ahead,
:func:`interaction_index` called once) and reuses it. An id column changed in place (its
version counter moved) or a different column gets a new index.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["InteractionIndex", "in_sorted", "interaction_index", "known_index", "rows_of"]


def _csr(ids: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(order, starts, counts): ``order[starts[e]:starts[e] + counts[e]]`` are the rows of
    entity ``e``, in increasing row order (stable sort)."""
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def rows_of(order: Tensor, starts: Tensor, counts: Tensor, entities: Tensor) -> Tensor:
    """Sorted rows of the ``entities`` (distinct ids) in a CSR grouping: cost the rows returned."""
    entities = entities[(entities >= 0) & (entities < counts.numel())]
    c = counts[entities]
    total = int(c.sum())
    if total == 0:
        return order[:0]
    first = torch.repeat_interleave(starts[entities], c)
    offset = torch.arange(total, device=order.device) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
    return torch.sort(order[first + offset]).values


class InteractionIndex:
    """``users``, ``items`` (LongTensor[N] on ``device``) with their rows grouped by user and by
    item. ``n_users`` / ``n_items``: one more than the largest id (at least the ``minimum``
    given to :func:`interaction_index`)."""

    def __init__(self, users: Tensor, items: Tensor, n_users: int = 0, n_items: int = 0):
        if users.dim() != 1 or users.shape != items.shape:
            raise ValueError(f"users and items must be 1-D of one length; got {tuple(users.shape)}, {tuple(items.shape)}")
        self.users, self.items = users, items
        self.n = users.numel()
        self.n_users = max(int(n_users), int(users.max()) + 1 if self.n else 0)
        self.n_items = max(int(n_items), int(items.max()) + 1 if self.n else 0)
        self.by_user = _csr(users, self.n_users)
        self.by_item = _csr(items, self.n_items)

    @property
    def user_count(self) -> Tensor:
        """Rows per user [n_users]."""
        return self.by_user[2]

    @property
    def item_count(self) -> Tensor:
        """Rows per item [n_items]."""
        return self.by_item[2]

    def rows_of_users(self, users: Tensor) -> Tensor:
        """Sorted rows of the distinct ``users``."""
        return rows_of(*self.by_user, users)

    def rows_of_items(self, items: Tensor) -> Tensor:
        """Sorted rows of the distinct ``items``."""
        return rows_of(*self.by_item, items)

    def present_users(self) -> Tensor:
        """The distinct users with at least one row (sorted): ``torch.unique(users)``."""
        return (self.by_user[2] > 0).nonzero().squeeze(1)


def in_sorted(values: Tensor, sorted_ref: Tensor) -> Tensor:
    """``torch.isin(values, sorted_ref)`` for a sorted ``sorted_ref``, by binary search (no sort)."""
    if sorted_ref.numel() == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    pos = torch.searchsorted(sorted_ref, values).clamp(max=sorted_ref.numel() - 1)
    return sorted_ref[pos] == values


_INDEX: "WeakIdKeyDictionary" = WeakIdKeyDictionary()  # tensors compare by value: keys by identity
#: an index's own (device) columns -> the index, so a callee handed the columns finds it
_BY_COLUMN: "WeakIdKeyDictionary" = WeakIdKeyDictionary()


def known_index(column: Tensor) -> InteractionIndex | None:
    """The index one of whose own columns (``users`` or ``items``) is ``column``, else None."""
    return _BY_COLUMN.get(column)


def interaction_index(users: Tensor, items: Tensor, device=None, n_users: int = 0,
                      n_items: int = 0) -> InteractionIndex:
    """The :class:`InteractionIndex` of the id columns ``users`` / ``items`` on ``device``
    (default: theirs), built on first use and kept while ``users`` lives."""
    device = torch.device(device) if device is not None else users.device
    key = (users._version, items._version, str(device), int(n_users), int(n_items))
    per = _INDEX.get(users)
    if per is not None and key in per and per[key][0]() is items:
        return per[key][1]
    with torch.no_grad():
        index = InteractionIndex(users.to(device), items.to(device), n_users, n_items)
    # one entry per device: a changed column (or another items column) replaces the stale index
    per = {k: v for k, v in (per or {}).items() if k[2] != str(device)}
    per[key] = (weakref.ref(items), index)
    _INDEX[users] = per
    _BY_COLUMN[index.users] = index
    _BY_COLUMN[index.items] = index
    return index
