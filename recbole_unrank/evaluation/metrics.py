"""Unranking metrics over the pairs of a forget request ``D_t``, and their RecBole plumbing.

Three layers:

1. Pure functions (:func:`pair_ranks` on torch, the rest on numpy): the rank of each forgotten
   pair and the measures of DESIGN.md section 4 (``forget_hit@K``, ``mean_rank``, ``RDR``,
   ``rank_decline_ratio``, ``URR``).
2. RecBole metric classes registered into RecBole's evaluator registry *without forking it*
   (:func:`register_metrics`, run at import): ``forget_hit`` (top-k), ``mean_rank``, ``rdr``,
   ``urr``, ``rank_decline_ratio``, ``forget_ndcg`` and ``forget_recall``. They can be named in a
   config's ``metrics`` list once this module is imported. Their data need ``rec.pair_rank`` is
   filled by :class:`UnrankCollector` (RecBole's own ``Collector`` does not know it).
3. :func:`evaluate_loader`: full-sort evaluation of a model over a ``FullSortEvalDataLoader``
   with the collector above and RecBole's ``Evaluator``.

Rank of a pair ``(u, i)``: ``r = 1 + #{j : s(u, j) > s(u, i)}`` over the score row *after*
masking (strictly greater: ties favour the pair; masked items are ``-inf`` and never count).
For forget pairs the loader must mask only the *retained* history (see DESIGN.md and
RECBOLE_NOTES.md: ``Sampler(["retain", "forget"], ...)`` in phase ``"forget"``).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import register as _register
from recbole.evaluator.base_metric import AbstractMetric
from recbole.evaluator.collector import Collector
from recbole.evaluator.evaluator import Evaluator
from recbole.evaluator.metrics import NDCG, Recall
from recbole.utils import EvaluatorType

from recbole_unrank import compat  # noqa: F401  (must run before RecBole is imported)
from recbole_unrank.device import model_device

__all__ = [
    "pair_ranks",
    "forget_hit",
    "mean_rank",
    "rank_decrease",
    "rank_decline_ratio",
    "urr",
    "ForgetHit",
    "MeanRank",
    "RDR",
    "URR",
    "RankDeclineRatio",
    "ForgetNDCG",
    "ForgetRecall",
    "UNRANK_METRICS",
    "REFERENCE_METRICS",
    "PAIR_RANK",
    "PAIR_KEY",
    "REF_RANK",
    "register_metrics",
    "UnrankCollector",
    "evaluate_loader",
]

#: Data-struct keys added by :class:`UnrankCollector`.
PAIR_RANK = "rec.pair_rank"
PAIR_KEY = "rec.pair_key"
REF_RANK = "rec.ref_rank"

# Upper bound on the elements of one [pairs x items] comparison block in pair_ranks.
_PAIR_BLOCK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------
# 1. Pure functions
# --------------------------------------------------------------------------------------------


def pair_ranks(
    scores: torch.Tensor, pos_row: torch.Tensor, pos_col: torch.Tensor, ties: str = "for_pair"
) -> torch.Tensor:
    """Rank of each pair ``(pos_row[p], pos_col[p])`` in its row of ``scores``.

    ``ties="for_pair"`` (forget pairs): ``r_p = 1 + #{ j : s_j > s_p }``, so a tie puts the
    pair above the items it ties with (a forgotten item tied with the top counts as still
    shown). ``ties="against_pair"`` (test pairs, for utility): ``r_p = 1 + #{ j != p : s_j >=
    s_p }``, so a tie puts it below them. Either way ties never favour the method judged: a
    model that scores every item alike (e.g. a saturated sigmoid) is neither credited with
    forgetting nor with utility. Masked entries (history, padding item 0) are ``-inf`` in
    ``scores`` and never count. The result is an int64 tensor of shape ``[P]`` on the device
    of ``scores`` (the pair blocks are bounded to about 16M compared elements).

    Args:
        scores: ``[B, n_items]`` score matrix, already masked.
        pos_row: ``[P]`` row index (user position inside the batch) of each pair.
        pos_col: ``[P]`` column index (item id) of each pair.
        ties: ``"for_pair"`` or ``"against_pair"`` (see above).
    """
    if ties not in ("for_pair", "against_pair"):
        raise ValueError(f"ties must be 'for_pair' or 'against_pair', got {ties!r}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [B, n_items], got shape {tuple(scores.shape)}")
    pos_row = torch.as_tensor(pos_row, dtype=torch.long, device=scores.device).reshape(-1)
    pos_col = torch.as_tensor(pos_col, dtype=torch.long, device=scores.device).reshape(-1)
    if pos_row.shape != pos_col.shape:
        raise ValueError("pos_row and pos_col must have the same length")
    n_pairs = pos_row.numel()
    out = torch.empty(n_pairs, dtype=torch.int64, device=scores.device)
    if n_pairs == 0:
        return out
    block = max(1, _PAIR_BLOCK_ELEMS // max(1, scores.shape[1]))
    for start in range(0, n_pairs, block):
        rows = pos_row[start : start + block]
        cols = pos_col[start : start + block]
        row_scores = scores[rows]  # [b, n_items]
        own = row_scores.gather(1, cols.unsqueeze(1))  # [b, 1]
        if ties == "for_pair":
            out[start : start + block] = (row_scores > own).sum(dim=1, dtype=torch.int64) + 1
        else:  # the pair itself is among the >= (its score equals itself): no + 1
            out[start : start + block] = (row_scores >= own).sum(dim=1, dtype=torch.int64)
    return out


def _as_1d(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _paired(after: Any, before: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _as_1d(after)
    b = _as_1d(before)
    if a.shape != b.shape:
        raise ValueError(
            f"after and before must be aligned pair by pair, got lengths {a.size} and {b.size}"
        )
    return a, b


def forget_hit(ranks: Any, k: int) -> float:
    """Forget Hit@K: share of pairs still inside the top K (lower is better).

    ``forget_hit@K = |{p : r_p <= K}| / |D_t|``; ``0.0`` for no pairs.
    """
    r = _as_1d(ranks)
    if r.size == 0:
        return 0.0
    return float(np.mean(r <= k))


def mean_rank(ranks: Any) -> float:
    """Mean rank of the pairs, ``mean_p r_p`` (bigger means better forgotten); ``0.0`` for none."""
    r = _as_1d(ranks)
    if r.size == 0:
        return 0.0
    return float(np.mean(r))


def rank_decrease(after: Any, before: Any) -> float:
    """RDR (rank decrease): ``mean_p (r_after_p - r_before_p)``; ``0.0`` for no pairs.

    Positive values mean the pairs moved down the lists (were forgotten).
    """
    a, b = _paired(after, before)
    if a.size == 0:
        return 0.0
    return float(np.mean(a - b))


def rank_decline_ratio(after: Any, before: Any) -> float:
    """Share of pairs whose rank got worse: ``|{p : r_after_p - r_before_p > 0}| / |D_t|``.

    ``0.0`` for no pairs.
    """
    a, b = _paired(after, before)
    if a.size == 0:
        return 0.0
    return float(np.mean((a - b) > 0))


def urr(after: Any, before: Any) -> float:
    """URR (unranking rate) with an IQR outlier filter **on the ratio**.

    ``ratio_p = (r_after_p - r_before_p) / (r_before_p + 1)``. With ``Q1, Q3`` the 25th / 75th
    percentiles of ``ratio`` (``numpy.percentile``, linear interpolation) and
    ``IQR = Q3 - Q1``, keep ``K = {p : Q1 - 1.5 IQR <= ratio_p <= Q3 + 1.5 IQR}`` and return

    ``URR = mean_{p in K}(ratio_p) * |{p in K : r_after_p - r_before_p > 0}| / |K|``.

    ``0.0`` for no pairs.
    """
    a, b = _paired(after, before)
    if a.size == 0:
        return 0.0
    delta = a - b
    ratio = delta / (b + 1.0)
    q1, q3 = np.percentile(ratio, [25, 75])
    iqr = q3 - q1
    keep = (ratio >= q1 - 1.5 * iqr) & (ratio <= q3 + 1.5 * iqr)
    if not keep.any():  # cannot happen with finite ratios; guards NaN input
        return 0.0
    return float(np.mean(ratio[keep]) * np.mean(delta[keep] > 0))


# --------------------------------------------------------------------------------------------
# 2. RecBole metric classes and registration
# --------------------------------------------------------------------------------------------


def _struct_array(dataobject, key: str) -> np.ndarray:
    return dataobject.get(key).numpy()


def _ref_ranks(dataobject, metric: str) -> np.ndarray:
    if REF_RANK not in dataobject:
        raise ValueError(
            f"Metric '{metric}' compares against a reference model: it needs the reference "
            f"model's ranks of the same pairs. Pass reference=(keys, ranks) to "
            f"UnrankCollector / evaluate_loader (e.g. the second value evaluate_loader "
            f"returned for the original model)."
        )
    return dataobject.get(REF_RANK).numpy()


class ForgetHit(AbstractMetric):
    """``forget_hit@K``: share of forget pairs ranked in the top K (smaller is better)."""

    metric_type = EvaluatorType.RANKING
    metric_need = [PAIR_RANK]
    smaller = True

    def __init__(self, config):
        super().__init__(config)
        self.topk = config["topk"]

    def calculate_metric(self, dataobject):
        ranks = _struct_array(dataobject, PAIR_RANK)
        return {
            f"forget_hit@{k}": round(forget_hit(ranks, k), self.decimal_place) for k in self.topk
        }


class MeanRank(AbstractMetric):
    """``mean_rank``: mean rank of the forget pairs. For unlearning a *larger* mean rank is
    better (the forgotten items sit further down), so it is registered as bigger-is-better."""

    metric_type = EvaluatorType.RANKING
    metric_need = [PAIR_RANK]
    smaller = False

    def calculate_metric(self, dataobject):
        ranks = _struct_array(dataobject, PAIR_RANK)
        return {"mean_rank": round(mean_rank(ranks), self.decimal_place)}


class _ReferenceMetric(AbstractMetric):
    metric_type = EvaluatorType.RANKING
    metric_need = [PAIR_RANK, REF_RANK]
    smaller = False
    name = ""

    @staticmethod
    def fn(after, before) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def calculate_metric(self, dataobject):
        after = _struct_array(dataobject, PAIR_RANK)
        before = _ref_ranks(dataobject, self.name)
        return {self.name: round(type(self).fn(after, before), self.decimal_place)}


class RDR(_ReferenceMetric):
    """``rdr``: mean rank decrease against the reference model (bigger is better)."""

    name = "rdr"
    fn = staticmethod(rank_decrease)


class URR(_ReferenceMetric):
    """``urr``: unranking rate against the reference model, IQR-filtered (bigger is better)."""

    name = "urr"
    fn = staticmethod(urr)


class RankDeclineRatio(_ReferenceMetric):
    """``rank_decline_ratio``: share of pairs ranked lower than the reference (bigger: better)."""

    name = "rank_decline_ratio"
    fn = staticmethod(rank_decline_ratio)


class ForgetNDCG(NDCG):
    """RecBole's NDCG computed on the forget loader, reported as ``forget_ndcg@K``."""

    def calculate_metric(self, dataobject):
        pos_index, pos_len = self.used_info(dataobject)
        return self.topk_result("forget_ndcg", self.metric_info(pos_index, pos_len))


class ForgetRecall(Recall):
    """RecBole's Recall computed on the forget loader, reported as ``forget_recall@K``."""

    def calculate_metric(self, dataobject):
        pos_index, pos_len = self.used_info(dataobject)
        return self.topk_result("forget_recall", self.metric_info(pos_index, pos_len))


#: Name (as used in a config's ``metrics`` list) -> class, for every metric of this module.
UNRANK_METRICS: dict[str, type] = {
    "forget_hit": ForgetHit,
    "mean_rank": MeanRank,
    "rdr": RDR,
    "urr": URR,
    "rank_decline_ratio": RankDeclineRatio,
    "forget_ndcg": ForgetNDCG,
    "forget_recall": ForgetRecall,
}

#: Metrics that need a reference model's ranks.
REFERENCE_METRICS = ("rdr", "urr", "rank_decline_ratio")


def register_metrics() -> None:
    """Add this module's metrics to RecBole's registry (idempotent).

    RecBole builds ``metrics_dict``, ``metric_information``, ``metric_types`` and
    ``smaller_metrics`` once in :mod:`recbole.evaluator.register`; ``Config``
    (``recbole.config.configurator``), ``Evaluator`` and the ``recbole.evaluator`` package
    import these very objects by name, so they are updated *in place* (never rebound), which
    reaches every module that imported them.
    """
    for name, cls in UNRANK_METRICS.items():
        _register.metrics_dict[name] = cls
        _register.metric_information[name] = cls.metric_need
        _register.metric_types[name] = cls.metric_type
        if cls.smaller and name not in _register.smaller_metrics:
            _register.smaller_metrics.append(name)
        if not cls.smaller and name in _register.smaller_metrics:
            _register.smaller_metrics.remove(name)


register_metrics()


# --------------------------------------------------------------------------------------------
# Collector
# --------------------------------------------------------------------------------------------


class UnrankCollector(Collector):
    """RecBole ``Collector`` that also collects the rank of every (user, positive item) pair.

    When the register needs ``rec.pair_rank`` (or ``collect_pair_ranks=True``), each
    :meth:`eval_batch_collect` appends the pairs' ranks (:func:`pair_ranks`) and their keys
    ``user_id * n_items + item_id``. :meth:`get_data_struct` then exposes

    - ``rec.pair_rank``: 1-D int64 tensor of ranks;
    - ``rec.pair_key``: 1-D int64 tensor of keys, aligned with the ranks;
    - ``rec.ref_rank``: when ``reference=(keys, ranks)`` was given, the reference ranks of the
      same pairs, aligned with ``rec.pair_key`` (a pair missing from the reference is an error).

    Like RecBole's, the per-evaluation entries are cleared at :meth:`get_data_struct`.

    Args:
        config: RecBole ``Config`` or any mapping with the keys RecBole's ``Collector`` reads
            (``metrics``, ``topk``, ``device``, ``eval_args``; ``USER_ID_FIELD`` for us).
        reference: optional ``(keys, ranks)`` of a reference model over the same pairs.
        collect_pair_ranks: force (True) or forbid (False) collecting pair ranks; ``None``
            collects them when a configured metric needs them.
        ties: how pair ranks count items of equal score (:func:`pair_ranks`).
    """

    _PER_EVAL_KEYS = (PAIR_RANK, PAIR_KEY)

    def __init__(self, config, reference=None, collect_pair_ranks: bool | None = None,
                 ties: str = "for_pair"):
        super().__init__(config)
        if collect_pair_ranks is None:
            collect_pair_ranks = bool(self.register.need(PAIR_RANK))
        self.collect_pair_ranks = collect_pair_ranks
        self.ties = ties
        self.uid_field = config["USER_ID_FIELD"]
        self.reference = None
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, reference) -> None:
        """Set (or clear, with ``None``) the reference ``(keys, ranks)``."""
        if reference is None:
            self.reference = None
            return
        if isinstance(reference, dict):
            keys, ranks = reference["keys"], reference["ranks"]
        else:
            keys, ranks = reference
        keys = np.asarray(keys.cpu() if isinstance(keys, torch.Tensor) else keys).reshape(-1)
        ranks = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks).reshape(-1)
        if keys.shape != ranks.shape:
            raise ValueError(
                f"reference keys and ranks differ in length ({keys.size} vs {ranks.size})"
            )
        order = np.argsort(keys, kind="stable")
        keys, ranks = keys[order].astype(np.int64), ranks[order].astype(np.int64)
        if keys.size > 1 and np.any(keys[1:] == keys[:-1]):
            raise ValueError("reference keys must be unique (one rank per (user, item) pair)")
        self.reference = (keys, ranks)

    def eval_batch_collect(
        self,
        scores_tensor: torch.Tensor,
        interaction,
        positive_u: torch.Tensor,
        positive_i: torch.Tensor,
    ):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if not self.collect_pair_ranks:
            return
        device = scores_tensor.device
        pos_u = torch.as_tensor(positive_u, dtype=torch.long).to(device)
        pos_i = torch.as_tensor(positive_i, dtype=torch.long).to(device)
        ranks = pair_ranks(scores_tensor, pos_u, pos_i, self.ties)
        users = interaction[self.uid_field].to(device).long()[pos_u]
        keys = users * scores_tensor.shape[1] + pos_i
        self.data_struct.update_tensor(PAIR_RANK, ranks)
        self.data_struct.update_tensor(PAIR_KEY, keys)

    def _aligned_reference(self, keys: torch.Tensor) -> torch.Tensor:
        ref_keys, ref_ranks = self.reference
        k = keys.numpy().astype(np.int64)
        if ref_keys.size == 0:
            pos_c = np.zeros(k.shape, dtype=np.int64)
            found = np.zeros(k.shape, dtype=bool)
        else:
            pos = np.searchsorted(ref_keys, k)
            pos_c = np.minimum(pos, ref_keys.size - 1)
            found = ref_keys[pos_c] == k
        if not found.all():
            missing = int((~found).sum())
            raise ValueError(
                f"The reference ranks miss {missing} of the {k.size} evaluated (user, item) "
                f"pairs (e.g. key {int(k[~found][0])}): the reference must be computed on the "
                f"same forget pairs (same dataset ids, same loader)."
            )
        return torch.from_numpy(ref_ranks[pos_c].copy())

    def get_data_struct(self):
        struct = super().get_data_struct()
        for key in self._PER_EVAL_KEYS:
            if key in self.data_struct:
                del self.data_struct[key]
        if self.collect_pair_ranks and PAIR_RANK not in struct:
            # No batch at all: expose empty tensors so the metrics see zero pairs.
            struct.set(PAIR_RANK, torch.empty(0, dtype=torch.int64))
            struct.set(PAIR_KEY, torch.empty(0, dtype=torch.int64))
        if self.reference is not None and PAIR_KEY in struct:
            struct.set(REF_RANK, self._aligned_reference(struct.get(PAIR_KEY)))
        return struct


# --------------------------------------------------------------------------------------------
# 3. Evaluation loop
# --------------------------------------------------------------------------------------------


def _loader_device(loader) -> torch.device | None:
    try:
        return loader.config["device"]
    except (AttributeError, KeyError, TypeError):
        return None


def predict_all_items(model, interaction, item_tensor, n_items: int, chunk: int):
    """Score every item for each user of ``interaction`` with ``model.predict`` (NeuMF & co)."""
    n_users = len(interaction)
    new_inter = interaction.repeat_interleave(n_items)
    new_inter.update(item_tensor.repeat(n_users))
    total = len(new_inter)
    if total <= chunk:
        return model.predict(new_inter)
    parts = []
    for start in range(0, total, chunk):
        piece = Interaction(
            {k: v[start : start + chunk] for k, v in new_inter.interaction.items()}
        )
        res = model.predict(piece)
        parts.append(res.reshape(-1))
    return torch.cat(parts, dim=0)


def _eval_config(loader, metrics: list[str], topk: list[int], device) -> dict:
    cfg = loader.config

    def get(key, default):
        try:
            value = cfg[key]
        except (KeyError, TypeError):
            return default
        return default if value is None else value

    return {
        "metrics": list(metrics),
        "topk": list(topk),
        "metric_decimal_place": get("metric_decimal_place", 4),
        "device": device,
        "eval_args": {"mode": "full"},
        "USER_ID_FIELD": get("USER_ID_FIELD", loader._dataset.uid_field),
        "ITEM_ID_FIELD": get("ITEM_ID_FIELD", loader._dataset.iid_field),
        "LABEL_FIELD": get("LABEL_FIELD", "label"),
        "eval_batch_size": get("eval_batch_size", 4096),
    }


@torch.no_grad()
def evaluate_loader(
    model: torch.nn.Module,
    loader,
    metrics: Sequence[str],
    topk: Iterable[int],
    reference=None,
    device=None,
    ties: str = "for_pair",
) -> tuple[dict[str, float], dict]:
    """Full-sort evaluation of ``model`` over a RecBole ``FullSortEvalDataLoader``.

    Each batch is scored like ``Trainer._full_sort_batch_eval``: ``full_sort_predict``, or, for
    models raising ``NotImplementedError``, ``predict`` over every item in chunks of
    ``eval_batch_size`` rows; then ``scores[:, 0] = -inf`` and ``scores[history] = -inf``. The
    scores go through :class:`UnrankCollector` and RecBole's ``Evaluator``.

    Args:
        model: a RecBole recommender (put in eval mode for the call, its mode restored after).
        loader: a ``FullSortEvalDataLoader`` (for forget pairs, built with a
            ``Sampler(["retain", "forget"], ...)`` in phase ``"forget"``).
        metrics: metric names (RecBole's ranking metrics and this module's), any case.
        topk: cut-offs K of the top-k metrics.
        reference: ``(keys, ranks)`` (or the dict this function returns) of a reference model
            on the same pairs; needed by ``rdr``, ``urr``, ``rank_decline_ratio``.
        device: where to score; defaults to the model's parameters' device.
        ties: how a pair's rank counts items of equal score (:func:`pair_ranks`): ``"for_pair"``
            for forget pairs (the default), ``"against_pair"`` for test pairs. RecBole's own
            metrics (NDCG, Recall, ...) are computed from its top-k and do not depend on it.

    Returns:
        ``(results, pairs)``: ``results`` maps lower-case keys (``ndcg@10``,
        ``forget_hit@10``, ``mean_rank``, ...) to python floats; ``pairs`` is
        ``{"keys": int64 array (user * n_items + item), "ranks": int64 array}`` for every
        (user, positive item) pair of the loader, usable as a later ``reference``.
    """
    metrics = [m.lower() for m in metrics]
    topk = [int(k) for k in topk]
    if not topk:
        raise ValueError("topk must name at least one cut-off")
    for m in metrics:
        if m not in _register.metric_types:
            raise ValueError(f"Unknown metric '{m}'")
        if _register.metric_types[m] != EvaluatorType.RANKING:
            raise ValueError(f"Metric '{m}' is not a ranking metric; full-sort evaluation only")
    if device is None:
        device = model_device(model, _loader_device(loader))
    device = torch.device(device)

    cfg = _eval_config(loader, metrics, topk, device)
    collector = UnrankCollector(cfg, reference=reference, collect_pair_ranks=True, ties=ties)
    evaluator = Evaluator(cfg)

    dataset = loader._dataset
    n_items = dataset.item_num
    item_tensor = None
    chunk = int(cfg["eval_batch_size"])

    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            interaction, history_index, positive_u, positive_i = batch
            interaction = interaction.to(device)
            try:
                scores = model.full_sort_predict(interaction)
            except NotImplementedError:
                if item_tensor is None:
                    item_tensor = dataset.get_item_feature().to(device)
                scores = predict_all_items(model, interaction, item_tensor, n_items, chunk)
            scores = scores.view(-1, n_items).clone()
            scores[:, 0] = -np.inf
            if history_index is not None:
                scores[history_index] = -np.inf
            collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
    finally:
        model.train(was_training)

    collector.model_collect(model)
    struct = collector.get_data_struct()
    raw = evaluator.evaluate(struct)
    results = {str(k).lower(): float(v) for k, v in raw.items()}
    pairs = {
        "keys": struct.get(PAIR_KEY).numpy().astype(np.int64),
        "ranks": struct.get(PAIR_RANK).numpy().astype(np.int64),
    }
    return results, pairs
