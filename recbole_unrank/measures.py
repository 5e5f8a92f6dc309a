"""Older name of :mod:`recbole_unrank.evaluation.measures` and :mod:`recbole_unrank.evaluation.audit`
(a re-export; import from there)."""

from recbole_unrank.evaluation.audit import Auditor, AuditProbe, auc, equal_sample, fit_attack, mia_audit, pair_features
from recbole_unrank.evaluation.measures import (
    ACTIVE_SHARE,
    active_users,
    align_ranks,
    group_mean,
    per_user_ndcg_recall,
    retrain_agreement,
)

__all__ = ["per_user_ndcg_recall", "group_mean", "active_users", "retrain_agreement", "auc", "pair_features",
           "fit_attack", "mia_audit", "equal_sample", "align_ranks", "Auditor", "AuditProbe", "ACTIVE_SHARE"]
