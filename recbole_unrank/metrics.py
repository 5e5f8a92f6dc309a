"""Older name of :mod:`recbole_unrank.evaluation.metrics` (a re-export; import from there)."""

from recbole_unrank.evaluation.metrics import (
    PAIR_KEY,
    PAIR_RANK,
    RDR,
    REF_RANK,
    REFERENCE_METRICS,
    UNRANK_METRICS,
    URR,
    ForgetHit,
    ForgetNDCG,
    ForgetRecall,
    MeanRank,
    RankDeclineRatio,
    UnrankCollector,
    evaluate_loader,
    forget_hit,
    mean_rank,
    pair_ranks,
    rank_decline_ratio,
    rank_decrease,
    register_metrics,
    urr,
)

__all__ = ["pair_ranks", "forget_hit", "mean_rank", "rank_decrease", "rank_decline_ratio", "urr", "ForgetHit",
           "MeanRank", "RDR", "URR", "RankDeclineRatio", "ForgetNDCG", "ForgetRecall", "UNRANK_METRICS",
           "REFERENCE_METRICS", "PAIR_RANK", "PAIR_KEY", "REF_RANK", "register_metrics", "UnrankCollector",
           "evaluate_loader"]
