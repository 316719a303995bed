"""Kernel distance: the unbiased MMD^2 against a loop, and on real Fashion-MNIST features."""

from __future__ import annotations

import pytest
import torch

from fedgen.data.dataset import ImageDataset
from fedgen.eval import kid
from fedgen.eval.classifier import FeatureClassifier
from fedgen.eval.kid import _mmd2_of_subsets, kernel_distance, mmd2_unbiased


def loop_mmd2_unbiased(x: list[list[float]], y: list[list[float]]) -> float:
    """Binkowski et al. 2018, eq. for the unbiased MMD^2, one kernel value at a time."""
    d = len(x[0])

    def k(a: list[float], b: list[float]) -> float:
        return (sum(p * q for p, q in zip(a, b, strict=True)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(7, 4, generator=gen, dtype=torch.float64) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(loop_mmd2_unbiased(x.tolist(), y.tolist()))


def test_kid_with_one_subset_of_everything_is_the_full_mmd() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 3, generator=gen), torch.randn(20, 3, generator=gen)
    mean, std = kernel_distance(x, y, num_subsets=1, subset_size=20)
    assert mean == pytest.approx(mmd2_unbiased(x.double(), y.double()))
    assert std == 0.0


def test_all_subsets_at_once_equal_one_at_a_time(monkeypatch) -> None:
    # Prepare: 40 x 30 rows, and 12 subset pairs of 25 drawn without replacement; kernel
    # rows taken 7 at a time, so the sums cross block boundaries.
    monkeypatch.setattr(kid, "_BLOCK_ROWS", 7)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 5, generator=gen, dtype=torch.float64) + 0.2
    draws = [
        (torch.randperm(40, generator=gen)[:25], torch.randperm(30, generator=gen)[:25])
        for _ in range(12)
    ]
    # Execute
    at_once = _mmd2_of_subsets(x, y, draws, 25)
    # Assert
    one_by_one = [mmd2_unbiased(x[rows_x], y[rows_y]) for rows_x, rows_y in draws]
    assert at_once.tolist() == pytest.approx(one_by_one, rel=1e-12)


def test_kernel_distance_takes_the_sums_at_once_over_the_subsets_it_draws(monkeypatch) -> None:
    # Prepare: 30 subsets of 25 of 30 rows (where the sums are taken at once), and the
    # same call with the at-once sums replaced by one subset at a time.
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(30, 3, generator=gen), torch.randn(30, 3, generator=gen) + 0.4
    at_once = kernel_distance(x, y, num_subsets=30, subset_size=25, seed=9)

    calls: list[int] = []

    def one_by_one(a, b, draws, size):
        calls.append(len(draws))
        return torch.tensor([mmd2_unbiased(a[ra], b[rb]) for ra, rb in draws], dtype=a.dtype)

    monkeypatch.setattr(kid, "_mmd2_of_subsets", one_by_one)
    # Execute
    looped = kernel_distance(x, y, num_subsets=30, subset_size=25, seed=9)
    # Assert: the same figures from the same draws, and a real spread over subsets.
    assert calls == [30]
    assert at_once == pytest.approx(looped, rel=1e-12)
    assert at_once[1] > 0


def test_subsets_of_every_row_give_the_full_mmd_with_no_spread() -> None:
    # 5 subsets of all 30 rows (the sums taken all at once): one value, five times.
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 3, generator=gen), torch.randn(30, 3, generator=gen) + 0.5
    mean, std = kernel_distance(x, y, num_subsets=5, subset_size=100)
    assert mean == pytest.approx(mmd2_unbiased(x.double(), y.double()), rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-15)


def test_near_zero_for_halves_of_one_sample_large_for_different_classes(
    feature_classifier: FeatureClassifier, fashion_test: ImageDataset
) -> None:
    # Prepare: 2,000 real test images split in two random halves; and two single classes.
    rows = torch.randperm(len(fashion_test), generator=torch.Generator().manual_seed(3))[:2000]
    feats = feature_classifier.features(fashion_test.subset(rows).float_images())
    tshirts = fashion_test.float_images()[fashion_test.labels == 0][:1000]
    trousers = fashion_test.float_images()[fashion_test.labels == 1][:1000]
    # Execute
    same, same_std = kernel_distance(feats[:1000], feats[1000:], num_subsets=50, subset_size=500)
    different, _ = kernel_distance(
        feature_classifier.features(tshirts),
        feature_classifier.features(trousers),
        num_subsets=50,
        subset_size=500,
    )
    # Assert: the unbiased estimate scatters around 0 for one distribution.
    assert abs(same) < 3 * same_std + 1e-3
    assert different > 50 * max(abs(same), same_std)


def test_same_seed_same_numbers_and_bad_input_rejected() -> None:
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(50, 3, generator=gen), torch.randn(60, 3, generator=gen)
    assert kernel_distance(x, y, 10, 20, seed=5) == kernel_distance(x, y, 10, 20, seed=5)
    assert kernel_distance(x, y, 10, 20, seed=5) != kernel_distance(x, y, 10, 20, seed=6)
    with pytest.raises(ValueError, match="feature sizes differ"):
        kernel_distance(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        kernel_distance(x[:1], y)
