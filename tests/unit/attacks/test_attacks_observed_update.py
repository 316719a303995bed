"""The attacker's views of a client update: as sent, clipped and noised, summed."""

from __future__ import annotations

import pytest
import torch

from fedgen.attacks.observed_update import (
    discriminator_target,
    dp_update,
    gradient_target,
    secure_sum,
    share_of_sum,
    vae_target,
)
from fedgen.errors import ConfigError
from fedgen.tasks.gan import ConditionalGan, GanParams
from fedgen.tasks.vae import ConditionalVae, VaeParams


def batch(mnist_splits, n: int = 3):
    train = mnist_splits[0]
    return train.images[:n].float() / 255, train.labels[:n]


def test_discriminator_gradient_is_that_of_the_real_half_of_the_gan_loss(mnist_splits):
    # Prepare
    task = ConditionalGan(GanParams(discriminator_width=8), 10, (1, 28, 28), seed=0)
    x, y = batch(mnist_splits)
    D = task.modules["discriminator"]
    # Execute
    flat = discriminator_target(task).gradient(x, y)
    # Assert: the slow way, with backward() and .grad as a training step does it.
    D.zero_grad()
    torch.nn.functional.softplus(-D(x * 2 - 1, y)).mean().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in D.parameters()])
    torch.testing.assert_close(flat, expected)
    # Only the embedding rows of the batch's classes move: the update reveals the labels.
    names = [name for name, _ in D.named_parameters()]
    parts = dict(zip(names, flat.split([p.numel() for p in D.parameters()]), strict=True))
    moved = parts["embed.weight"].view(10, -1).abs().sum(1).nonzero().squeeze(1)
    assert moved.tolist() == sorted(set(y.tolist()))


def test_with_a_class_head_the_gradient_covers_it_as_the_clients_loss_does(mnist_splits):
    # The AC-GAN head learns the real labels: its cross-entropy is part of the real half
    # of the discriminator's loss, so every parameter, the head's too, has a gradient.
    task = ConditionalGan(GanParams(discriminator_width=8, aux_weight=0.5), 10, (1, 28, 28), 0)
    x, y = batch(mnist_splits)
    D = task.modules["discriminator"]
    flat = discriminator_target(task).gradient(x, y)
    D.zero_grad()
    logits, classes = D.logits_and_classes(x * 2 - 1, y)
    loss = torch.nn.functional.softplus(-logits).mean()
    (loss + 0.5 * torch.nn.functional.cross_entropy(classes, y)).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in D.parameters()])
    torch.testing.assert_close(flat, expected)
    assert D.classify is not None and D.classify.weight.grad.abs().sum() > 0


def test_vae_gradient_is_reproducible_with_the_granted_noise(mnist_splits):
    task = ConditionalVae(VaeParams(width=8), 10, (1, 28, 28), seed=0)
    x, y = batch(mnist_splits)
    first = vae_target(task, noise_seed=5).gradient(x, y)
    again = vae_target(task, noise_seed=5).gradient(x, y)
    other = vae_target(task, noise_seed=6).gradient(x, y)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_dp_update_clips_to_c_and_adds_noise_of_std_z_times_c():
    # Prepare: an update of norm 10, C = 2.
    update = torch.zeros(100_000)
    update[0] = 10.0
    gen = torch.Generator().manual_seed(0)
    # Execute
    clipped = dp_update(update, clip_norm=2.0, noise_multiplier=0.0, generator=gen)
    noised = dp_update(update, clip_norm=2.0, noise_multiplier=0.5, generator=gen)
    small = dp_update(update / 100, clip_norm=2.0, noise_multiplier=0.0, generator=gen)
    # Assert
    assert float(clipped.norm()) == pytest.approx(2.0)
    assert float(clipped[0]) == pytest.approx(2.0)
    torch.testing.assert_close(small, update / 100)  # already below C: unchanged
    assert float((noised - clipped)[1:].std()) == pytest.approx(1.0, rel=0.02)


def test_secure_sum_is_the_plain_sum_and_needs_two_clients():
    a, b, c = torch.arange(4.0), torch.ones(4), torch.full((4,), -2.0)
    torch.testing.assert_close(secure_sum([a, b, c]), a + b + c)
    with pytest.raises(ConfigError, match="at least 2"):
        secure_sum([a])


def test_share_of_sum_is_one_for_a_dominating_update_and_falls_with_orthogonal_peers():
    g = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    assert share_of_sum(g, secure_sum([g, torch.zeros_like(g)])) == pytest.approx(1.0)
    assert share_of_sum(g, secure_sum([g, 0.001 * g.flip(0)])) > 0.999
    # Four orthogonal updates of equal norm: cos = 1 / sqrt(4).
    basis = torch.eye(4) * 3.0
    assert share_of_sum(basis[0], secure_sum(list(basis))) == pytest.approx(0.5)


def test_bad_dp_settings_and_unknown_tasks_are_clear_errors():
    with pytest.raises(ConfigError, match="clip_norm"):
        dp_update(torch.ones(3), 0.0, 1.0, torch.Generator())
    with pytest.raises(ConfigError, match="noise_multiplier"):
        dp_update(torch.ones(3), 1.0, -1.0, torch.Generator())
    with pytest.raises(ConfigError, match="cgan and cvae"):
        gradient_target(object())  # type: ignore[arg-type]
