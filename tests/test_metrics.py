"""Tests of recbole_unrank.evaluation.metrics: pure measures, RecBole registration, collector, masking."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import DATA_PATH as _DATA_PATH
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.interaction import Interaction
from recbole.evaluator import Evaluator, metric_types, smaller_metrics
from recbole.model.general_recommender import BPR
from recbole.sampler import Sampler

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.config import UnrankConfig
from recbole_unrank.evaluation import metrics as M

DATA_PATH = str(_DATA_PATH)

INF = float("inf")


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_argv():
    saved = sys.argv
    sys.argv = [saved[0]]
    try:
        yield
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, clean_argv):
    """Tiny dataset, a forget request (2 train pairs of each of the first 12 users) and loaders."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    config = UnrankConfig(
        "BPR",
        "tiny",
        config_dict={
            "data_path": str(DATA_PATH),
            "gpu_id": "",
            "checkpoint_dir": str(ckpt),
            "show_progress": False,
            "seed": 2020,
        },
    )
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    train_ds = train._dataset
    uid, iid = train_ds.uid_field, train_ds.iid_field
    users = train_ds.inter_feat[uid].numpy()
    forget_mask = np.zeros(len(users), dtype=bool)
    for u in np.unique(users)[:12]:
        forget_mask[np.flatnonzero(users == u)[:2]] = True
    idx_forget = torch.from_numpy(np.flatnonzero(forget_mask))
    idx_keep = torch.from_numpy(np.flatnonzero(~forget_mask))
    retain_ds = train_ds.copy(train_ds.inter_feat[idx_keep])
    forget_ds = train_ds.copy(train_ds.inter_feat[idx_forget])
    sampler = Sampler(["retain", "forget"], [retain_ds, forget_ds], distribution="uniform")
    forget_loader = FullSortEvalDataLoader(config, forget_ds, sampler.set_phase("forget"))
    return {
        "config": config,
        "train_ds": train_ds,
        "retain_ds": retain_ds,
        "forget_ds": forget_ds,
        "forget_loader": forget_loader,
        "test": test,
        "uid": uid,
        "iid": iid,
    }


def _controlled_bpr(tiny, best_item: int) -> BPR:
    """BPR whose every user scores items by a fixed order, ``best_item`` first."""
    model = BPR(tiny["config"], tiny["train_ds"])
    n_items = tiny["train_ds"].item_num
    dim = model.user_embedding.weight.shape[1]
    with torch.no_grad():
        model.user_embedding.weight.zero_()
        model.user_embedding.weight[:, 0] = 1.0
        model.item_embedding.weight.zero_()
        model.item_embedding.weight[:, 0] = torch.linspace(0.0, 1.0, n_items)  # distinct scores
        model.item_embedding.weight[best_item, 0] = 10.0
    assert dim >= 1
    return model


# ------------------------------------------------------------------------------------------
# pure measures
# ------------------------------------------------------------------------------------------


def test_pair_ranks_hand_made_with_ties():
    scores = torch.tensor(
        [
            [-INF, 3.0, 2.0, 2.0, 1.0],
            [-INF, 0.5, 0.5, 0.5, -INF],
        ]
    )
    rows = torch.tensor([0, 0, 0, 0, 1, 1])
    cols = torch.tensor([1, 2, 3, 4, 2, 4])
    ranks = M.pair_ranks(scores, rows, cols)
    assert ranks.dtype == torch.int64
    # ties share the better rank (strictly greater rule); -inf counts nothing above itself
    # except the finite scores.
    assert ranks.tolist() == [1, 2, 2, 4, 1, 4]


def test_pair_ranks_ties_against_the_pair():
    scores = torch.tensor(
        [
            [-INF, 3.0, 2.0, 2.0, 1.0],
            [-INF, 0.5, 0.5, 0.5, -INF],
        ]
    )
    rows = torch.tensor([0, 0, 0, 0, 1])
    cols = torch.tensor([1, 2, 3, 4, 2])
    # a tie puts the pair below the items it ties with; without ties both rules agree
    assert M.pair_ranks(scores, rows, cols, "against_pair").tolist() == [1, 3, 3, 4, 3]
    assert M.pair_ranks(scores, rows, cols, "for_pair").tolist() == [1, 2, 2, 4, 1]
    free = torch.tensor([[-INF, 0.1, 0.7, 0.3]])
    r, c = torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3])
    assert M.pair_ranks(free, r, c, "against_pair").tolist() == M.pair_ranks(free, r, c).tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="ties"):
        M.pair_ranks(scores, rows, cols, "random")


def test_pair_ranks_empty_and_blocked(monkeypatch):
    scores = torch.randn(3, 7)
    out = M.pair_ranks(scores, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert out.shape == (0,) and out.dtype == torch.int64
    rows = torch.tensor([0, 1, 2, 2, 1])
    cols = torch.tensor([3, 0, 6, 1, 5])
    full = M.pair_ranks(scores, rows, cols)
    monkeypatch.setattr(M, "_PAIR_BLOCK_ELEMS", 7)  # one pair per block
    assert torch.equal(M.pair_ranks(scores, rows, cols), full)
    expected = [1 + int((scores[r] > scores[r, c]).sum()) for r, c in zip(rows, cols)]
    assert full.tolist() == expected


def test_forget_hit_and_mean_rank():
    ranks = np.array([1, 10, 11, 20])
    assert M.forget_hit(ranks, 10) == 0.5
    assert M.forget_hit(ranks, 1) == 0.25
    assert M.forget_hit(ranks, 20) == 1.0
    assert M.mean_rank(ranks) == 10.5
    assert M.forget_hit(torch.tensor([3]), 3) == 1.0  # single pair, boundary inclusive
    assert M.mean_rank([7]) == 7.0
    assert isinstance(M.forget_hit(ranks, 10), float)


def test_rank_decrease_and_decline_ratio():
    before = np.array([1, 5, 5, 10])
    after = np.array([4, 5, 3, 20])  # deltas 3, 0 (tie: not a decline), -2, 10
    assert M.rank_decrease(after, before) == pytest.approx(11 / 4)
    assert M.rank_decline_ratio(after, before) == 0.5
    assert M.rank_decrease([6], [2]) == 4.0
    assert M.rank_decline_ratio([2], [2]) == 0.0
    with pytest.raises(ValueError):
        M.rank_decrease([1, 2], [1])


def test_urr_iqr_drops_outlier():
    before = np.ones(5)
    after = np.array([3, 3, 5, 1, 101])
    # ratio = delta / (before + 1) = [1, 1, 2, 0, 50]; Q1 = 1, Q3 = 2, IQR = 1
    # kept: ratio in [-0.5, 3.5] -> [1, 1, 2, 0]; mean 1.0; share(delta > 0) = 3/4
    assert M.urr(after, before) == pytest.approx(0.75)
    # without the outlier, nothing is dropped and the value is the same
    assert M.urr(after[:4], before[:4]) == pytest.approx(0.75)
    # the filter is on the ratio, not on delta: a big delta with a big before is kept
    before2 = np.array([1, 1, 1, 1, 999])
    after2 = np.array([3, 5, 7, 1, 2999])  # deltas [2, 4, 6, 0, 2000], ratios [1, 2, 3, 0, 2]
    # Q1 = 1, Q3 = 2: all ratios kept -> mean 8/5, share(delta > 0) 4/5
    assert M.urr(after2, before2) == pytest.approx((8 / 5) * (4 / 5))


def test_urr_single_pair_and_no_change():
    assert M.urr([5], [1]) == pytest.approx(2.0)  # ratio 4/2, kept, declined
    assert M.urr([1, 2, 3], [1, 2, 3]) == 0.0


@pytest.mark.parametrize(
    "fn",
    [
        lambda: M.forget_hit([], 10),
        lambda: M.mean_rank(np.array([])),
        lambda: M.rank_decrease([], []),
        lambda: M.rank_decline_ratio([], []),
        lambda: M.urr([], []),
    ],
)
def test_empty_input_is_zero(fn):
    assert fn() == 0.0


# ------------------------------------------------------------------------------------------
# registration, collector and RecBole's Evaluator
# ------------------------------------------------------------------------------------------


def test_register_is_idempotent():
    M.register_metrics()
    M.register_metrics()
    for name in M.UNRANK_METRICS:
        assert name in metric_types
    assert smaller_metrics.count("forget_hit") == 1
    assert "mean_rank" not in smaller_metrics  # a larger rank is better forgetting
    assert "rdr" not in smaller_metrics and "urr" not in smaller_metrics


def test_config_accepts_metrics_and_evaluator_returns_keys(tmp_path, clean_argv):
    config = Config(
        "BPR",
        "tiny",
        config_dict={
            "data_path": str(DATA_PATH),
            "gpu_id": "",
            "checkpoint_dir": str(tmp_path),
            "metrics": ["forget_hit", "mean_rank", "NDCG", "forget_ndcg", "forget_recall"],
            "topk": [1, 10],
            "valid_metric": "forget_hit@10",
        },
    )
    assert config["valid_metric_bigger"] is False

    collector = M.UnrankCollector(config)
    assert collector.collect_pair_ranks
    n_items = 12  # at least max(topk): RecBole's rec.topk takes torch.topk(scores, 10)
    scores = torch.full((2, n_items), -INF)
    scores[0, 1:5] = torch.tensor([0.9, 0.1, 0.5, 0.3])
    scores[1, 1:4] = torch.tensor([0.2, 0.2, 0.8])
    inter = Interaction({config["USER_ID_FIELD"]: torch.tensor([7, 3])})
    pos_u = torch.tensor([0, 0, 1])
    pos_i = torch.tensor([1, 2, 2])
    collector.eval_batch_collect(scores, inter, pos_u, pos_i)
    struct = collector.get_data_struct()
    assert struct.get(M.PAIR_RANK).tolist() == [1, 4, 2]
    assert struct.get(M.PAIR_KEY).tolist() == [7 * n_items + 1, 7 * n_items + 2, 3 * n_items + 2]

    result = Evaluator(config).evaluate(struct)
    assert result["forget_hit@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["forget_hit@10"] == 1.0
    assert result["mean_rank"] == pytest.approx(7 / 3, abs=1e-4)
    assert "ndcg@10" in result
    # forget_ndcg by hand: user 7 has items 1 and 2 at ranks 1 and 4, user 3 item 2 behind item 3
    assert result["forget_ndcg@1"] == pytest.approx((1.0 + 0.0) / 2, abs=1e-4)
    assert "forget_recall@1" in result

    # the collector clears its per-evaluation entries, like RecBole's
    assert M.PAIR_RANK not in collector.data_struct
    empty = collector.get_data_struct()
    assert empty.get(M.PAIR_RANK).numel() == 0


def test_reference_metrics_need_reference(tmp_path, clean_argv):
    config = Config(
        "BPR",
        "tiny",
        config_dict={
            "data_path": str(DATA_PATH),
            "gpu_id": "",
            "checkpoint_dir": str(tmp_path),
            "metrics": ["rdr", "urr", "rank_decline_ratio"],
        },
    )
    scores = torch.tensor([[-INF, 0.9, 0.1, 0.5]])
    inter = Interaction({config["USER_ID_FIELD"]: torch.tensor([2])})
    pos_u, pos_i = torch.tensor([0, 0]), torch.tensor([1, 2])

    collector = M.UnrankCollector(config)
    collector.eval_batch_collect(scores, inter, pos_u, pos_i)
    with pytest.raises(ValueError, match="reference model"):
        Evaluator(config).evaluate(collector.get_data_struct())

    # reference given in another order: aligned by key
    ref = (np.array([2 * 4 + 2, 2 * 4 + 1]), np.array([1, 1]))  # ranks now: item1 -> 1, item2 -> 3
    collector = M.UnrankCollector(config, reference=ref)
    collector.eval_batch_collect(scores, inter, pos_u, pos_i)
    struct = collector.get_data_struct()
    assert struct.get(M.REF_RANK).tolist() == [1, 1]
    result = Evaluator(config).evaluate(struct)
    assert result["rdr"] == 1.0
    assert result["rank_decline_ratio"] == 0.5

    collector = M.UnrankCollector(config, reference=(np.array([2 * 4 + 1]), np.array([1])))
    collector.eval_batch_collect(scores, inter, pos_u, pos_i)
    with pytest.raises(ValueError, match="miss 1 of the 2"):
        collector.get_data_struct()


# ------------------------------------------------------------------------------------------
# evaluate_loader on real RecBole loaders
# ------------------------------------------------------------------------------------------


def test_forget_loader_masks_only_retained_history(tiny):
    loader = tiny["forget_loader"]
    uid, iid = tiny["uid"], tiny["iid"]
    retain, forget = tiny["retain_ds"].inter_feat, tiny["forget_ds"].inter_feat
    u = int(forget[uid][0])
    i = int(forget[iid][forget[uid] == u][0])
    retained_u = set(retain[iid][retain[uid] == u].tolist())
    assert set(loader.uid2history_item[u].tolist()) == retained_u
    assert i not in retained_u

    model = _controlled_bpr(tiny, best_item=i)
    n_items = tiny["train_ds"].item_num
    results, pairs = M.evaluate_loader(
        model, loader, ["forget_hit", "mean_rank", "ndcg"], [1, 10]
    )
    key = u * n_items + i
    assert key in set(pairs["keys"].tolist())
    assert pairs["ranks"][pairs["keys"] == key][0] == 1
    assert set(pairs["keys"].tolist()) == set((forget[uid] * n_items + forget[iid]).tolist())
    assert all(isinstance(v, float) for v in results.values())
    assert set(results) == {"forget_hit@1", "forget_hit@10", "mean_rank", "ndcg@1", "ndcg@10"}

    # RecBole's usual test loader masks the whole train history, forgotten pair included:
    test = tiny["test"]
    assert i in set(test.uid2history_item[u].tolist())
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({uid: torch.tensor([u])})).view(1, -1)
    scores[:, 0] = -INF
    scores[0, test.uid2history_item[u]] = -INF
    masked_rank = int(M.pair_ranks(scores, torch.tensor([0]), torch.tensor([i]))[0])
    assert masked_rank > 10


def test_forget_ndcg_and_recall_by_hand_without_ties(tmp_path, clean_argv):
    """``forget_ndcg@K`` / ``forget_recall@K`` on a hand-made ranking (no ties): user 0 ranks
    its forget items 1st and 4th, user 1 ranks its one forget item 2nd.
    NDCG@10 = mean(( 1 + 1/log2 5) / (1 + 1/log2 3), (1/log2 3) / 1); NDCG@1 = mean(1, 0)."""
    config = Config("BPR", "tiny", config_dict={
        "data_path": DATA_PATH, "gpu_id": "", "checkpoint_dir": str(tmp_path),
        "metrics": ["forget_ndcg", "forget_recall"], "topk": [1, 10], "valid_metric": "forget_ndcg@10"})
    collector = M.UnrankCollector(config)
    scores = torch.full((2, 12), -INF)
    scores[0, 1:5] = torch.tensor([0.9, 0.1, 0.5, 0.3])
    scores[1, 1:4] = torch.tensor([0.2, 0.5, 0.8])
    inter = Interaction({config["USER_ID_FIELD"]: torch.tensor([7, 3])})
    collector.eval_batch_collect(scores, inter, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]))
    result = Evaluator(config).evaluate(collector.get_data_struct())
    log2 = np.log2
    ndcg10 = ((1 + 1 / log2(5)) / (1 + 1 / log2(3)) + 1 / log2(3)) / 2
    assert result["forget_ndcg@10"] == pytest.approx(ndcg10, abs=1e-4)
    assert result["forget_ndcg@1"] == pytest.approx(0.5, abs=1e-4)
    assert result["forget_recall@1"] == pytest.approx((1 / 2 + 0) / 2, abs=1e-4)
    assert result["forget_recall@10"] == pytest.approx(1.0, abs=1e-4)


def test_forget_ndcg_recall_on_the_forget_loader_by_numpy(tiny):
    """On the forget loader: every forget user's ranking recomputed with numpy from the model's
    scores, the user's retained items masked (RecBole's full-sort history), item 0 excluded."""
    model = _controlled_bpr(tiny, best_item=3)
    results, _ = M.evaluate_loader(model, tiny["forget_loader"], ["forget_ndcg", "forget_recall"], [5, 10])
    uid, iid = tiny["uid"], tiny["iid"]
    with torch.no_grad():
        score = (model.user_embedding.weight[:1] @ model.item_embedding.weight.T).view(-1).numpy()  # same for all
    retain_u = tiny["retain_ds"].inter_feat[uid].numpy()
    retain_i = tiny["retain_ds"].inter_feat[iid].numpy()
    forget_u = tiny["forget_ds"].inter_feat[uid].numpy()
    forget_i = tiny["forget_ds"].inter_feat[iid].numpy()
    for k in (5, 10):
        ndcg, recall = [], []
        for u in np.unique(forget_u):
            pos = set(forget_i[forget_u == u].tolist())
            history = set(retain_i[retain_u == u].tolist()) - pos
            candidates = [j for j in range(1, score.size) if j not in history]
            order = sorted(candidates, key=lambda j: -score[j])
            ranks = [order.index(p) + 1 for p in pos]
            dcg = sum(1 / np.log2(r + 1) for r in ranks if r <= k)
            idcg = sum(1 / np.log2(j + 1) for j in range(1, min(len(pos), k) + 1))
            ndcg.append(dcg / idcg)
            recall.append(sum(r <= k for r in ranks) / len(pos))
        assert 0 < np.mean(ndcg) < 1
        assert results[f"forget_ndcg@{k}"] == pytest.approx(np.mean(ndcg), abs=1e-4)
        assert results[f"forget_recall@{k}"] == pytest.approx(np.mean(recall), abs=1e-4)


def test_reference_run_gives_zero_change(tiny):
    torch.manual_seed(0)
    model = BPR(tiny["config"], tiny["train_ds"])
    loader = tiny["forget_loader"]
    metrics = ["forget_hit", "mean_rank", "rdr", "urr", "rank_decline_ratio"]
    with pytest.raises(ValueError, match="reference"):
        M.evaluate_loader(model, loader, metrics, [10])
    first, pairs = M.evaluate_loader(model, loader, ["forget_hit", "mean_rank"], [10])
    second, pairs2 = M.evaluate_loader(model, loader, metrics, [10], reference=pairs)
    assert second["rdr"] == 0.0
    assert second["rank_decline_ratio"] == 0.0
    assert second["urr"] == 0.0
    assert second["mean_rank"] == first["mean_rank"]
    np.testing.assert_array_equal(pairs["keys"], pairs2["keys"])
    # the returned dict is accepted as a reference too, and a changed model moves ranks
    with torch.no_grad():
        model.item_embedding.weight.mul_(-1.0)
    third, _ = M.evaluate_loader(model, loader, metrics, [10], reference=pairs)
    assert third["rank_decline_ratio"] > 0.0


def test_predict_fallback_matches_full_sort(tiny):
    class NoFullSort(BPR):
        def full_sort_predict(self, interaction):
            raise NotImplementedError

    torch.manual_seed(1)
    model = BPR(tiny["config"], tiny["train_ds"])
    fallback = NoFullSort(tiny["config"], tiny["train_ds"])
    fallback.load_state_dict(model.state_dict())
    loader = tiny["forget_loader"]
    a, pa = M.evaluate_loader(model, loader, ["forget_hit", "ndcg"], [10])
    b, pb = M.evaluate_loader(fallback, loader, ["forget_hit", "ndcg"], [10])
    # two code paths (one matmul, per-pair dot products): the same values up to rounding
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a)
    np.testing.assert_array_equal(pa["ranks"], pb["ranks"])

    # chunked predict gives the same scores as one call
    uid = tiny["uid"]
    inter = Interaction({uid: torch.tensor([1, 2, 5])})
    items = tiny["train_ds"].get_item_feature()
    n_items = tiny["train_ds"].item_num
    with torch.no_grad():
        chunked = M.predict_all_items(model, inter, items, n_items, chunk=7)
        whole = model.full_sort_predict(inter)
    torch.testing.assert_close(chunked, whole)


def test_evaluate_loader_rejects_unknown_or_value_metrics(tiny):
    model = BPR(tiny["config"], tiny["train_ds"])
    with pytest.raises(ValueError, match="Unknown metric"):
        M.evaluate_loader(model, tiny["forget_loader"], ["nope"], [10])
    with pytest.raises(ValueError, match="ranking"):
        M.evaluate_loader(model, tiny["forget_loader"], ["auc"], [10])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pair_ranks_stays_on_cuda():
    scores = torch.randn(4, 50, device="cuda")
    rows = torch.tensor([0, 1, 3], device="cuda")
    cols = torch.tensor([2, 40, 7], device="cuda")
    ranks = M.pair_ranks(scores, rows, cols)
    assert ranks.device.type == "cuda"
    assert torch.equal(ranks.cpu(), M.pair_ranks(scores.cpu(), rows.cpu(), cols.cpu()))
