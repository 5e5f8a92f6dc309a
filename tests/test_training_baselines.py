"""Tests of the training baselines: finetune, neggrad (methods/finetune.py), SISA and RecEraser
(methods/partition.py), on the tiny dataset (CPU, 2 epochs)."""

from __future__ import annotations

import copy
import math
import os
import sys

import numpy as np
import pytest
import torch

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank import pipeline
from recbole_unrank.errors import UnrankError
from recbole_unrank.evaluation import metrics as M
from recbole_unrank.methods import METHODS, UnlearnTask
from recbole_unrank.methods.finetune import FineTune, NegGrad, use_training_data
from recbole_unrank.methods.partition import (
    SISA,
    RecEraser,
    ShardEnsemble,
    balanced_kmeans,
    random_user_partition,
)
from recbole_unrank.models import get_model
from recbole_unrank.request import request_from_pairs, split_train

# the run names the methods these settings are for (a setting no method of a run reads is refused)
OVERRIDES = {"epochs": 2, "unrank_shards": 2, "unrank_receraser_agg_epochs": 2, "unrank_methods": ["sisa", "receraser"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, config_maker):
    """``runs(model)``: a prepared run on tiny whose original is trained (once per model)."""
    workdir = tmp_path_factory.mktemp("baselines")
    saved_cwd, saved_argv = os.getcwd(), sys.argv
    os.chdir(workdir)
    sys.argv = [saved_argv[0]]
    cache: dict[str, pipeline.Run] = {}

    def get(model: str) -> pipeline.Run:
        if model not in cache:
            config = config_maker(workdir / model, model, **OVERRIDES)
            run, _ = pipeline.prepare_run(config)
            run.prepare_original()
            cache[model] = run
        return cache[model]

    try:
        yield get
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pb = dict(b.named_parameters())
    return any(not torch.equal(p, pb[n]) for n, p in a.named_parameters())


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_registered():
    for name, cls in [
        ("finetune", FineTune),
        ("neggrad", NegGrad),
        ("sisa", SISA),
        ("receraser", RecEraser),
    ]:
        assert METHODS[name] is cls
        assert all(key.startswith("unrank_") for key in cls.settings.values())


# ------------------------------------------------------------------------------ finetune / neggrad
def _mean_loss(run, model, ds) -> float:
    """``model``'s RecBole training loss over all of ``ds`` (batch-size weighted mean), with the
    negatives a fixed seed draws (the same for every model compared) and dropout off."""
    from recbole.utils import init_seed

    from recbole_unrank.methods.finetune import batch_loss

    loader = run._task().make_train_loader(ds)
    init_seed(12345, True)
    total, n = 0.0, 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            total += float(batch_loss(model, batch)) * len(batch)
            n += len(batch)
    model.train(was)
    return total / n


@pytest.mark.parametrize("model", ["WMF", "LightGCN", "NeuMF"])
@pytest.mark.parametrize("method", ["finetune", "neggrad"])
def test_training_baseline_does_what_it_is_for(runs, model, method):
    """finetune lowers the retained data's training loss; neggrad raises the forget pairs' loss
    and ranks them lower than the original does. Both are compared with the original serving the
    retained data (a graph model's retained graph, WMF's retained degrees), under the same
    fixed negatives. Measured margins (2-epoch originals, losses near log 2 for the pairwise
    models): the smallest is NeuMF's forget loss, 0.69327 -> 0.69336 (1e-4 relative), three
    orders above float32 summation noise (1e-7 relative)."""
    run = runs(model)
    before = copy.deepcopy(run.original.state_dict())
    row = run.run_method(method, save=False)
    unlearned = row["_model"]
    assert _all_finite(unlearned) and row["steps"] > 0
    start = copy.deepcopy(run.original)
    use_training_data(start, run.retain_ds)
    if method == "finetune":
        b, a = _mean_loss(run, start, run.retain_ds), _mean_loss(run, unlearned, run.retain_ds)
        assert a < b, f"finetune did not lower the retained loss ({b:.6g} -> {a:.6g})"
    else:
        b, a = _mean_loss(run, start, run.forget_ds), _mean_loss(run, unlearned, run.forget_ds)
        assert a > b, f"neggrad did not raise the forget pairs' loss ({b:.6g} -> {a:.6g})"
        original = run.rows[0]["forget"]["mean_rank"]
        assert row["forget"]["mean_rank"] > original, "neggrad did not rank the forget pairs lower"
    # The original is never touched (methods work on a copy).
    assert all(torch.equal(v, run.original.state_dict()[k]) for k, v in before.items())


def test_neggrad_is_bounded(runs):
    """A huge ascent weight and step size: the run ends with finite parameters, no NaN."""
    run = runs("WMF")
    row = run.run_method(
        "neggrad",
        save=False,
        label="neggrad_hot",
        overrides={
            "unrank_neggrad_alpha": 1e6,
            "unrank_neggrad_lr": 1.0,
            "unrank_neggrad_epochs": 3,
        },
    )
    assert _all_finite(row["_model"])
    assert math.isfinite(row["test"]["ndcg@10"])


def test_use_training_data_gives_retained_state(runs):
    run = runs("WMF")
    model = copy.deepcopy(run.original)
    use_training_data(model, run.retain_ds)
    users = run.retain_ds.inter_feat[run.retain_ds.uid_field].long()
    expected = torch.bincount(users, minlength=model.n_users).float().clamp(min=1.0)
    assert torch.equal(model.user_degree, expected)

    lightgcn = copy.deepcopy(runs("LightGCN").original)
    use_training_data(lightgcn, run.retain_ds)
    assert lightgcn.norm_adj_matrix._nnz() == 2 * len(run.retain_ds.inter_feat)
    assert lightgcn.restore_user_e is None


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (FineTune, {"lr": -1.0}),
        (FineTune, {"epochs": "two"}),
        (NegGrad, {"alpha": -0.5}),
        (NegGrad, {"clip": 0}),
        (SISA, {"shards": 0}),
        (SISA, {"aggregate_by": "max"}),
        (RecEraser, {"partition_by": "item"}),
        (RecEraser, {"agg_lr": 0.0}),
    ],
)
def test_bad_settings_are_refused(cls, kwargs):
    with pytest.raises(UnrankError):
        cls(**kwargs)


def test_missing_settings_take_defaults():
    ft = FineTune(epochs=None, lr=None)
    assert (ft.epochs, ft.lr) == (2, 1e-3)
    ng = NegGrad(epochs=None, alpha=None, lr=None, clip=None)
    assert (ng.epochs, ng.alpha) == (1, 1.0)
    assert RecEraser(shards=None, partition_by=None).shards == 5


# ------------------------------------------------------------------------------ sisa / receraser
@pytest.mark.parametrize("model", ["WMF", "LightGCN"])
@pytest.mark.parametrize("method", ["sisa", "receraser"])
def test_partition_baseline_runs_and_is_evaluable(runs, model, method):
    run = runs(model)
    row = run.run_method(method, save=False)
    ensemble = row["_model"]
    assert isinstance(ensemble, ShardEnsemble)
    assert _all_finite(ensemble)
    assert row["shards"] == 2 and 1 <= row["shards_retrained"] <= 2
    assert set(row["stages"]) >= {"shard_train_s", "unlearn_s"}
    assert row["time_s"] == pytest.approx(row["stages"]["unlearn_s"])  # unlearning time only
    w = ensemble.user_weights
    assert torch.all(w >= 0) and torch.allclose(w.sum(1), torch.ones(w.shape[0]), atol=1e-5)
    # The aggregate is evaluable as it is, and scores differently from the original.
    _, _, test_loader = run.loaders
    res, _ = M.evaluate_loader(ensemble, test_loader, ["NDCG", "Recall"], [10])
    assert 0.0 <= res["ndcg@10"] <= 1.0 and math.isfinite(res["recall@10"])
    users = torch.arange(1, 6)
    inter = {run.original.USER_ID: users}
    from recbole.data.interaction import Interaction

    ours = ensemble.full_sort_predict(Interaction(inter))
    theirs = run.original.full_sort_predict(Interaction(inter))
    assert ours.shape == theirs.shape and not torch.allclose(ours, theirs)


def _one_user_task(run, calls: list):
    """A task whose request holds two pairs of one user; ``train_fresh`` builds an untrained
    model (fast) and records ``(tag, rows)``."""
    train_ds = run.data.train_ds
    users = train_ds.inter_feat[train_ds.uid_field].numpy()
    items = train_ds.inter_feat[train_ds.iid_field].numpy()
    counts = np.bincount(users)
    u = int(np.flatnonzero(counts >= 3)[0])
    rows = np.flatnonzero(users == u)[:2]
    request = request_from_pairs(train_ds, users[rows], items[rows], "file")
    retain_ds, forget_ds = split_train(train_ds, request)
    model_class = get_model(run.config["model"])

    def train_fresh(ds, tag):
        calls.append((tag, len(ds.inter_feat)))
        torch.manual_seed(len(calls))
        return model_class(run.config, ds).eval(), {"epochs": 0, "time_s": 0.0}

    task = UnlearnTask(
        model=copy.deepcopy(run.original),
        model_name=run.config["model"],
        train_ds=train_ds,
        retain_ds=retain_ds,
        forget_ds=forget_ds,
        request_index=request.index,
        train_fresh=train_fresh,
        seed=2020,
    )
    return task, u, request


@pytest.mark.parametrize("model", ["WMF", "LightGCN"])
@pytest.mark.parametrize("cls", [SISA, RecEraser])
def test_request_in_one_shard_retrains_only_that_shard(runs, model, cls):
    run = runs(model)
    calls: list = []
    task, _, request = _one_user_task(run, calls)
    method = cls(shards=3, **({"agg_epochs": 1} if cls is RecEraser else {}))
    row_shard = method.partition(task)
    calls.clear()
    result = method(task)
    initial = [c for c in calls if not c[0].endswith("-retrain")]
    retrained = [c for c in calls if c[0].endswith("-retrain")]
    assert len(initial) == 3
    assert len(retrained) == 1 and result.info["shards_retrained"] == 1
    shard = int(row_shard[request.index[0]])
    sizes = np.bincount(row_shard, minlength=3)
    assert retrained[0] == (f"{cls.name}-shard{shard}-retrain", int(sizes[shard]) - len(request))
    assert result.info["time_s"] == result.stages["unlearn_s"]
    assert len(result.model.models) == 3


def test_sisa_own_shard_weights(runs):
    """``aggregate_by="own"``: each user is scored by the sub-model of the shard holding them."""
    run = runs("WMF")
    task, _, _ = _one_user_task(run, [])
    method = SISA(shards=3, aggregate_by="own")
    result = method(task)
    w = result.model.user_weights
    assert torch.allclose(w.sum(1), torch.ones(w.shape[0]))
    users = np.unique(run.retain_ds.inter_feat[run.retain_ds.uid_field].numpy())
    assert torch.equal(w[users].argmax(1), torch.as_tensor(method.user_shard[users]))
    assert torch.all(w[users].max(1).values == 1.0)
    assert torch.allclose(w[0], torch.full((3,), 1 / 3))  # padding user: no data, the mean


def test_sisa_user_partition():
    rng = np.random.default_rng(0)
    row_users = rng.integers(1, 50, size=600)
    a = random_user_partition(row_users, 50, 4, seed=7)
    assert np.array_equal(a, random_user_partition(row_users, 50, 4, seed=7))
    for user in np.unique(row_users):  # a user's rows share one shard
        assert np.unique(a[row_users == user]).size == 1
    per_shard = [np.unique(row_users[a == k]).size for k in range(4)]
    assert max(per_shard) - min(per_shard) <= 1
    with pytest.raises(UnrankError):
        random_user_partition(row_users, 50, 100, seed=7)


def test_balanced_kmeans_respects_the_cap():
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(90, 4, generator=gen)  # one dense blob would take most points
    small = torch.randn(13, 4, generator=gen) + 10.0
    points = torch.cat((big, small))
    for k in (2, 3, 5):
        assign = balanced_kmeans(points, k, iters=5, seed=1)
        sizes = np.bincount(assign, minlength=k)
        assert sizes.sum() == points.shape[0] and sizes.max() <= math.ceil(points.shape[0] / k)
        assert sizes.min() > 0
    # Small n where the greedy cap would leave a shard empty: every shard gets a point.
    assign = balanced_kmeans(torch.randn(9, 2, generator=gen), 4, iters=3, seed=0)
    assert np.bincount(assign, minlength=4).min() > 0
    # Separated clusters of equal size are recovered.
    two = torch.cat((torch.zeros(10, 2), torch.full((10, 2), 5.0))) + 0.01 * torch.randn(
        20, 2, generator=gen
    )
    assign = balanced_kmeans(two, 2, iters=5, seed=3)
    assert (
        np.unique(assign[:10]).size == 1
        and np.unique(assign[10:]).size == 1
        and assign[0] != assign[10]
    )


@pytest.mark.parametrize("partition_by", ["user", "interaction"])
def test_receraser_partition_is_balanced(runs, partition_by):
    run = runs("WMF")
    calls: list = []
    task, _, _ = _one_user_task(run, calls)
    k = 3
    row_shard = RecEraser(shards=k, partition_by=partition_by).partition(task)
    users = run.data.train_ds.inter_feat[run.data.train_ds.uid_field].numpy()
    assert row_shard.shape == users.shape and set(np.unique(row_shard)) == set(range(k))
    if partition_by == "user":
        per_shard = [np.unique(users[row_shard == s]).size for s in range(k)]
        assert max(per_shard) <= math.ceil(np.unique(users).size / k)
        for user in np.unique(users)[:50]:
            assert np.unique(row_shard[users == user]).size == 1
    else:
        assert np.bincount(row_shard).max() <= math.ceil(users.size / k)


# ------------------------------------------------------------------------------ retrain_reseeded
def test_retrain_reseeded_is_retraining_with_another_seed(runs):
    """retrain_reseeded trains on the retained data with the run's seed + the offset: a model
    other than retrain's, which retrain (run after it) still reproduces; the run's seed is left
    as it was, and the same offset gives the same model again."""
    run = runs("WMF")
    seed = run.config["seed"]
    first = run.run_method("retrain", save=False)
    other = run.run_method("retrain_reseeded", save=False)
    assert run.config["seed"] == seed and other["seed"] == seed + 1
    assert _changed(first["_model"], other["_model"])
    again = run.run_method("retrain", save=False)
    assert not _changed(first["_model"], again["_model"])
    same = run.run_method("retrain_reseeded", save=False)
    assert not _changed(other["_model"], same["_model"])


@pytest.mark.parametrize("offset", [0, 1.5, True, "one"])
def test_retrain_reseeded_refuses_an_offset_that_is_not_another_seed(offset):
    with pytest.raises(UnrankError, match="unrank_reseed_offset"):
        METHODS["retrain_reseeded"](offset=offset)
