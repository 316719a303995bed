"""ROC curve and AUC against scikit-learn and hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fedgen.attacks.roc import membership_figures, roc_curve
from fedgen.errors import ConfigError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    # Prepare: rounded scores make many ties between and within the two groups.
    rng = np.random.default_rng(seed)
    members = np.round(rng.normal(0.3, 1.0, 300), 1)
    nonmembers = np.round(rng.normal(0.0, 1.0, 250), 1)
    y = np.r_[np.ones(300), np.zeros(250)]
    # Execute
    curve = roc_curve(torch.from_numpy(members), nonmembers)
    # Assert
    assert curve.auc() == pytest.approx(roc_auc_score(y, np.r_[members, nonmembers]), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, np.r_[members, nonmembers], drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)


def test_hand_computed_curve_and_tpr_at_low_fpr():
    # Prepare: members 4, 3, 1; non-members 2, 0. Thresholds 4,3,2,1,0.
    members, nonmembers = [4.0, 3.0, 1.0], [2.0, 0.0]
    # Execute
    curve = roc_curve(np.array(members), np.array(nonmembers))
    # Assert: 5 of the 6 member/non-member pairs are ordered right.
    np.testing.assert_allclose(curve.fpr, [0, 0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curve.tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert curve.auc() == pytest.approx(5 / 6)
    assert curve.tpr_at_fpr(0.01) == pytest.approx(2 / 3)
    assert curve.tpr_at_fpr(0.5) == 1.0


def test_random_scores_give_chance_and_separated_scores_give_one():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4000, generator=gen)
    random = membership_figures(scores[:2000], scores[2000:], "random")
    assert abs(random["random_auc"] - 0.5) < 0.03
    assert random["random_tpr_at_1pct_fpr"] < 0.05
    perfect = membership_figures(scores[:2000] + 100, scores[2000:], "perfect")
    assert perfect == {"perfect_auc": 1.0, "perfect_tpr_at_1pct_fpr": 1.0}


@pytest.mark.parametrize(
    ("members", "nonmembers", "message"),
    [([], [1.0], "empty"), ([1.0, float("nan")], [0.0], "NaN")],
)
def test_bad_scores_are_refused(members, nonmembers, message):
    with pytest.raises(ConfigError, match=message):
        roc_curve(np.array(members), np.array(nonmembers))
