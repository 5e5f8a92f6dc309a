"""A stream of forget requests applied to one model, one after another (issue 15).

A platform answers requests all day: each request is unlearned from the model as it stands
after the previous ones, on the data retained so far. :class:`RequestStream` holds that state
(the model, the retained train rows, every request applied so far) and keeps a **cumulative
utility budget**: the NDCG@10 of the validation split's *monitor* part (rows no method reads,
:func:`~recbole_unrank.data.monitor_valid`), with the retained history masked, must stay at
least ``guard`` x the original model's, across the whole stream, not per request. When a request would take it below, the stream says so (a logged
line and an ``event`` in the request's record) and applies its policy:

* ``refuse``: the request is undone (model and retained data as before it) and recorded as
  refused: its data is **not** forgotten; the caller must handle it (e.g. queue a retrain);
* ``finetune``: the request stays applied, then the model is fine-tuned on the retained data
  (``unrank_finetune_epochs`` / ``unrank_finetune_lr``, the ``finetune`` method);
* ``retrain``: the request stays applied, then the model is retrained from scratch on the
  retained data (same config, seed, epoch budget and early stopping);
* ``consolidate``: the request stays applied, then the blocks the stream has touched since the
  last consolidation (the users and items of those requests) are re-solved on the retained
  data, every other parameter fixed (:func:`consolidate_blocks`; DESIGN.md 10.4): for a model
  with per-user and per-item blocks (WMF, NeuMF, BPR) ``unrank_consolidate_sweeps`` Gauss-Seidel
  sweeps (users, then items) of block Newton steps towards the retained optimum, which for WMF
  is the exact ALS re-solve of those rows (implicit's ``partial_fit_users`` /
  ``partial_fit_items``); for a graph model (LightGCN) ``unrank_finetune_epochs`` epochs of its
  own loss over the retained rows of the touched users and items (``unrank_finetune_lr``). Local:
  its cost follows the touched rows, not the data. A re-solve that does not raise the monitor's
  per-user NDCG@10 by more than ``CONSOLIDATE_Z`` paired standard errors (:func:`monitor_gain`)
  is undone (the event says ``rolled_back``; the request stays applied and its blocks are not
  tried again).

The budget is measured after each request with :func:`user_ndcg` over every user of the monitor part
(one score matrix per chunk of users from the model's adapter): no RecBole evaluation loop.

Config keys: ``unrank_stream_guard`` (0 turns the budget off), ``unrank_stream_policy`` and, for
``consolidate``, ``unrank_consolidate_sweeps`` (block models) or ``unrank_finetune_*`` (graph
models). Measured ERASE's way by ``benchmarks/stream.py`` (``benchmarks/results/stream.md``).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from recbole_unrank.adapters import AdapterError, get_adapter
from recbole_unrank.adapters.lightgcn_graph import forget_local_graph
from recbole_unrank.data import method_valid, monitor_valid
from recbole_unrank.errors import UnrankError
from recbole_unrank.evaluation.audit import auc
from recbole_unrank.influence import RankProbe
from recbole_unrank.methods import METHODS, UnlearnTask
from recbole_unrank.request import request_from_pairs, take_rows

__all__ = ["CONSOLIDATE_Z", "POLICIES", "RequestStream", "StreamSettings", "consolidate_blocks", "monitor_gain",
           "pair_ranks", "score_auc", "user_ndcg", "recent_requests"]

logger = logging.getLogger("recbole_unrank")

POLICIES = ("refuse", "finetune", "retrain", "consolidate")


def _stream_default(key: str):
    from recbole_unrank.config import default_of

    return default_of(key)


def _config_value(config, key: str):
    """``config[key]``, None where the config does not hold it."""
    try:
        return config[key]
    except KeyError:
        return None


def _setting(config, key: str):
    """``config[key]``, or its documented default where the config does not set it."""
    try:
        value = config[key]
    except KeyError:
        value = None
    return _stream_default(key) if value is None else value


@dataclass
class StreamSettings:
    """``guard``: the cumulative budget (0: off); ``policy``: what happens when it breaks.
    Defaults: ``unrank_stream_guard`` / ``unrank_stream_policy`` of ``properties/unrank.yaml``."""

    guard: float = field(default_factory=lambda: _stream_default("unrank_stream_guard"))
    policy: str = field(default_factory=lambda: _stream_default("unrank_stream_policy"))

    def __post_init__(self):
        if not 0.0 <= float(self.guard) <= 1.0:
            raise UnrankError(f"unrank_stream_guard={self.guard} must lie in [0, 1] (0 turns the budget off)")
        if self.policy not in POLICIES:
            raise UnrankError(f"unrank_stream_policy={self.policy!r}: use one of {', '.join(POLICIES)}")
        self.guard = float(self.guard)

    @classmethod
    def from_config(cls, config) -> "StreamSettings":
        guard, policy = config["unrank_stream_guard"], config["unrank_stream_policy"]
        return cls(guard=_stream_default("unrank_stream_guard") if guard is None else guard,
                   policy=_stream_default("unrank_stream_policy") if policy is None else policy)


# ----------------------------------------------------------------------------- measures
def _pairs(ds) -> tuple[np.ndarray, np.ndarray]:
    return ds.inter_feat[ds.uid_field].numpy(), ds.inter_feat[ds.iid_field].numpy()


def _chunks(users: np.ndarray, size: int):
    for lo in range(0, users.size, size):
        yield users[lo : lo + size]


def _rows_for(chunk: np.ndarray, u: np.ndarray, i: np.ndarray, device):
    """Pairs of ``(u, i)`` whose user is in ``chunk``, as (row in chunk, item) tensors."""
    row_of = np.full(int(max(chunk.max(), u.max() if u.size else 0)) + 1, -1, dtype=np.int64)
    row_of[chunk] = np.arange(chunk.size)
    mine = (u < row_of.size) & (row_of[np.minimum(u, row_of.size - 1)] >= 0)
    return (torch.as_tensor(row_of[u[mine]], device=device), torch.as_tensor(i[mine], device=device), mine)


@torch.no_grad()
def user_ndcg(adapter, users: np.ndarray, history: tuple, targets: tuple, k: int = 10,
              chunk: int = 256) -> np.ndarray:
    """Per user of ``users`` (sorted, distinct), NDCG@k of its ``targets`` pairs with its
    ``history`` pairs masked (RecBole's full-sort definition: padding item masked, ideal DCG
    over min(#targets, k)). ``history`` / ``targets``: (users, items) numpy arrays."""
    device = adapter.device
    out = np.zeros(users.size)
    for lo, part in zip(range(0, users.size, chunk), _chunks(users, chunk)):
        hr, hi, _ = _rows_for(part, *history, device)
        tr, ti, _ = _rows_for(part, *targets, device)
        empty = torch.zeros(0, dtype=torch.long, device=device)
        probe = RankProbe(part.size, hr, hi, empty, empty, tr, ti)
        scores = adapter.user_scores(torch.as_tensor(part, device=device))
        out[lo : lo + part.size] = probe.valid_ndcg(scores, k).double().cpu().numpy()
    return out


@torch.no_grad()
def pair_ranks(adapter, pairs: tuple, history: tuple, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Rank (1 = top) and score of each pair under the model, ``history`` pairs masked: the
    position it would take in its user's list. Returned in the order of ``pairs``."""
    device = adapter.device
    pu, pi = pairs
    ranks = np.zeros(pu.size, dtype=np.int64)
    scores = np.zeros(pu.size)
    users = np.unique(pu)
    for part in _chunks(users, chunk):
        hr, hi, _ = _rows_for(part, *history, device)
        fr, fi, mine = _rows_for(part, pu, pi, device)
        empty = torch.zeros(0, dtype=torch.long, device=device)
        probe = RankProbe(part.size, hr, hi, fr, fi, empty, empty)
        s = adapter.user_scores(torch.as_tensor(part, device=device))
        ranks[mine] = probe.forget_ranks(s).cpu().numpy()
        scores[mine] = s[fr, fi].double().cpu().numpy()
    return ranks, scores


def score_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney):
    the package's one AUC (:func:`recbole_unrank.evaluation.audit.auc`), NaN when a side is empty."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    return auc(positive, negative)


def recent_requests(train_ds, n: int, per_request: int, seed: int, time_field: str | None = None,
                    min_left: int | None = None) -> list[np.ndarray]:
    """``n`` single-user requests: users in an order drawn from ``seed``, each request the
    user's ``per_request`` most recent train interactions still retained (by ``time_field``;
    row order without one). A user is eligible while at least ``min_left`` (default
    ``per_request``) of their train interactions would remain; when every eligible user has
    been drawn, a new round starts over those still eligible. Returns rows of
    ``train_ds.inter_feat`` per request."""
    u, _ = _pairs(train_ds)
    min_left = per_request if min_left is None else int(min_left)
    stamp = (train_ds.inter_feat[time_field].numpy() if time_field and time_field in train_ds.inter_feat.columns
             else np.arange(u.size, dtype=float))
    order = np.lexsort((np.arange(u.size), -stamp, u))  # per user: newest first
    starts = np.searchsorted(u[order], np.arange(int(train_ds.user_num) + 1))
    used = np.zeros(int(train_ds.user_num), dtype=np.int64)  # interactions already requested
    count = np.diff(starts)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < n:
        eligible = np.flatnonzero(count - used >= per_request + min_left)
        if eligible.size == 0:
            raise UnrankError(f"only {len(out)} requests of {per_request} interactions fit this train split "
                              f"(each user keeps at least {min_left}); ask for fewer")
        for user in rng.permutation(eligible):
            if len(out) == n:
                break
            a = starts[user] + used[user]
            out.append(order[a : a + per_request].copy())
            used[user] += per_request
    return out


# ----------------------------------------------------------------------------- the stream
#: A consolidation is kept only where the monitor's per-user NDCG@10 rises by more than this
#: many paired standard errors (a one-sided paired z-test): a stream tries hundreds of
#: re-solves, and keeping every one whose monitor mean rose at all kept those that rose by
#: noise (NeuMF, 1,000 requests: 20 of 847 kept, each raising the monitor by 0.000-0.008 of
#: the original's, and test NDCG@10 ended at -31.69% of the reference against -12.66% with no
#: budget; benchmarks/results/stream-rollback-any-rise/).
CONSOLIDATE_Z = 2.0


def monitor_gain(before: np.ndarray, after: np.ndarray, z: float = CONSOLIDATE_Z) -> dict:
    """The paired change of the monitor's per-user NDCG@10 and whether it is kept: its mean
    is above 0 and above ``z`` standard errors of the mean (with no spread, above 0)."""
    d = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    mean = float(d.mean()) if d.size else 0.0
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    return {"mean": mean, "se": se, "kept": bool(mean > 0 and mean > z * se)}


def _model_snapshot(model):
    """What a method may change in place, saved so that a request that fails can be undone;
    returns ``restore()``, which puts it back into ``model`` (in place) and clears the caches.

    Saved: every ``state_dict`` entry (parameters and buffers) and every other tensor or
    scipy-sparse attribute of the model (a graph model's ``norm_adj_matrix``, whose dropped
    edges are zeroed in place, and RecBole's ``interaction_matrix``), each copied. Derived
    state (the adapter's local-graph cache, RecBole's ``restore_*`` embeddings) is dropped on
    restore and rebuilt on demand."""
    import scipy.sparse as sp

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attrs = {}
    for k, v in vars(model).items():
        if k.startswith("_"):
            continue
        if isinstance(v, torch.Tensor):
            attrs[k] = v.detach().clone()
        elif sp.issparse(v):
            attrs[k] = v.copy()

    def restore() -> None:
        with torch.no_grad():
            model.load_state_dict(state)
        for k, v in attrs.items():
            setattr(model, k, v)
        forget_local_graph(model)
        try:
            get_adapter(model).invalidate()
        except AdapterError:  # a model without an adapter has no caches of ours
            pass

    return restore


def consolidate_blocks(model, train_ds, keep: np.ndarray, touched: np.ndarray, *, sweeps: int = 1,
                       damping: float = 1e-2, seed: int = 0, batch_size: int = 4096, epochs: int = 2,
                       lr: float = 1e-3, make_train_loader=None, force_finetune: bool = False) -> dict:
    """Re-solve, on the retained rows, the blocks of the users and items of the train rows
    ``touched`` (rows of ``train_ds.inter_feat``); ``keep``: bool [N], the retained rows.
    Changes ``model`` in place; returns what it did.

    Block models (per-user and per-item blocks, no graph): ``sweeps`` sweeps of every touched
    user's block, then every touched item's, each a block Newton step on the model's training
    loss over the retained rows (:class:`~recbole_unrank.methods.twosided.TwoSidedProblem` with
    the target ``grad_b L_ret = 0``: the blocks go *to* their retained optimum, other blocks
    fixed). Where the block problem has an L2 term (WMF, BPR) the step is undamped, so for WMF,
    whose block loss is quadratic, one sweep is exactly the ALS re-solve of the touched user rows
    and then of the touched item rows. Without one (NeuMF) each block is anchored and damped by
    ``damping`` and takes a line search (the two-sided update's rules). A block with no retained
    row is left as the requests left it (it has no retained data to be re-solved on).

    Graph models (LightGCN) and models without blocks: ``epochs`` epochs of the model's own
    loss (Adam at ``lr``) over the retained rows whose user or item is touched, with the
    retained graph (``make_train_loader(ds)`` builds the loader); ``force_finetune`` takes this
    path for a block model too (a comparison: on ml-100k WMF it lowered test NDCG@10 as well)."""
    from recbole_unrank.methods.finetune import batch_loss, use_training_data
    from recbole_unrank.methods.objective import Objective
    from recbole_unrank.methods.twosided import TwoSidedProblem

    if int(sweeps) < 1:
        raise UnrankError(f"unrank_consolidate_sweeps={sweeps} re-solves nothing: use at least 1 sweep")
    adapter = get_adapter(model)
    device = adapter.device
    feat = train_ds.inter_feat
    users = feat[train_ds.uid_field].to(device)
    items = feat[train_ds.iid_field].to(device)
    touched = torch.as_tensor(np.asarray(touched, dtype=np.int64), device=device)
    keep_t = torch.as_tensor(np.asarray(keep, dtype=bool), device=device)
    user_mask = torch.zeros(adapter.n_users, dtype=torch.bool, device=device)
    item_mask = torch.zeros(adapter.n_items, dtype=torch.bool, device=device)
    user_mask[users[touched]] = True
    item_mask[items[touched]] = True
    t0 = time.perf_counter()
    if not force_finetune and not adapter.is_graph and adapter.supports_user_blocks and adapter.supports_item_blocks:
        model.eval()
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        neg = torch.randint(1, adapter.n_items, (users.numel(), 1), generator=gen).to(device)
        obj = Objective(adapter, users, items, neg, "training", int(batch_size))
        problem = TwoSidedProblem(adapter, obj, keep_t, user_mask, item_mask, float(damping), int(seed))
        problem.g0 = {side: torch.zeros_like(g) for side, g in problem.g0.items()}  # target: grad L_ret = 0
        if problem.anchor == 0.0:  # an L2 / all-entries term makes every block problem positive definite
            problem.damping = 0.0
        r0 = problem.norm()
        for _ in range(int(sweeps)):
            problem.half_sweep("user")
            problem.half_sweep("item")
        adapter.invalidate()
        return {"kind": "blocks", "users": int(problem.ids["user"].numel()),
                "items": int(problem.ids["item"].numel()), "sweeps": int(sweeps), "residual_before": r0,
                "residual_after": problem.norm(), "time_s": time.perf_counter() - t0}
    if make_train_loader is None:
        raise UnrankError("consolidation of a graph model needs a training loader (make_train_loader)")
    retained = take_rows(train_ds, np.flatnonzero(np.asarray(keep, dtype=bool)))
    use_training_data(model, retained)
    local = (user_mask[users] | item_mask[items]) & keep_t
    local_ds = take_rows(train_ds, local.nonzero().squeeze(1).cpu())
    loader = make_train_loader(local_ds)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(lr))
    model.train()
    steps = 0
    for _ in range(int(epochs)):
        for batch in loader:
            optimizer.zero_grad()
            loss = batch_loss(model, batch.to(device))
            if not torch.isfinite(loss):
                raise UnrankError("consolidation: the loss became non-finite; lower unrank_finetune_lr")
            loss.backward()
            optimizer.step()
            steps += 1
    model.eval()
    adapter.invalidate()
    return {"kind": "finetune_touched", "rows": int(local.sum()), "epochs": int(epochs), "steps": steps,
            "time_s": time.perf_counter() - t0}


@dataclass
class RequestStream:
    """One model answering forget requests one after another.

    ``method``: an unlearning method instance (e.g. L2UnRank with the run's settings);
    ``settings``: the cumulative budget and its policy; ``train_fresh(train_ds)`` trains a
    new model on ``train_ds`` (the ``retrain`` policy); ``make_train_loader(ds)`` a training
    loader (the ``finetune`` policy); ``finetune``: a finetune method instance."""

    config: object
    data: object
    model: torch.nn.Module
    method: object
    settings: StreamSettings = field(default_factory=StreamSettings)
    train_fresh: object = None
    make_train_loader: object = None
    finetune: object = None
    seed: int = 2020
    kept: np.ndarray = None  # rows of the original train split still retained
    applied: list = field(default_factory=list)  # per applied request: its rows of the original train split
    records: list = field(default_factory=list)
    valid_reference: float | None = None
    journal: object = None  # a recbole_unrank.journal.Journal: every apply is journaled (issue 23)
    consolidated: int = 0  # requests of ``applied`` already re-solved by a consolidation (or a retraining)

    def __post_init__(self):
        for key in ("unrank_audit_shadows", "unrank_audit_shadow_epochs"):  # the run's audit, not a stream's
            value = _config_value(self.config, key)
            if value not in (None, 0):
                raise UnrankError(f"{key}={value} has no effect in a request stream (it sizes the LiRA audit of "
                                  "a run's rows; the stream reports no audit per request): unset it")
        train = self.data.train_ds
        if self.kept is None:
            self.kept = np.arange(len(train.inter_feat))
        self._retained = None
        if self.settings.policy == "finetune" and self.finetune is None:
            cls = METHODS["finetune"]
            self.finetune = cls(epochs=self.config["unrank_finetune_epochs"], lr=self.config["unrank_finetune_lr"])
        if self.valid_reference is None:
            self.valid_reference = self.valid_ndcg()

    # ---- state -------------------------------------------------------------------------
    def _initial_model(self):
        """The model as training starts it (built once per stream; :func:`initial_model`)."""
        if getattr(self, "_initial", None) is None:
            from recbole_unrank.training import initial_model

            self._initial = initial_model(self.config, self.data.train_ds)
        return self._initial

    def retained_ds(self):
        if self._retained is None:
            train = self.data.train_ds
            self._retained = take_rows(train, self.kept)
        return self._retained

    def history(self, with_valid: bool = False) -> tuple[np.ndarray, np.ndarray]:
        u, i = _pairs(self.data.train_ds)
        hu, hi = u[self.kept], i[self.kept]
        if with_valid:  # RecBole's test-time mask: train (retained) and valid items
            vu, vi = _pairs(self.data.valid_ds)
            hu, hi = np.concatenate((hu, vu)), np.concatenate((hi, vi))
        return hu, hi

    def monitor_ndcg(self, model=None) -> np.ndarray:
        """NDCG@10 per user of the validation split's *monitor* part (:func:`~recbole_unrank.data.
        split_valid`), retained history masked: the budget reads only rows that no method
        reads, so it sees what the step search moved (DESIGN.md 10.3)."""
        adapter = get_adapter(self.model if model is None else model)
        vu, vi = _pairs(monitor_valid(self.data))
        users = np.unique(vu)
        return user_ndcg(adapter, users, self.history(), (vu, vi))

    def valid_ndcg(self, model=None) -> float:
        """Mean of :meth:`monitor_ndcg` over the monitor's users."""
        return float(self.monitor_ndcg(model).mean())

    def forgotten_rows(self) -> np.ndarray:
        return np.concatenate(self.applied) if self.applied else np.zeros(0, dtype=np.int64)

    # ---- one request --------------------------------------------------------------------
    def apply(self, rows: np.ndarray, seed: int | None = None) -> dict:
        """Unlearn the train rows ``rows`` (of the original train split; all still retained)
        from the current model; returns the request's record. With a ``journal`` the request
        goes through :meth:`~recbole_unrank.journal.Journal.apply` (journaled; a failure leaves
        the model as it was)."""
        if self.journal is not None and not self.journal._inside:
            return self.journal.apply(self, rows, seed)
        started = time.perf_counter()
        rows = np.asarray(rows, dtype=np.int64)
        pos = np.searchsorted(self.kept, rows)
        if (pos >= self.kept.size).any() or not np.array_equal(self.kept[np.minimum(pos, self.kept.size - 1)], rows):
            raise UnrankError("a request's rows must all be retained train rows (one was forgotten already)")
        k = len(self.records) + 1
        u, i = _pairs(self.data.train_ds)
        current = self.retained_ds()
        request = request_from_pairs(current, u[rows], i[rows], "file")
        snapshot = None
        t0 = time.perf_counter()
        if self.settings.guard > 0 and self.settings.policy == "refuse":
            snapshot = copy.deepcopy(self.model)
        snapshot_s = time.perf_counter() - t0
        seed = int(self.seed + k if seed is None else seed)  # a journal passes its own (stable across a resume)
        task = UnlearnTask(
            model=self.model, model_name=self.config["model"], train_ds=current, retain_ds=None, forget_ds=None,
            request_index=request.index, seed=seed,
            valid_ds=method_valid(self.data), initial_model=self._initial_model,
        )
        rollback = _model_snapshot(self.model)
        try:
            result = self.method(task)
        except BaseException:  # the request is not applied: the model is as it was before it
            rollback()
            raise
        self.model = result.model
        old_kept = self.kept
        self.kept = np.setdiff1d(self.kept, rows, assume_unique=True)
        self._retained = None
        self.applied.append(rows)
        record = {"request": k, "seed": seed, "user": int(u[rows[0]]), "pairs": int(rows.size),
                  "time_s": float(result.info.get("time_s", 0.0)), "snapshot_s": snapshot_s,
                  "step_median": result.info.get("calibration", {}).get("step_median"),
                  "users_meeting_view": result.info.get("calibration", {}).get("users_meeting_target"),
                  "event": None}
        # the whole request as a platform waits for it (the retained data, the update, the
        # bookkeeping); ``time_s`` is the method's own share of it; the budget check is guard_s
        record["wall_s"] = time.perf_counter() - started
        if self.settings.guard > 0:
            t0 = time.perf_counter()
            per_user = self.monitor_ndcg()
            v = float(per_user.mean())
            record["guard_s"] = time.perf_counter() - t0
            record["valid_ratio"] = v / self.valid_reference if self.valid_reference > 0 else 1.0
            if v < self.settings.guard * self.valid_reference:
                record["event"] = self._consolidate(per_user, snapshot, old_kept, record)
        self.records.append(record)
        return record

    def _consolidate(self, per_user: np.ndarray, snapshot, old_kept, record) -> dict:
        policy = self.settings.policy
        valid_now = float(per_user.mean())
        logger.warning("[stream] request %d takes validation NDCG@10 to %.4f, below the budget %.3f x %.4f: %s",
                       record["request"], valid_now, self.settings.guard, self.valid_reference, policy)
        t0 = time.perf_counter()
        if policy == "refuse":
            self.model = snapshot
            self.kept = old_kept
            self._retained = None
            self.applied.pop()
        elif policy == "finetune":
            retained = self.retained_ds()
            task = UnlearnTask(
                model=self.model, model_name=self.config["model"], train_ds=retained, retain_ds=retained,
                forget_ds=None, request_index=np.zeros(0, dtype=np.int64),
                seed=record["seed"], valid_ds=method_valid(self.data),
                make_train_loader=self.make_train_loader,
            )
            self.model = self.finetune(task).model
        elif policy == "consolidate":
            undo = _model_snapshot(self.model)
            keep = np.zeros(len(self.data.train_ds.inter_feat), dtype=bool)
            keep[self.kept] = True
            touched = np.concatenate(self.applied[self.consolidated:])
            info = consolidate_blocks(
                self.model, self.data.train_ds, keep, touched, sweeps=_setting(self.config, "unrank_consolidate_sweeps"),
                damping=_setting(self.config, "unrank_damping"), seed=record["seed"],
                batch_size=int(self.config["train_batch_size"] or 4096), epochs=_setting(self.config, "unrank_finetune_epochs"),
                lr=_setting(self.config, "unrank_finetune_lr"), make_train_loader=self.make_train_loader)
            self.consolidated = len(self.applied)
        else:  # retrain
            self.model, _ = self.train_fresh(self.retained_ds())
            self.consolidated = len(self.applied)
        acted = time.perf_counter() - t0
        after_user = self.monitor_ndcg()
        after = float(after_user.mean())
        gain = monitor_gain(per_user, after_user) if policy == "consolidate" else None
        rolled_back = gain is not None and not gain["kept"]
        if rolled_back:
            # a re-solve that does not raise the monitor beyond its noise is undone (the request
            # stays applied): re-solving an early-stopped model's blocks to their retained
            # optimum can lower utility (kept whatever it did, NeuMF's collapsed:
            # benchmarks/results/stream-consolidate-unguarded/); its blocks are not tried again
            undo()
            after = valid_now
        # consolidate's time holds the check it is kept or undone on; the other policies' their action only
        elapsed = time.perf_counter() - t0 if policy == "consolidate" else acted
        event = {"policy": policy, "time_s": elapsed, "valid_before": valid_now / self.valid_reference,
                 "valid_after": after / self.valid_reference, "refused": policy == "refuse"}
        if policy == "consolidate":
            event["consolidation"] = info
            event["rolled_back"] = rolled_back
            event["monitor_gain"] = gain
        logger.warning("[stream] %s took %.1fs: validation NDCG@10 now %.3f x the original's",
                       policy, elapsed, event["valid_after"])
        return event
