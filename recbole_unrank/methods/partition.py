"""Partition-based unlearning: SISA and RecEraser.

Both split the train data into ``K`` shards, train one sub-model per shard with the run's own
recipe, and serve the aggregate :class:`ShardEnsemble`:

    score(u, i) = sum_k a_{u,k} * score_k(u, i),   sum_k a_{u,k} = 1.

A request retrains only the shards that hold forgotten interactions, each on its retained
part, then rebuilds the aggregation. Training every shard at the start is the price these
methods add to the original's training: it is reported apart (``shard_train_s``); the
unlearning time is that of the request alone (``unlearn_s``).

* ``sisa`` (Bourtoule et al., S&P 2021): a seeded random partition of the users (a user's
  interactions stay together); ``a_{u,k} = 1/K`` (or, optionally, 1 for the user's own shard).
* ``receraser`` (Chen et al., WWW 2022): a balanced partition (users, or interactions) by
  k-means on the original model's embeddings, each shard holding at most ``ceil(n/K)``; and an
  attention aggregator ``a_{u,k} = softmax_k(w^T tanh(W e_{u,k} + b))`` over the sub-models'
  user representations ``e_{u,k}``, trained with BPR on the train data while the sub-models
  stay frozen.

One base class, :class:`PartitionMethod`, runs the pipeline; each method fills in two steps:
``partition`` (rows -> shard) and ``aggregate`` (sub-models -> per-user weights).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recbole_unrank.adapters import AdapterError, get_adapter
from recbole_unrank.device import model_device
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods.base import UnlearningMethod, UnlearnResult, UnlearnTask
from recbole_unrank.models.ensemble import ShardEnsemble
from recbole_unrank.progress import progress
from recbole_unrank.request import take_rows

__all__ = [
    "ShardEnsemble",
    "ShardAttention",
    "PartitionMethod",
    "SISA",
    "RecEraser",
    "random_user_partition",
    "balanced_kmeans",
]

logger = logging.getLogger("recbole_unrank")

AGG_BATCH = 4096  # interactions per aggregator step


# --------------------------------------------------------------------------- the aggregate
# ShardEnsemble (recbole_unrank.models.ensemble) is a RecBole model: one checkpoint per ensemble.


class ShardAttention(nn.Module):
    """RecEraser's aggregator: ``a_{u,k} = softmax_k(w^T tanh(W e_{u,k} + b))``.

    ``forward(e)``: ``e`` [B, K, d] user representations, one per sub-model -> weights [B, K].
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.proj = nn.Linear(dim, hidden)  # W, b
        self.query = nn.Linear(hidden, 1, bias=False)  # w
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        nn.init.xavier_uniform_(self.query.weight)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.query(torch.tanh(self.proj(e))).squeeze(-1), dim=-1)


# --------------------------------------------------------------------------- partitions
def random_user_partition(row_users: np.ndarray, n_users: int, k: int, seed: int) -> np.ndarray:
    """Shard of each row: the users present are shuffled with ``seed`` and cut into ``k``
    near-equal groups; a user's rows share its shard. Returns int64 [n_rows]."""
    present = np.unique(row_users)
    _check_shards(k, present.size, "users")
    perm = np.random.default_rng(seed).permutation(present)
    user_shard = np.full(n_users, -1, dtype=np.int64)
    for shard, members in enumerate(np.array_split(perm, k)):
        user_shard[members] = shard
    return user_shard[row_users]


def _check_shards(k: int, n: int, what: str) -> None:
    if k > n:
        raise UnrankError(
            f"unrank_shards={k} is more than the {n} {what} to partition: lower unrank_shards"
        )


def _greedy_balanced(dist: np.ndarray, cap: int) -> np.ndarray:
    """Assign each point to a centre, closest pairs first, no centre taking more than ``cap``
    points (RecEraser's balanced assignment). ``dist`` [n, k] -> int64 [n]."""
    n, k = dist.shape
    order = np.argsort(dist, axis=None, kind="stable").tolist()
    assign, sizes, left = [-1] * n, [0] * k, n
    for flat in order:
        p, c = divmod(flat, k)
        if assign[p] < 0 and sizes[c] < cap:
            assign[p] = c
            sizes[c] += 1
            left -= 1
            if left == 0:
                break
    out = np.asarray(assign, dtype=np.int64)
    # A centre can end up empty when n is small (e.g. n=9, k=4, cap=3 -> 3,3,3,0): give it
    # the point nearest to it among the largest shard's.
    counts = np.bincount(out, minlength=k)
    for c in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        members = np.flatnonzero(out == donor)
        p = members[np.argmin(dist[members, c])]
        out[p] = c
        counts[donor] -= 1
        counts[c] += 1
    return out


def balanced_kmeans(points: torch.Tensor, k: int, iters: int, seed: int) -> np.ndarray:
    """RecEraser's balanced partition of ``points`` [n, d] into ``k`` shards of at most
    ``ceil(n/k)`` points each: ``k`` random anchors; then, ``iters`` times (or until stable),
    assign greedily by ascending squared distance under the cap (:func:`_greedy_balanced`)
    and move each anchor to its shard's mean. Returns int64 [n]."""
    n = int(points.shape[0])
    _check_shards(k, n, "points")
    cap = math.ceil(n / k)
    x = points.detach().float()
    rng = np.random.default_rng(seed)
    centers = x[torch.as_tensor(rng.choice(n, size=k, replace=False), device=x.device)]
    assign = None
    for _ in range(max(1, int(iters))):
        dist = torch.cdist(x, centers).pow(2).cpu().numpy()
        new = _greedy_balanced(dist, cap)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        index = torch.as_tensor(assign, device=x.device)
        centers = torch.stack([x[index == c].mean(0) for c in range(k)])
    return assign


# --------------------------------------------------------------------------- helpers
def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise UnrankError(f"{name}={value!r} is not an integer") from None
    if value < minimum:
        raise UnrankError(f"{name}={value} is out of range: it must be >= {minimum}")
    return value


def _rows(ds) -> tuple[np.ndarray, np.ndarray]:
    feat = ds.inter_feat
    return feat[ds.uid_field].numpy().astype(np.int64), feat[ds.iid_field].numpy().astype(np.int64)


def _subset(train_ds, rows: np.ndarray):
    """The train rows ``rows`` as a dataset with the train split's ids and sizes."""
    return take_rows(train_ds, np.asarray(rows, dtype=np.int64))


# --------------------------------------------------------------------------- the pipeline
class PartitionMethod(UnlearningMethod):
    """Shards -> sub-models -> aggregate; a request retrains the touched shards and the
    aggregation. Subclasses implement :meth:`partition` and :meth:`aggregate`."""

    name = "partition"
    settings: dict[str, str] = {"shards": "unrank_shards"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.shards = _positive_int("unrank_shards", self.kwargs["shards"])

    # ---- the two steps a method fills in ---------------------------------------------------
    def partition(self, task: UnlearnTask) -> np.ndarray:
        """Shard of every row of ``task.train_ds.inter_feat``: int64 [n_rows] in [0, K)."""
        raise NotImplementedError

    def aggregate(
        self, task: UnlearnTask, models: list[nn.Module], shard_ids: list[int], ds
    ) -> torch.Tensor:
        """Per-user weights [n_users, len(models)] (rows sum to 1), learnt on ``ds`` if at all;
        ``models[j]`` is the sub-model of shard ``shard_ids[j]``."""
        raise NotImplementedError

    # ---- the pipeline ----------------------------------------------------------------------
    def _train_shard(self, task: UnlearnTask, rows: np.ndarray, tag: str) -> nn.Module:
        model, info = task.train_fresh(_subset(task.train_ds, rows), tag)
        logger.info(
            "[%s] %s: %d interactions, %s epochs", self.name, tag, rows.size, info.get("epochs")
        )
        return model

    def unlearn(self, task: UnlearnTask) -> UnlearnResult:
        info: dict[str, Any] = {"shards": self.shards}
        # 1. The partitioned system before the request: the cost it adds to training.
        t0 = time.perf_counter()
        row_shard = self.partition(task)
        members = [np.flatnonzero(row_shard == k) for k in range(self.shards)]
        shards = progress(enumerate(members), total=self.shards, desc=f"{self.name} shards",
                          show_progress=task.show_progress)
        models: list[nn.Module | None] = [self._train_shard(task, rows, f"{self.name}-shard{k}") for k, rows in shards]
        self.aggregate(task, models, list(range(self.shards)), task.train_ds)
        shard_train_s = time.perf_counter() - t0
        info["shard_sizes"] = [int(r.size) for r in members]

        # 2. The request: retrain the shards that hold forgotten rows, on their retained rows.
        t0 = time.perf_counter()
        forgotten = np.zeros(row_shard.size, dtype=bool)
        forgotten[task.request_index] = True
        touched = np.unique(row_shard[task.request_index]).tolist()
        for k in progress(touched, desc=f"{self.name} retrain", show_progress=task.show_progress):
            keep = members[k][~forgotten[members[k]]]
            models[k] = None  # the old sub-model saw D_t: it must not survive
            if keep.size:
                models[k] = self._train_shard(task, keep, f"{self.name}-shard{k}-retrain")
        shard_ids = [k for k, m in enumerate(models) if m is not None]
        live = [models[k] for k in shard_ids]
        if not live:
            raise UnrankError(
                f"{self.name}: the request holds every train interaction; "
                "nothing is left to train on"
            )
        t1 = time.perf_counter()
        weights = self.aggregate(task, live, shard_ids, task.retain_ds)
        aggregate_s = time.perf_counter() - t1
        ensemble = ShardEnsemble.of(live, weights.to(model_device(live[0])))
        ensemble.eval()
        unlearn_s = time.perf_counter() - t0

        info.update(
            shards_retrained=len(touched),
            retrained=[int(k) for k in touched],
            shards_emptied=len(models) - len(live),
            time_s=unlearn_s,
        )
        stages = {
            "shard_train_s": shard_train_s,
            "unlearn_s": unlearn_s,
            "aggregate_s": aggregate_s,
        }
        return UnlearnResult(ensemble, stages=stages, info=info)


class SISA(PartitionMethod):
    """SISA: a seeded random user partition. ``aggregate="own"`` (the default, as RecEraser's
    paper sets it for user partitions) scores each user with the sub-model of the shard that
    holds the user (the others never saw them), falling back to the mean for users without
    train data left; ``"mean"`` averages the sub-models' scores (``a_{u,k} = 1/K``)."""

    name = "sisa"
    settings = {"shards": "unrank_shards", "aggregate_by": "unrank_sisa_aggregate"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.aggregate_by = self.kwargs["aggregate_by"]
        if self.aggregate_by not in ("mean", "own"):
            raise UnrankError(f"unrank_sisa_aggregate={self.aggregate_by!r}: choose mean or own")
        self.user_shard: np.ndarray | None = None

    def partition(self, task: UnlearnTask) -> np.ndarray:
        users, _ = _rows(task.train_ds)
        row_shard = random_user_partition(
            users, int(task.train_ds.user_num), self.shards, task.seed
        )
        self.user_shard = np.full(int(task.train_ds.user_num), -1, dtype=np.int64)
        self.user_shard[users] = row_shard
        return row_shard

    def aggregate(
        self, task: UnlearnTask, models: list[nn.Module], shard_ids: list[int], ds
    ) -> torch.Tensor:
        n_users, n_live = int(models[0].n_users), len(models)
        weights = torch.full((n_users, n_live), 1.0 / n_live)
        if self.aggregate_by == "own":
            users = np.unique(_rows(ds)[0])  # users with data left in ds
            column = np.full(self.shards, -1, dtype=np.int64)
            column[shard_ids] = np.arange(n_live)
            col = column[self.user_shard[users]]
            users, col = torch.as_tensor(users[col >= 0]), torch.as_tensor(col[col >= 0])
            weights[users] = 0.0
            weights[users, col] = 1.0
        return weights


class RecEraser(PartitionMethod):
    """RecEraser: balanced k-means partition on the original's embeddings (users or
    interactions), attention aggregation trained with BPR on the (retained) train data."""

    name = "receraser"
    settings = {
        "shards": "unrank_shards",
        "partition_by": "unrank_receraser_partition",
        "iters": "unrank_receraser_iters",
        "agg_epochs": "unrank_receraser_agg_epochs",
        "agg_lr": "unrank_receraser_agg_lr",
    }

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.partition_by = self.kwargs["partition_by"]
        if self.partition_by not in ("user", "interaction"):
            raise UnrankError(
                f"unrank_receraser_partition={self.partition_by!r}: choose user or interaction"
            )
        self.iters = _positive_int("unrank_receraser_iters", self.kwargs["iters"])
        self.agg_epochs = _positive_int(
            "unrank_receraser_agg_epochs", self.kwargs["agg_epochs"], minimum=0
        )
        lr = self.kwargs["agg_lr"]
        try:
            self.agg_lr = float(lr)
        except (TypeError, ValueError):
            raise UnrankError(f"unrank_receraser_agg_lr={lr!r} is not a number") from None
        if not self.agg_lr > 0:
            raise UnrankError(f"unrank_receraser_agg_lr={lr} is out of range: it must be > 0")
        self.attention: ShardAttention | None = None  # the last aggregator trained

    def partition(self, task: UnlearnTask) -> np.ndarray:
        users, items = _rows(task.train_ds)
        try:
            user_e, item_e = get_adapter(task.model).final_embeddings()
        except AdapterError as exc:
            raise UnrankError(f"receraser partitions by embeddings: {exc}") from None
        if self.partition_by == "interaction":
            dev = user_e.device
            points = torch.cat(
                (
                    user_e[torch.as_tensor(users, device=dev)],
                    item_e[torch.as_tensor(items, device=dev)],
                ),
                1,
            )
            return balanced_kmeans(points, self.shards, self.iters, task.seed)
        present = np.unique(users)
        assign = balanced_kmeans(
            user_e[torch.as_tensor(present, device=user_e.device)],
            self.shards,
            self.iters,
            task.seed,
        )
        user_shard = np.full(int(task.train_ds.user_num), -1, dtype=np.int64)
        user_shard[present] = assign
        return user_shard[users]

    def aggregate(
        self, task: UnlearnTask, models: list[nn.Module], shard_ids: list[int], ds
    ) -> torch.Tensor:
        device = model_device(models[0])
        try:
            reps = torch.stack([get_adapter(m).final_embeddings()[0].float() for m in models], 1)
        except AdapterError as exc:
            raise UnrankError(f"receraser aggregates by user representations: {exc}") from None
        reps = reps.to(device)  # [n_users, K, d]
        users_np, items_np = _rows(ds)
        users = torch.as_tensor(users_np, device=device)
        items = torch.as_tensor(items_np, device=device)
        n_items = int(models[0].n_items)

        torch.manual_seed(task.seed)
        attention = ShardAttention(reps.shape[-1]).to(device)
        optimizer = torch.optim.Adam(attention.parameters(), lr=self.agg_lr)
        gen = torch.Generator(device="cpu").manual_seed(task.seed)
        scorers = [get_adapter(m).pair_scorer() for m in models]
        pos = torch.stack([score(users, items) for score in scorers], 1)  # [n, K]
        for _ in range(self.agg_epochs):
            # BPR with one uniformly sampled negative per interaction (item 0 is padding).
            neg_items = torch.randint(1, n_items, (users.numel(),), generator=gen).to(device)
            neg = torch.stack([score(users, neg_items) for score in scorers], 1)
            order = torch.randperm(users.numel(), generator=gen).to(device)
            for start in range(0, order.numel(), AGG_BATCH):
                b = order[start : start + AGG_BATCH]
                a = attention(reps[users[b]])  # [B, K]
                diff = (a * (pos[b] - neg[b])).sum(-1)
                loss = -F.logsigmoid(diff).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.attention = attention
        with torch.no_grad():
            return attention(reps)
