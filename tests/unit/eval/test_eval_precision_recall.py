"""Improved precision/recall against a brute-force loop implementation."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from fedgen.eval.precision_recall import precision_recall

# The package re-exports the function under the module's name, so fetch the module itself.
pr_module = importlib.import_module("fedgen.eval.precision_recall")


def brute_force_precision_recall(
    real: list[list[float]], fake: list[list[float]], k: int
) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 written as plainly as possible: loops and math.dist."""

    def radii(points: list[list[float]]) -> list[float]:
        out = []
        for i, p in enumerate(points):
            others = sorted(math.dist(p, q) for j, q in enumerate(points) if j != i)
            out.append(others[k - 1])
        return out

    def share_inside(queries: list[list[float]], centres: list[list[float]]) -> float:
        centre_radii = radii(centres)
        inside = sum(
            any(math.dist(q, c) <= r for c, r in zip(centres, centre_radii, strict=True))
            for q in queries
        )
        return inside / len(queries)

    return share_inside(fake, real), share_inside(real, fake)


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (3, 1), (5, 2)])
def test_matches_brute_force(k: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: blocks of 7 rows exercise the batching on small sets.
    monkeypatch.setattr(pr_module, "_ROWS_PER_BLOCK", 7)
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    fake = 0.7 * torch.randn(33, 4, generator=gen, dtype=torch.float64) + 0.5
    # Execute
    precision, recall = precision_recall(real, fake, k=k)
    # Assert
    expected = brute_force_precision_recall(real.tolist(), fake.tolist(), k)
    assert (precision, recall) == pytest.approx(expected)
    assert 0.0 < precision < 1.0 or 0.0 < recall < 1.0  # a non-trivial case


def test_identical_sets_give_one_one() -> None:
    feats = torch.randn(1500, 16, generator=torch.Generator().manual_seed(0))
    assert precision_recall(feats, feats.clone(), k=5) == (1.0, 1.0)


def test_far_apart_sets_give_zero_zero() -> None:
    feats = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    assert precision_recall(feats, feats + 100.0, k=3) == (0.0, 0.0)


def test_collapsed_generator_has_high_precision_low_recall() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(400, 2, generator=gen)
    fake = 0.05 * torch.randn(400, 2, generator=gen)  # all mass near one real mode
    precision, recall = precision_recall(real, fake, k=5)
    assert precision > 0.9
    assert recall < 0.2


def test_rejects_sets_not_larger_than_k() -> None:
    with pytest.raises(ValueError, match="N > k"):
        precision_recall(torch.randn(5, 2), torch.randn(10, 2), k=5)
