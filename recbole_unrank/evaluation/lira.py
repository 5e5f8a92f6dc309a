"""A second membership audit whose power can be read: a per-pair likelihood-ratio attack (LiRA).

Carlini et al. 2022, "Membership Inference Attacks From First Principles", *offline* variant
(OUT shadows only), as the RULI / LiRA family audits unlearning. ``K`` shadow models
(``unrank_audit_shadows``) are trained with the run's recipe (the original's config, epoch
budget ``unrank_audit_shadow_epochs``) on the *retained* train split, each on its own random half
of the retained rows (seed derived from the request seed and ``k``: the shadows vary in their
data and their initialisation). Every pair the audit judges (the forgotten pairs and the same
users' test pairs that :class:`~recbole_unrank.evaluation.audit.Auditor` draws) is OUT of every
shadow by construction: forgotten and test rows are not in the retained split, and a retained
row that repeats one of those pairs is dropped from the shadows' pool. Retrain's own model is
not a shadow.

Per pair, the shadows' values give a Gaussian OUT distribution (mean over the K shadows; the
standard deviation per pair, or one global standard deviation when ``K`` is below
:data:`GLOBAL_VARIANCE_BELOW`, as the paper advises for few shadows). The statistic of a
judged model is the one-sided likelihood that its value lies above that distribution,
``Phi((x - mu) / sigma)`` (:func:`lira_statistic`): 0.5 at the OUT mean, near 1 far above it.
``lira_auc`` is the package's AUC (:func:`~recbole_unrank.evaluation.audit.auc`) of that statistic
between the forgotten pairs and the test pairs: near 0.5 for a model that never saw the
forgotten pairs (retrain), higher for one that still holds them (the original). The audit's
power on a request is the original's ``lira_auc`` minus retrain's.

The value per pair (:data:`STATISTIC`) is the model's raw *score* of the pair (for WMF / BPR
scores a dot product, already a logit-like confidence: the paper's ``log(p / (1 - p))`` scaling
is for softmax probabilities). The other candidate, the pair's rank log-odds within the user's
row (:func:`rank_logit`, scale-free, which would guard against the half-data shadows scoring on
another scale than a model trained on all the retained rows), was compared on the design request
seeds 101-103 (ml-100k WMF, 8 shadows; ``benchmarks/lira_design.py``, results in
``benchmarks/results/lira_check.md``): over the shadows the score's per-pair spread is the more
Gaussian of the two on every seed (Shapiro-Wilk rejects p < 0.05 on 7.8-9.8% of the pairs
against 10.4-12.1% for the rank log-odds; about 5% under an exact Gaussian), and retrain's
``lira_auc`` with it sits at 0.502-0.515, so the scale shift does not show there. The rank
log-odds gave the original 0.009-0.025 more ``lira_auc``; it stays available to
:class:`ShadowAudit` (``statistic="rank_logit"``) for comparison.

Cost: ``K`` trainings on half the retained data, once per request (a suite cell's request, a
run), plus one scoring of the audited users per model; nothing when ``unrank_audit_shadows`` is 0
(the default).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from recbole_unrank.errors import UnrankError
from recbole_unrank.request import take_rows

__all__ = ["GLOBAL_VARIANCE_BELOW", "STATISTIC", "lira_statistic", "lira_z", "rank_logit", "pair_values",
           "check_settings", "shadow_settings", "shadow_half", "ShadowAudit"]

logger = logging.getLogger("recbole_unrank")

# Carlini et al. 2022, section VI: with fewer than 64 shadows a global variance estimate beats
# per-example variances.
GLOBAL_VARIANCE_BELOW = 64
STATISTIC = "score"
_STATISTICS = ("score", "rank_logit")


# --------------------------------------------------------------------------- the statistic
def lira_z(target, shadows, global_variance: bool | None = None) -> np.ndarray:
    """Per-pair z-score of ``target`` (``[P]``, the judged model's values) against the OUT
    distribution of ``shadows`` (``[K, P]``): ``(x - mean_k) / std``. ``std`` is per pair
    (``ddof=1`` over the K shadows), or, with ``global_variance`` (None: ``K <
    GLOBAL_VARIANCE_BELOW``), the square root of the per-pair variances' mean, one value for all
    pairs. Needs ``K >= 2``."""
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    shadows = np.asarray(shadows, dtype=np.float64)
    if shadows.ndim != 2 or shadows.shape[1] != target.size:
        raise ValueError(f"shadows must be [K, {target.size}], got {shadows.shape}")
    k = shadows.shape[0]
    if k < 2:
        raise ValueError("LiRA needs at least 2 shadows to fit a variance")
    if global_variance is None:
        global_variance = k < GLOBAL_VARIANCE_BELOW
    mean = shadows.mean(axis=0)
    var = shadows.var(axis=0, ddof=1)
    if global_variance:
        var = np.full_like(var, var.mean())
    # a pair (or all of them) on which every shadow agrees exactly: floor the spread, so the
    # z-score stays finite and keeps its sign
    std = np.sqrt(np.maximum(var, 1e-24))
    return (target - mean) / std


def lira_statistic(target, shadows, global_variance: bool | None = None) -> np.ndarray:
    """One-sided likelihood that ``target`` lies above the shadows' OUT Gaussian, per pair:
    ``Phi(lira_z(...))`` in [0, 1] (0.5 at the OUT mean)."""
    from scipy.stats import norm

    return norm.cdf(lira_z(target, shadows, global_variance))


def rank_logit(log_rank, n_open) -> np.ndarray:
    """Rank log-odds of a pair: with ``q = (rank - 1/2) / n_open`` the pair's rank percentile
    among the user's ``n_open`` competing items (1 = the top), ``log((1 - q) / q)``: high for a
    pair the model ranks near the top, 0 at the middle of the row."""
    rank = np.exp(np.asarray(log_rank, dtype=np.float64))
    n = np.maximum(np.asarray(n_open, dtype=np.float64), 1.0)
    q = np.clip((rank - 0.5) / n, 0.5 / n, 1.0 - 0.5 / n)
    return np.log1p(-q) - np.log(q)


def pair_values(features: np.ndarray, n_open: np.ndarray, statistic: str = STATISTIC) -> np.ndarray:
    """The per-pair value LiRA fits from :func:`~recbole_unrank.evaluation.audit.pair_features`
    rows (score, log rank, row z): ``rank_logit`` or the raw ``score``."""
    features = np.asarray(features, dtype=np.float64)
    if statistic == "score":
        return features[:, 0]
    if statistic == "rank_logit":
        return rank_logit(features[:, 1], n_open)
    raise ValueError(f"statistic {statistic!r}: choose from {_STATISTICS}")


# --------------------------------------------------------------------------- the settings
def shadow_settings(config) -> tuple[int, int | None]:
    """``(K, epochs)`` of the shadows from ``unrank_audit_shadows`` and
    ``unrank_audit_shadow_epochs`` (None: the config's ``epochs``)."""
    k = config["unrank_audit_shadows"]
    epochs = config["unrank_audit_shadow_epochs"]
    return int(k or 0), (None if epochs is None else int(epochs))


def check_settings(config) -> None:
    """Refuse, with one line, a shadow count LiRA cannot use and a shadow epoch budget that
    would not act."""
    from recbole_unrank.config import given_as

    k = config["unrank_audit_shadows"]
    epochs = config["unrank_audit_shadow_epochs"]
    if k is None or k < 0 or k == 1:
        raise UnrankError(f"{given_as(config, 'unrank_audit_shadows')}: LiRA needs >= 2 shadow models to fit a "
                          "variance (0 turns the LiRA audit off)")
    if epochs is not None:
        if k == 0:
            raise UnrankError(f"{given_as(config, 'unrank_audit_shadow_epochs')} has no effect: no shadow "
                              "is trained (set unrank_audit_shadows >= 2 to run the LiRA audit)")
        if epochs < 1:
            raise UnrankError(f"{given_as(config, 'unrank_audit_shadow_epochs')}: a shadow needs at least 1 "
                              "epoch (None: the config's epochs)")


# --------------------------------------------------------------------------- the shadows
def _pair_keys(users, items, n_items: int) -> np.ndarray:
    return np.asarray(users, dtype=np.int64) * int(n_items) + np.asarray(items, dtype=np.int64)


def shadow_half(retain_users, retain_items, n_items: int, judged_pairs, seed: int, k: int) -> np.ndarray:
    """Row indices of shadow ``k``'s training data: a random half (seeded by ``(seed, k)``) of
    the retained rows whose pair is none of ``judged_pairs`` (a list of ``(users, items)``)."""
    keys = _pair_keys(retain_users, retain_items, n_items)
    judged = np.concatenate([_pair_keys(u, i, n_items) for u, i in judged_pairs]) if judged_pairs else np.zeros(0, np.int64)
    pool = np.flatnonzero(~np.isin(keys, judged))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(k)]))
    return np.sort(rng.choice(pool, size=pool.size // 2, replace=False))


def _training_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(k), 1]).generate_state(1)[0] % (2**31 - 1))


class ShadowAudit:
    """``K`` OUT shadows of one request and their values on the audit's pairs.

    Args:
        auditor: the run's :class:`~recbole_unrank.evaluation.audit.Auditor` (its forget and
            test pairs are the pairs judged; its features are the values).
        shadow_values: ``[K, P_forget + P_test]`` values of the shadows (forget pairs first), or
            None before :meth:`train`.
        statistic: the per-pair value (:data:`STATISTIC`).
    """

    def __init__(self, auditor, statistic: str = STATISTIC):
        if statistic not in _STATISTICS:
            raise ValueError(f"statistic {statistic!r}: choose from {_STATISTICS}")
        self.auditor = auditor
        self.statistic = statistic
        self.shadow_features: list[tuple[np.ndarray, np.ndarray]] = []  # per shadow: (forget, test) features
        self.shadow_rows: list[np.ndarray] = []  # per shadow: retained row indices it trained on
        self.time_s = 0.0
        fu, _ = auditor.forget_pairs
        tu, _ = auditor.test_pairs
        users = np.unique(np.concatenate([fu, tu]))
        if users.size:
            open_ = (~auditor._history(users)).sum(axis=1)
            self._n_open = (open_[np.searchsorted(users, fu)], open_[np.searchsorted(users, tu)])
        else:
            self._n_open = (np.zeros(0), np.zeros(0))

    @property
    def k(self) -> int:
        return len(self.shadow_features)

    def train(self, k: int, train_on, seed: int) -> None:
        """Train ``k`` shadows: ``train_on(row_index, training_seed, tag) -> model`` trains one
        model on the retained rows ``row_index``. One progress line per shadow."""
        if k < 2:
            raise UnrankError(f"unrank_audit_shadows={k}: LiRA needs >= 2 shadow models to fit a variance")
        ru, ri = self.auditor.retained
        judged = [self.auditor.forget_pairs, self.auditor.test_pairs]
        start = time.perf_counter()
        for j in range(k):
            rows = shadow_half(ru, ri, self.auditor.n_items, judged, seed, j)
            t0 = time.perf_counter()
            model = train_on(rows, _training_seed(seed, j), f"shadow {j + 1} of {k}")
            self.add_shadow(model, rows)
            logger.info("[lira] shadow %d/%d trained on %d of %d retained rows (%.1fs)", j + 1, k, rows.size,
                        ru.size, time.perf_counter() - t0)
            del model
        self.time_s = time.perf_counter() - start

    def add_shadow(self, model, rows: np.ndarray | None = None) -> None:
        forget, test = self.auditor._features(model, [self.auditor.forget_pairs, self.auditor.test_pairs])
        self.shadow_features.append((forget, test))
        self.shadow_rows.append(np.zeros(0, np.int64) if rows is None else np.asarray(rows))

    def _values(self, forget: np.ndarray, test: np.ndarray, statistic: str) -> tuple[np.ndarray, np.ndarray]:
        return pair_values(forget, self._n_open[0], statistic), pair_values(test, self._n_open[1], statistic)

    def shadow_values(self, statistic: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``([K, P_forget], [K, P_test])``: the shadows' values on the judged pairs."""
        statistic = statistic or self.statistic
        vals = [self._values(f, t, statistic) for f, t in self.shadow_features]
        return np.stack([v[0] for v in vals]), np.stack([v[1] for v in vals])

    def lira_auc(self, probe, statistic: str | None = None) -> float | None:
        """``lira_auc`` of the model whose :class:`~recbole_unrank.evaluation.audit.AuditProbe` is
        ``probe``: AUC of the LiRA statistic, forgotten pairs against test pairs (None when a
        side is empty). The AUC is taken on the z-score, which orders pairs as ``Phi(z)`` does
        without its rounding to 1.0 far in the tail."""
        from recbole_unrank.evaluation.audit import auc

        if self.k < 2:
            raise RuntimeError("train at least 2 shadows before auditing")
        if not len(probe.forget) or not len(probe.test):
            return None
        statistic = statistic or self.statistic
        target_f, target_t = self._values(probe.forget, probe.test, statistic)
        shadow_f, shadow_t = self.shadow_values(statistic)
        z = lira_z(np.concatenate([target_f, target_t]), np.concatenate([shadow_f, shadow_t], axis=1))
        return auc(z[: target_f.size], z[target_f.size:])


def train_shadow(config, data, retain_ds, rows: np.ndarray, seed: int, epochs: int | None, tag: str):
    """One shadow: a fresh model of the run's config trained (RecBole's trainer, early stopping
    on the validation split, as retrain) on the retained rows ``rows``, with training seed
    ``seed`` and at most ``epochs`` epochs (None: the config's). The config and the global
    random state are as before on return, so whatever runs after the shadows draws what it
    would have drawn without them."""
    import random

    import torch

    from recbole_unrank.data import make_loaders
    from recbole_unrank.training import train_model

    shadow_ds = take_rows(retain_ds, np.asarray(rows, dtype=np.int64))
    saved = {"seed": config["seed"], "epochs": config["epochs"]}
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    config["seed"] = int(seed)
    if epochs is not None:
        config["epochs"] = int(epochs)
    try:
        train, valid, _ = make_loaders(config, data, shadow_ds)
        model, info = train_model(config, train, valid, None, tag=tag)
    finally:
        for key, value in saved.items():
            config[key] = value
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
    return model
