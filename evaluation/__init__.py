"""Evaluation metrics for synthetic tabular data (marginal TVD, TSTR AUC, exact-match rate)."""

from fedsynth.evaluation.metrics import (
    EvaluationBinning,
    evaluate,
    exact_match_rate,
    marginal_tvd,
    tstr_auc,
)

__all__ = ["EvaluationBinning", "evaluate", "exact_match_rate", "marginal_tvd", "tstr_auc"]
