"""Rank probes for a handful of users: where their forgotten items rank, and how their
validation items fare, from a [U, n_items] score matrix. Used to calibrate a step against a
viewing threshold under a utility guard without running a full evaluation."""

from __future__ import annotations

import torch
from torch import Tensor

from recbole_unrank.influence.index import in_sorted

__all__ = ["RankProbe"]


class RankProbe:
    """Per-user measures over ``U`` users (rows of a score matrix).

    Args:
        n_rows: U.
        history_rows / history_items: retained train pairs of these users (masked to -inf).
        forget_rows / forget_items: the request's pairs.
        valid_rows / valid_items: validation pairs of these users (for the utility guard).
    """

    def __init__(
        self,
        n_rows: int,
        history_rows: Tensor,
        history_items: Tensor,
        forget_rows: Tensor,
        forget_items: Tensor,
        valid_rows: Tensor,
        valid_items: Tensor,
    ):
        self.n_rows = n_rows
        self.h_rows, self.h_items = history_rows, history_items
        self.f_rows, self.f_items = forget_rows, forget_items
        self.v_rows, self.v_items = valid_rows, valid_items
        self.f_count = torch.bincount(forget_rows, minlength=n_rows).clamp(min=1)
        self.v_count = torch.bincount(valid_rows, minlength=n_rows)

    def mask(self, scores: Tensor) -> Tensor:
        """A masked copy of ``scores`` (padding item and retained history to -inf)."""
        return self._masked(scores)

    def mask_(self, scores: Tensor) -> Tensor:
        """:meth:`mask` in place, for a score matrix the caller owns (no [U, n_items] copy)."""
        scores[:, 0] = -torch.inf  # RecBole's padding item
        scores[self.h_rows, self.h_items] = -torch.inf
        return scores

    def _masked(self, scores: Tensor) -> Tensor:
        return self.mask_(scores.clone())

    def forget_ranks(self, scores: Tensor, masked: bool = False) -> Tensor:
        """Rank of each forget pair: 1 + #{j not in retained history: s_uj > s_ui}. [T]
        ``masked``: ``scores`` already went through :meth:`mask`."""
        s = scores if masked else self._masked(scores)
        mine = s[self.f_rows, self.f_items]
        return 1 + (s[self.f_rows] > mine[:, None]).sum(1)

    def forget_share_in_topk(self, scores: Tensor, k: int, masked: bool = False) -> Tensor:
        """Per user: share of its forget pairs ranked within the top ``k``. [U]

        ``rank <= k`` exactly when the pair's score reaches its row's k-th largest score (ties
        favour the pair, as in :meth:`forget_ranks`): one top-k per row instead of comparing
        every forget pair with every item."""
        s = scores if masked else self._masked(scores)
        kth = s.topk(min(k, s.shape[1]), dim=1).values[:, -1]  # [U]
        hit = (s[self.f_rows, self.f_items] >= kth[self.f_rows]).to(scores.dtype)
        return torch.zeros(self.n_rows, dtype=scores.dtype, device=scores.device).index_add_(
            0, self.f_rows, hit
        ) / self.f_count

    def valid_ndcg(self, scores: Tensor, k: int = 10, masked: bool = False) -> Tensor:
        """Per user NDCG@k of its validation items, retained history masked (0 without any). [U]"""
        s = scores if masked else self._masked(scores)
        top = s.topk(min(k, s.shape[1]), dim=1).indices  # [U, k]
        # a top item is relevant when (row, item) is a validation pair: looked up among the
        # sorted pair keys (no [U, n_items] relevance mask per call)
        n = s.shape[1]
        if getattr(self, "_v_keys_n", None) != n:
            self._v_keys = torch.sort(self.v_rows * n + self.v_items).values
            self._v_keys_n = n
        rows = torch.arange(top.shape[0], device=top.device)[:, None]
        hits = in_sorted(rows * n + top, self._v_keys).to(scores.dtype)
        disc = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, device=s.device, dtype=scores.dtype))
        dcg = (hits * disc).sum(1)
        ideal_len = self.v_count.clamp(max=top.shape[1])
        idcg = torch.cumsum(disc, 0)[(ideal_len - 1).clamp(min=0)]
        return torch.where(self.v_count > 0, dcg / idcg, torch.zeros_like(dcg))
