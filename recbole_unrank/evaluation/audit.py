"""The membership-inference audit (DESIGN.md section 9): what a privacy reviewer checks.

An attack is fitted on the *retrained* model to separate members (retained train pairs) from
non-members (test pairs) from the model's own outputs (score, log rank, the score normalised
within the user's row: :func:`pair_features`); under the model being judged, the audit is the
attack's AUC on the forget pairs against an equal number of the same users' test pairs
(:func:`mia_audit`). Retraining gives about 0.5, a model that still holds the data more, an
over-unlearned one less. :func:`auc` of the raw score alone is ``score_auc`` (no fitting).

:func:`auc` is the package's one AUC (ties count one half); :class:`Auditor` computes the
features of any model on one request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["auc", "pair_features", "fit_attack", "mia_audit", "equal_sample", "Auditor", "AuditProbe"]


def auc(positive, negative) -> float:
    """AUC of telling ``positive`` from ``negative`` scores (ties count 1/2): the probability
    that a random positive scores above a random negative."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=np.float64).reshape(-1)
    neg = np.asarray(negative, dtype=np.float64).reshape(-1)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    r = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    return float((r[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def pair_features(scores: np.ndarray, history: np.ndarray, rows, cols) -> np.ndarray:
    """Attack features of pairs ``(rows[p], cols[p])`` from a users x items score block.

    ``history`` (same shape, bool) marks the items that do not compete (the user's retained
    train items); the rank of a pair is ``1 + #{j not in history, j != i : s_uj > s_ui}``, as
    for the forget ranks. Features: raw score, ``log(rank)``, and the score normalised within
    the user's row (mean and std over the row's competing items).
    """
    scores = np.asarray(scores, dtype=np.float64)
    history = np.asarray(history, dtype=bool)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    own = scores[rows, cols]
    competing = np.where(history, -np.inf, scores)
    rank = np.empty(rows.size)
    for r in np.unique(rows):
        sel = rows == r
        row = competing[r]
        # items that beat the pair, not counting the pair itself (it may be in the history)
        rank[sel] = 1 + (row[None, :] > own[sel, None]).sum(axis=1)
    open_ = ~history
    n = np.maximum(open_.sum(axis=1), 1)
    mean = np.where(open_, scores, 0.0).sum(axis=1) / n
    var = np.where(open_, (scores - mean[:, None]) ** 2, 0.0).sum(axis=1) / n
    std = np.sqrt(np.maximum(var, 1e-24))
    z = (own - mean[rows]) / std[rows]
    return np.stack([own, np.log(rank), z], axis=1)


def fit_attack(members: np.ndarray, non_members: np.ndarray, seed: int = 0):
    """A logistic-regression attack (scikit-learn, standardised features) that tells member
    features from non-member ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([members, non_members])
    y = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(x, y)
    return model


def mia_audit(attack, forget_features: np.ndarray, test_features: np.ndarray) -> float:
    """AUC of ``attack`` (fitted on the retrained model) on the forget pairs against test pairs
    under the model being judged."""
    p_forget = attack.predict_proba(forget_features)[:, 1]
    p_test = attack.predict_proba(test_features)[:, 1]
    return auc(p_forget, p_test)


def equal_sample(n_a: int, n_b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of an equal number ``min(n_a, n_b)`` of a's and b's items, drawn without
    replacement."""
    n = min(n_a, n_b)
    a = np.sort(rng.choice(n_a, size=n, replace=False)) if n < n_a else np.arange(n_a)
    b = np.sort(rng.choice(n_b, size=n, replace=False)) if n < n_b else np.arange(n_b)
    return a, b


# --------------------------------------------------------------------------- from a model
@dataclass
class AuditProbe:
    """A model's attack features: forget pairs, the request users' test pairs (equal number),
    and, for the retrained model, member / non-member samples to fit the attack on."""

    forget: np.ndarray
    test: np.ndarray
    members: np.ndarray | None = None
    non_members: np.ndarray | None = None


def _pairs_of(ds) -> tuple[np.ndarray, np.ndarray]:
    feat = ds.inter_feat
    return feat[ds.uid_field].numpy().astype(np.int64), feat[ds.iid_field].numpy().astype(np.int64)


class Auditor:
    """Computes :class:`AuditProbe` features for any model on one request.

    The pair samples are drawn once (seeded), so every model is judged on the same pairs.

    Args:
        retain_ds, forget_ds, test_ds: RecBole datasets (same ids) of the retained train
            interactions, the request and the test split.
        seed: seed of the samples.
        n_attack: member and non-member pairs drawn to fit the attack (each).
        score_users: a callable ``(model, users) -> [len(users), n_items]`` score tensor.
    """

    def __init__(self, retain_ds, forget_ds, test_ds, score_users, seed: int = 0, n_attack: int = 4000):
        rng = np.random.default_rng(seed)
        self.n_items = int(retain_ds.item_num)
        self.score_users = score_users
        self._histories: dict = {}
        ru, ri = _pairs_of(retain_ds)
        fu, fi = _pairs_of(forget_ds)
        tu, ti = _pairs_of(test_ds)
        self.retained = (ru, ri)
        req = np.unique(fu)
        in_req = np.isin(tu, req)
        tf, tt = equal_sample(fu.size, int(in_req.sum()), rng)
        self.forget_pairs = (fu[tf], fi[tf])
        self.test_pairs = (tu[in_req][tt], ti[in_req][tt])
        # attack pairs: members from the retained train set, non-members from the test set,
        # of users outside the request, so the request never shapes the attack
        m_pool = np.flatnonzero(~np.isin(ru, req))
        n_pool = np.flatnonzero(~in_req)
        m = rng.choice(m_pool, size=min(n_attack, m_pool.size), replace=False) if m_pool.size else m_pool
        n = rng.choice(n_pool, size=min(n_attack, n_pool.size), replace=False) if n_pool.size else n_pool
        self.member_pairs = (ru[m], ri[m])
        self.non_member_pairs = (tu[n], ti[n])

    def _history(self, users: np.ndarray) -> np.ndarray:
        """users x items mask of the users' retained train items (and the padding item),
        built once per set of users: every model is probed on the same pairs."""
        key = (users.size, users.tobytes())
        if key not in self._histories:
            ru, ri = self.retained
            keep = np.isin(ru, users)
            history = np.zeros((users.size, self.n_items), dtype=bool)
            history[np.searchsorted(users, ru[keep]), ri[keep]] = True
            history[:, 0] = True  # the padding item never competes
            self._histories[key] = history
        return self._histories[key]

    def _features(self, model, pair_sets):
        users = np.unique(np.concatenate([p[0] for p in pair_sets]))
        if users.size == 0:
            return [np.zeros((0, 3)) for _ in pair_sets]
        history = self._history(users)
        out = [[] for _ in pair_sets]
        block = max(1, (1 << 22) // max(1, self.n_items))
        for start in range(0, users.size, block):
            part = users[start : start + block]
            with torch.no_grad():
                scores = self.score_users(model, part)
            scores = scores.detach().double().cpu().numpy().reshape(part.size, self.n_items)
            hist = history[start : start + block]
            for k, (pu, pi) in enumerate(pair_sets):
                sel = (pu >= part[0]) & (pu <= part[-1])
                if not sel.any():
                    continue
                rows = np.searchsorted(part, pu[sel])
                out[k].append((np.flatnonzero(sel), pair_features(scores, hist, rows, pi[sel])))
        result = []
        for k, (pu, _) in enumerate(pair_sets):
            feats = np.zeros((pu.size, 3))
            for idx, f in out[k]:
                feats[idx] = f
            result.append(feats)
        return result

    def probe(self, model, with_attack_data: bool = False) -> AuditProbe:
        sets = [self.forget_pairs, self.test_pairs]
        if with_attack_data:
            sets += [self.member_pairs, self.non_member_pairs]
        feats = self._features(model, sets)
        return AuditProbe(feats[0], feats[1], *(feats[2:] if with_attack_data else []))

    @staticmethod
    def measures(probe: AuditProbe, attack=None) -> dict:
        """``score_auc`` always (when both pair sets are non-empty), ``mia_auc`` with an attack."""
        out: dict = {"score_auc": None, "mia_auc": None, "audit_pairs": int(len(probe.forget))}
        if len(probe.forget) and len(probe.test):
            out["score_auc"] = auc(probe.forget[:, 0], probe.test[:, 0])
            if attack is not None:
                out["mia_auc"] = mia_audit(attack, probe.forget, probe.test)
        return out
