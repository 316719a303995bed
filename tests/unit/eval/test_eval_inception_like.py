"""Inception-like score: its two known extremes and a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgen.eval.inception_like import inception_like_score


def test_uniform_probs_score_one() -> None:
    mean, std = inception_like_score(torch.full((100, 10), 0.1))
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_balanced_one_hot_scores_num_classes() -> None:
    # 200 rows cycling through 10 classes: every split of 20 holds each class twice.
    probs = torch.eye(10)[torch.arange(200) % 10]
    mean, std = inception_like_score(probs, splits=10)
    assert mean == pytest.approx(10.0)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_matches_numpy_reference_on_random_probs() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(7, 0.3), size=90)
    scores = []
    for chunk in np.array_split(probs, 3):
        marginal = chunk.mean(axis=0)
        kl = [np.sum(p * (np.log(p) - np.log(marginal))) for p in chunk]
        scores.append(np.exp(np.mean(kl)))
    mean, std = inception_like_score(torch.from_numpy(probs), splits=3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-9)
    assert std == pytest.approx(np.std(scores), rel=1e-9)


def test_rejects_logits_and_too_many_splits() -> None:
    with pytest.raises(ValueError, match="softmax"):
        inception_like_score(torch.randn(20, 10))
    with pytest.raises(ValueError, match="splits"):
        inception_like_score(torch.full((5, 10), 0.1), splits=10)
