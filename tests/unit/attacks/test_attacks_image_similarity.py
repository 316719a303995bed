"""PSNR against its formula, SSIM against hand-checked properties, matching against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedgen.attacks.image_similarity import (
    gaussian_window,
    match_reconstructions,
    psnr,
    reconstruction_figures,
    ssim,
)
from fedgen.errors import ConfigError


def digits(mnist_splits, n: int) -> torch.Tensor:
    return mnist_splits[0].images[:n].float() / 255


def test_psnr_is_the_formula():
    # Prepare: every pixel off by 0.1 -> MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB.
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.8
    # Execute
    value = psnr(x, x + 0.1)
    # Assert
    torch.testing.assert_close(value, torch.full((3,), 20.0))
    assert psnr(x, x, data_range=255.0)[0] == math.inf
    assert psnr(x * 255, x * 255 + 5.1, data_range=255.0)[0] == pytest.approx(20 * math.log10(50))


def test_ssim_of_an_image_with_itself_is_one_and_ssim_is_symmetric(mnist_splits):
    x = digits(mnist_splits, 4)
    y = x.flip(0)
    torch.testing.assert_close(ssim(x, x), torch.ones(4))
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    assert (ssim(x, y) < 0.9).all()


def test_ssim_decreases_as_noise_grows(mnist_splits):
    x = digits(mnist_splits, 2)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    values = [float(ssim(x, (x + s * noise).clamp(0, 1)).mean()) for s in (0.02, 0.1, 0.3, 1.0)]
    assert values == sorted(values, reverse=True)
    assert values[0] > 0.9 and values[-1] < 0.3


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # Prepare: flat images have zero variance and covariance, so only the luminance
    # term (2ab + c1) / (a^2 + b^2 + c1) remains, with c1 = 0.01^2.
    a, b, c1 = 0.2, 0.6, 1e-4
    # Execute
    value = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    # Assert
    assert float(value) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)


def test_gaussian_window_is_normalised_and_peaks_in_the_middle():
    w = gaussian_window(11, 1.5)
    assert float(w.sum()) == pytest.approx(1.0)
    assert w.argmax() == 5 * 11 + 5
    torch.testing.assert_close(w, w.T)


def test_matching_is_the_best_permutation(mnist_splits):
    # Prepare: originals, and 5 reconstructions (3 noisy copies in shuffled order + 2 others).
    x = digits(mnist_splits, 5)
    gen = torch.Generator().manual_seed(1)
    recon = torch.cat([x[[2, 0, 1]], x[3:]]) + 0.2 * torch.rand(5, 1, 28, 28, generator=gen)
    originals = x[:3]
    # Execute
    order = match_reconstructions(originals, recon)

    # Assert: the brute-force least total MSE over every injective choice agrees.
    def cost(choice):
        return sum(float((originals[i] - recon[j]).pow(2).sum()) for i, j in enumerate(choice))

    best = min(itertools.permutations(range(5), 3), key=cost)
    assert order.tolist() == list(best) == [1, 2, 0]
    figures, matched = reconstruction_figures(originals, recon, "test")
    torch.testing.assert_close(matched, recon[order])
    assert figures["psnr_best_test"] >= figures["psnr_test"]


def test_shape_mismatches_are_clear_errors():
    with pytest.raises(ConfigError, match="equal shape"):
        psnr(torch.zeros(2, 1, 28, 28), torch.zeros(3, 1, 28, 28))
    with pytest.raises(ConfigError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="at least as many"):
        match_reconstructions(torch.zeros(3, 1, 28, 28), torch.zeros(2, 1, 28, 28))
