"""Measures beyond rank and the audit (recbole_unrank.evaluation): hand-made arrays with known
answers, then the tiny dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recbole_unrank.evaluation import audit, measures


# ------------------------------------------------------------------ per-user utility
def test_per_user_ndcg_recall_by_hand():
    n_items = 10
    # user 1: positives at ranks 1 and 3 ; user 2: one positive at rank 12 (outside k=10)
    keys = np.array([1 * n_items + 4, 1 * n_items + 5, 2 * n_items + 7])
    ranks = np.array([1, 3, 12])
    users, ndcg, recall = measures.per_user_ndcg_recall(keys, ranks, n_items, k=10)
    assert users.tolist() == [1, 2]
    idcg = 1 + 1 / math.log2(3)
    assert ndcg[0] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
    assert ndcg[1] == 0.0
    assert recall.tolist() == [1.0, 0.0]
    # k cuts the ideal list too: 3 positives, k = 2, ranks 1 and 2 -> NDCG 1, recall 2/3
    users, ndcg, recall = measures.per_user_ndcg_recall([3, 4, 5], [1, 2, 9], n_items, k=2)
    assert ndcg.tolist() == [pytest.approx(1.0)] and recall.tolist() == [pytest.approx(2 / 3)]


def test_group_mean_and_active_users():
    users = np.array([1, 2, 3, 4])
    vals = np.array([0.1, 0.2, 0.3, 0.4])
    assert measures.group_mean(users, vals, [2, 4, 9]) == pytest.approx(0.3)
    assert measures.group_mean(users, vals, [9]) is None
    train_users = np.array([1, 1, 1, 2, 2, 3, 4, 5, 5, 5, 5])  # 5 users -> top 20% is 1 user
    assert measures.active_users(train_users).tolist() == [5]
    assert measures.active_users(train_users, share=0.4).tolist() == [1, 5]


# ------------------------------------------------------------------ retrain agreement
def test_retrain_agreement_by_hand():
    retrain = np.array([10, 20, 30, 40])
    same = measures.retrain_agreement(retrain, retrain)
    assert same == {"retrain_spearman": pytest.approx(1.0), "over_unlearned": 0.0, "under_unlearned": 0.0}
    moved = measures.retrain_agreement(np.array([25, 20, 10, 90]), retrain)
    # 25 > 2*10 over; 10 < 30/2 under; 90 > 2*40 over
    assert moved["over_unlearned"] == pytest.approx(0.5)
    assert moved["under_unlearned"] == pytest.approx(0.25)
    assert measures.retrain_agreement(np.array([4, 3, 2, 1]), retrain)["retrain_spearman"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        measures.retrain_agreement([1, 2], [1])


# ------------------------------------------------------------------ AUC and the audit
def test_auc_identical_is_half_and_separable_is_one():
    x = np.arange(50.0)
    assert audit.auc(x, x) == pytest.approx(0.5)
    assert audit.auc(x + 100, x) == pytest.approx(1.0)
    assert audit.auc(x, x + 100) == pytest.approx(0.0)
    assert audit.auc([1, 2], [1.5]) == pytest.approx(0.5)


@pytest.mark.parametrize("tied", [False, True])
def test_auc_agrees_with_sklearn_roc_auc(tied):
    # roc_auc_score counts a tied (positive, negative) pair one half, as auc must; integer
    # scores from a range of 6 give many ties, uniform floats none. Both are sums of halves
    # divided by n_pos * n_neg (float64), so 1e-12 leaves room only for the division.
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    for n_pos, n_neg in [(1, 1), (3, 40), (57, 23), (200, 300)]:
        if tied:
            pos, neg = rng.integers(0, 6, n_pos).astype(float), rng.integers(1, 7, n_neg).astype(float)
        else:
            pos, neg = rng.normal(0.3, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)
        labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        if tied and n_pos > 1:  # the arrays must really hold ties between the two sides
            assert np.intersect1d(pos, neg).size
        assert audit.auc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)
    # all tied: one half, whatever the sizes
    assert audit.auc(np.ones(4), np.ones(9)) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError):
        audit.auc([], [1.0])


def test_one_auc_the_stream_and_old_names_use_it():
    from recbole_unrank import measures as old_measures
    from recbole_unrank import metrics as old_metrics
    from recbole_unrank.evaluation import metrics
    from recbole_unrank.stream import score_auc

    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 4, 30).astype(float), rng.integers(0, 4, 50).astype(float)
    assert score_auc(pos, neg) == audit.auc(pos, neg)  # the same function's result, to the bit
    assert old_measures.auc is audit.auc and old_measures.retrain_agreement is measures.retrain_agreement
    assert old_metrics.evaluate_loader is metrics.evaluate_loader


def test_mia_audit_known_answers():
    rng = np.random.default_rng(0)
    members = rng.normal(1.0, 1.0, size=(500, 3))
    non_members = rng.normal(-1.0, 1.0, size=(500, 3))
    attack = audit.fit_attack(members, non_members)
    same = rng.normal(0.0, 1.0, size=(2000, 3))
    # identical distributions of forget and test features: about 0.5
    assert audit.mia_audit(attack, same[:1000], same[1000:]) == pytest.approx(0.5, abs=0.05)
    # forget pairs look like members, test pairs like non-members, and far apart: 1.0
    assert audit.mia_audit(attack, members + 10, non_members - 10) == pytest.approx(1.0)
    assert audit.mia_audit(attack, non_members - 10, members + 10) == pytest.approx(0.0)


def test_pair_features_rank_skips_history_and_the_pair_itself():
    scores = np.array([[0.0, 5.0, 4.0, 3.0, 2.0]])
    history = np.array([[True, True, False, False, False]])  # item 1 is retained history
    feats = audit.pair_features(scores, history, [0, 0, 0], [3, 1, 2])
    # item 3 (3.0): only item 2 (4.0) competes above it -> rank 2; item 1 (5.0, in history): 1
    assert np.exp(feats[:, 1]).round().tolist() == [2.0, 1.0, 1.0]
    assert feats[:, 0].tolist() == [3.0, 5.0, 4.0]
    mean, std = 3.0, math.sqrt(2 / 3)  # over the open items 2, 3, 4
    assert feats[0, 2] == pytest.approx(0.0)
    assert feats[1, 2] == pytest.approx((5.0 - mean) / std)


def test_equal_sample():
    rng = np.random.default_rng(0)
    a, b = audit.equal_sample(5, 3, rng)
    assert a.size == b.size == 3 and b.tolist() == [0, 1, 2] and len(set(a.tolist())) == 3


# ------------------------------------------------------------------ on the tiny dataset
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import make_tiny_config

    from recbole_unrank.pipeline import run_pipeline

    work = tmp_path_factory.mktemp("measures")
    cfg = make_tiny_config(work, "WMF", epochs=20, unrank_methods="[retrain,l2unrank]",
                           unrank_request_seed=7)
    return run_pipeline(cfg)


def test_request_users_and_fairness_come_from_the_same_test_ranks(tiny_run):
    run = tiny_run
    _, _, test_loader = run.loaders
    from recbole_unrank.evaluation import metrics as um

    res, pairs = um.evaluate_loader(run.original, test_loader, ["NDCG", "Recall"], [10], ties="against_pair")
    users, ndcg, recall = measures.per_user_ndcg_recall(pairs["keys"], pairs["ranks"],
                                                       run.data.train_ds.item_num, 10)
    # the per-user values average to RecBole's own NDCG@10 / Recall@10 (4 decimals)
    assert ndcg.mean() == pytest.approx(res["ndcg@10"], abs=6e-5)
    assert recall.mean() == pytest.approx(res["recall@10"], abs=6e-5)
    original = run.rows[0]
    req = np.unique(run.request.users)
    assert original["request_users"]["ndcg@10"] == pytest.approx(ndcg[np.isin(users, req)].mean())
    # fairness of a changed model against a hand computation: tests/test_evaluator.py


def test_a_model_scoring_every_item_alike_gets_no_credit(tiny_run):
    # a collapsed model (every score equal, as a saturated sigmoid gives) ranks every test item
    # below its ties and every forgotten item above them: neither utility nor forgetting
    import copy

    model = copy.deepcopy(tiny_run.original)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    row, _ = tiny_run.evaluate(model, "constant", 0.0)
    assert row["request_users"]["ndcg@10"] == 0.0 and row["request_users"]["recall@10"] == 0.0
    assert row["fairness"]["active_ndcg@10_delta"] < 0 and row["fairness"]["inactive_ndcg@10_delta"] < 0
    assert row["forget"]["forget_hit@10"] == 1.0


def test_audit_original_above_retrain_and_every_row_audited(tiny_run):
    rows = {r["method"]: r for r in tiny_run.rows}
    for row in rows.values():
        assert set(row["audit"]) >= {"mia_auc", "score_auc", "retrain_spearman",
                                     "over_unlearned", "under_unlearned"}
        assert "_probe" not in row
    assert rows["original"]["audit"]["mia_auc"] > rows["retrain"]["audit"]["mia_auc"]


def test_retrain_agreement_of_a_method_matches_its_ranks(tiny_run):
    """l2unrank's agreement with retrain, recomputed from the forget ranks the run wrote
    (scipy's Spearman; the over / under shares by hand), and not trivially perfect."""
    import csv
    import os

    from scipy.stats import spearmanr

    with open(os.path.join(tiny_run.run_dir, "ranks.csv"), encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    method = np.array([float(r["rank_l2unrank"]) for r in table])
    retrain = np.array([float(r["rank_retrain"]) for r in table])
    audit = {r["method"]: r for r in tiny_run.rows}["l2unrank"]["audit"]
    assert not np.array_equal(method, retrain)
    assert audit["retrain_spearman"] == pytest.approx(spearmanr(method, retrain).statistic, abs=1e-12)
    assert audit["retrain_spearman"] < 1 - 1e-6
    assert audit["over_unlearned"] == pytest.approx(np.mean(method > 2 * retrain), abs=1e-12)
    assert audit["under_unlearned"] == pytest.approx(np.mean(method < retrain / 2), abs=1e-12)


def test_ranks_csv_and_results_carry_the_new_measures(tiny_run):
    import csv
    import json
    import os

    d = tiny_run.run_dir
    with open(os.path.join(d, "ranks.csv"), encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0][2:] == ["rank_original", "rank_retrain", "rank_l2unrank"]
    assert len(table) - 1 == len(tiny_run.request)
    record = json.load(open(os.path.join(d, "results.json"), encoding="utf-8"))
    assert record["request_seed"] == 7
    for row in record["rows"]:
        assert {"request_users", "audit", "fairness"} <= set(row)
