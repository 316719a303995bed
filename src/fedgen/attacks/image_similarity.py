"""How close reconstructions are to the originals: PSNR, SSIM and the best one-to-one match.

SSIM follows Wang, Bovik, Sheikh & Simoncelli 2004 ("Image quality
assessment: from error visibility to structural similarity"): local means,
variances and covariance under an 11x11 Gaussian window (sigma 1.5), constants
``(0.01 L)^2`` and ``(0.03 L)^2``, averaged over the valid window positions
(no padding, as the authors' reference code does). A gradient-inversion attack
returns its images in no particular order, so reconstructions are paired with
originals by the Hungarian algorithm on the mean squared error before scoring.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from fedgen.errors import ConfigError


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ConfigError(
            f"compare images of equal shape (N, C, H, W); got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(L^2 / MSE)`` per image, shape ``(N,)``, in dB.

    Identical images give ``inf``.
    """
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised 2-D Gaussian ``(size, size)``, the outer product of two 1-D ones."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Mean structural similarity per image, shape ``(N,)``; 1 for identical images.

    Channels are compared separately and averaged. Images must be at least
    ``window_size`` pixels on each side.
    """
    _check_pair(x, y)
    if min(x.shape[-2:]) < window_size:
        raise ConfigError(
            f"SSIM needs images of at least {window_size}x{window_size}, got "
            f"{tuple(x.shape[-2:])}; pass a smaller window_size"
        )
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma).expand(channels, 1, window_size, window_size)
    a, b = x.double(), y.double()

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, C, H-w+1, W-w+1), each channel on its own (groups=C).
        return F.conv2d(t, window, groups=channels)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return index.flatten(1).mean(1).float()


def match_reconstructions(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """For each original, the index of its reconstruction under the least-MSE one-to-one match.

    ``originals`` is ``(B, C, H, W)``, ``reconstructions`` ``(M, C, H, W)`` with
    ``M >= B`` (an attack on a sum of clients' updates may return more images
    than the target holds). Returns int64 ``(B,)``.
    """
    if (
        reconstructions.shape[0] < originals.shape[0]
        or originals.shape[1:] != (reconstructions.shape[1:])
    ):
        raise ConfigError(
            f"cannot match {tuple(originals.shape)} originals to "
            f"{tuple(reconstructions.shape)} reconstructions; need at least as many "
            "reconstructions of the same image shape"
        )
    cost = torch.cdist(originals.flatten(1).double(), reconstructions.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    order = np.empty(originals.shape[0], dtype=np.int64)
    order[rows] = cols
    return torch.from_numpy(order)


def reconstruction_figures(
    originals: torch.Tensor, reconstructions: torch.Tensor, suffix: str
) -> tuple[dict[str, float], torch.Tensor]:
    """PSNR/SSIM after the best match, and the matched reconstructions ``(B, C, H, W)``.

    Figures: ``psnr_{suffix}`` and ``ssim_{suffix}`` (means over the batch) and
    ``psnr_best_{suffix}`` / ``ssim_best_{suffix}`` (the single best image).
    Infinite PSNR (a perfect copy) is reported as 100 dB so JSON stays valid.
    """
    matched = reconstructions[match_reconstructions(originals, reconstructions)]
    p = psnr(originals, matched).clamp(max=100.0)
    s = ssim(originals, matched)
    figures = {
        f"psnr_{suffix}": float(p.mean()),
        f"ssim_{suffix}": float(s.mean()),
        f"psnr_best_{suffix}": float(p.max()),
        f"ssim_best_{suffix}": float(s.max()),
    }
    if not all(math.isfinite(v) for v in figures.values()):
        raise ConfigError("reconstructions hold NaN values; lower the inversion learning rate")
    return figures, matched
