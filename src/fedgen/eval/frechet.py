"""Frechet distance between two sets of feature vectors (the formula of FID, Heusel et al. 2017).

Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

_MAX_IMAGINARY = 1e-3
"""Relative size of the imaginary part of sqrtm above which the result is not trusted."""


def _as_float64_matrix(feats: torch.Tensor, name: str) -> np.ndarray:
    array = feats.detach().cpu().double().numpy()
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(
            f"{name} must be a 2-D (N, D) tensor with N >= 2, got shape {tuple(array.shape)}; "
            "pass at least two feature rows"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or Inf; check the generator's output")
    return array


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance on classifier features (not FID: no Inception weights here).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of the Gaussians fitted
    to ``feats_a`` ``(N, D)`` and ``feats_b`` ``(M, D)``, computed in float64.

    Raises:
        ValueError: fewer than two rows, different feature sizes, NaN/Inf, or a matrix
            square root whose imaginary part is too large to be rounding noise.
    """
    a = _as_float64_matrix(feats_a, "feats_a")
    b = _as_float64_matrix(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}; use the same feature extractor"
        )
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))  # (D, D)
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    import scipy.linalg  # here: about 0.2 s to import, which most processes never need

    with warnings.catch_warnings():
        # Dead ReLU units (zero variance) make the product singular, and sqrtm warns about
        # it on every call although its result is fine; the checks below catch bad ones.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            # A tiny ridge on both covariances is the usual remedy (as in pytorch-fid).
            ridge = np.eye(cov_a.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    if np.iscomplexobj(covmean):
        scale = max(float(np.abs(covmean.real).max()), 1.0)
        largest = float(np.abs(covmean.imag).max())
        if largest > _MAX_IMAGINARY * scale:
            raise ValueError(
                f"matrix square root has imaginary part {largest:.3g} (relative "
                f"{largest / scale:.3g}): the covariances are numerically degenerate; "
                "use more samples than feature dimensions"
            )
        covmean = covmean.real
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    return float(distance)
