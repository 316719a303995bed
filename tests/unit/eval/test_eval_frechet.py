"""Frechet distance against a slow eigen-decomposition reference and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgen.eval.frechet import frechet_distance


def reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The same formula via eigen-decompositions: Tr((S_a S_b)^(1/2)) = sum sqrt(eig(R S_b R)),
    with R = S_a^(1/2), because R S_b R is symmetric and similar to S_a S_b."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def random_gaussian(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    mixing = rng.normal(size=(dim, dim))
    return rng.normal(size=(n, dim)) @ mixing + rng.normal(size=dim)


@pytest.mark.parametrize("dim", [1, 5, 32])
def test_matches_eigen_decomposition_reference(dim: int) -> None:
    # Prepare
    rng = np.random.default_rng(dim)
    a, b = random_gaussian(rng, 400, dim), random_gaussian(rng, 300, dim)
    # Execute
    fast = frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    # Assert: float32 inputs, float64 math
    expected = reference_frechet(a.astype(np.float32), b.astype(np.float32))
    assert fast == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_identical_sets_give_zero() -> None:
    feats = torch.from_numpy(random_gaussian(np.random.default_rng(0), 500, 16))
    assert abs(frechet_distance(feats, feats.clone())) < 1e-6


def test_mean_shift_adds_its_squared_norm_exactly() -> None:
    # Shifting a sample leaves its covariance unchanged, so the distance is ||shift||^2.
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    distances = []
    for size in [0.5, 1.0, 2.0, 4.0]:
        shift = torch.full((8,), size, dtype=torch.float64)
        distances.append(frechet_distance(feats, feats + shift))
        assert distances[-1] == pytest.approx(8 * size**2, rel=1e-6)
    assert distances == sorted(distances)


def test_diagonal_gaussians_match_closed_form() -> None:
    # For diagonal Gaussians: sum (mu_a - mu_b)^2 + sum (s_a - s_b)^2.
    gen = torch.Generator().manual_seed(2)
    mu_a, mu_b = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([1.0, 1.0, 0.5])
    s_a, s_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    a = mu_a + s_a * torch.randn(200_000, 3, generator=gen)
    b = mu_b + s_b * torch.randn(200_000, 3, generator=gen)
    expected = float(((mu_a - mu_b) ** 2).sum() + ((s_a - s_b) ** 2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.03)


def test_rejects_too_few_rows_and_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.full((5, 4), float("nan")), torch.randn(5, 4))


def test_singular_covariances_match_reference() -> None:
    # Dead ReLU units: 16 of 48 feature columns are always 0, so both covariances are singular.
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(300, 48, generator=gen).relu(), torch.randn(200, 48, generator=gen).relu()
    a[:, :16] = 0.0
    b[:, :16] = 0.0
    expected = reference_frechet(a.double().numpy(), b.double().numpy())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-5)


def test_fewer_rows_than_dimensions_stays_finite() -> None:
    # Rank-9 covariances in 64 dimensions must not crash or return NaN.
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(10, 64, generator=gen), torch.randn(10, 64, generator=gen)
    assert np.isfinite(frechet_distance(a, b))
