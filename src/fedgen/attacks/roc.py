"""ROC curve, its area and the true-positive rate at a fixed low false-positive rate.

Membership attacks are judged as Carlini et al. 2022 ("Membership Inference
Attacks From First Principles") ask: the area under the ROC curve and, since an
attack that is confident on a few members is what a privacy breach is, the
TPR at 1% FPR. Scores are "higher means member". Tied scores share one
threshold, so the area equals the Mann-Whitney probability
``P(member > non-member) + P(tie) / 2`` (what ``sklearn.metrics.roc_auc_score``
computes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedgen.errors import ConfigError


@dataclass(frozen=True)
class RocCurve:
    """Points of an ROC curve from ``(0, 0)`` to ``(1, 1)``, thresholds decreasing.

    ``thresholds[i]`` is the score at and above which an example is called a
    member to reach ``(fpr[i], tpr[i])``; the first threshold is ``+inf``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def auc(self) -> float:
        """Area under the curve by the trapezoid rule (ties count one half)."""
        return float(np.trapezoid(self.tpr, self.fpr))

    def tpr_at_fpr(self, max_fpr: float = 0.01) -> float:
        """The highest TPR among thresholds whose FPR is at most ``max_fpr``."""
        if not 0.0 <= max_fpr <= 1.0:
            raise ConfigError(f"max_fpr must lie in [0, 1], got {max_fpr}")
        allowed = self.fpr <= max_fpr + 1e-12
        return float(self.tpr[allowed].max())

    def points(self) -> list[tuple[float, float]]:
        """``(fpr, tpr)`` pairs, e.g. for ``fedgen.report.svg.line_chart``."""
        return [(float(f), float(t)) for f, t in zip(self.fpr, self.tpr, strict=True)]


def _as_scores(values: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(
        values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values,
        dtype=np.float64,
    ).reshape(-1)
    if array.size == 0:
        raise ConfigError(f"{name} is empty; pass at least one score for members and non-members")
    if not np.isfinite(array).all():
        raise ConfigError(
            f"{name} holds NaN or infinite scores; check the model that produced them "
            "(a diverged checkpoint gives non-finite discriminator logits)"
        )
    return array


def roc_curve(
    member_scores: torch.Tensor | np.ndarray, nonmember_scores: torch.Tensor | np.ndarray
) -> RocCurve:
    """The ROC curve of the rule "member iff score >= threshold" over every distinct score."""
    pos = _as_scores(member_scores, "member_scores")
    neg = _as_scores(nonmember_scores, "nonmember_scores")
    scores = np.concatenate([pos, neg])
    is_member = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    # The last index of every run of equal scores: one threshold per distinct score.
    last_of_run = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    true_pos = np.cumsum(is_member)[last_of_run]
    false_pos = (last_of_run + 1) - true_pos
    return RocCurve(
        fpr=np.r_[0.0, false_pos / neg.size],
        tpr=np.r_[0.0, true_pos / pos.size],
        thresholds=np.r_[np.inf, scores[last_of_run]],
    )


def membership_figures(
    member_scores: torch.Tensor | np.ndarray,
    nonmember_scores: torch.Tensor | np.ndarray,
    prefix: str,
    max_fpr: float = 0.01,
) -> dict[str, float]:
    """``{prefix}_auc`` and ``{prefix}_tpr_at_1pct_fpr`` (the FPR is ``max_fpr``)."""
    curve = roc_curve(member_scores, nonmember_scores)
    return {
        f"{prefix}_auc": curve.auc(),
        f"{prefix}_tpr_at_{max_fpr * 100:g}pct_fpr": curve.tpr_at_fpr(max_fpr),
    }
