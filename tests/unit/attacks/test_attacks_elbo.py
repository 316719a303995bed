"""The ELBO score is the negative of the cVAE's own per-image training loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedgen.attacks.elbo import elbo_scores
from fedgen.errors import ConfigError
from fedgen.tasks.vae import ConditionalVae, VaeParams


def test_one_draw_equals_minus_the_training_loss_per_image(mnist_splits):
    # Prepare
    task = ConditionalVae(VaeParams(width=8), 10, (1, 28, 28), seed=0)
    enc, dec = task.modules["encoder"], task.modules["decoder"]
    x, y = mnist_splits[0].images[:5].float() / 255, mnist_splits[0].labels[:5]
    # Execute
    scores = elbo_scores(enc, dec, x, y, torch.Generator().manual_seed(4), samples=1)
    # Assert: the loss of ConditionalVae.train_local, per image, with the same noise.
    with torch.no_grad():
        mu, logvar = enc(x, y)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(4))
        logits = dec(mu + eps * (0.5 * logvar).exp(), y)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    torch.testing.assert_close(scores, -(rec + kl))


def test_more_draws_average_and_zero_draws_are_refused(mnist_splits):
    task = ConditionalVae(VaeParams(width=8), 10, (1, 28, 28), seed=0)
    enc, dec = task.modules["encoder"], task.modules["decoder"]
    x, y = mnist_splits[0].images[:3].float() / 255, mnist_splits[0].labels[:3]
    many = elbo_scores(enc, dec, x, y, torch.Generator().manual_seed(0), samples=64)
    again = elbo_scores(enc, dec, x, y, torch.Generator().manual_seed(1), samples=64)
    torch.testing.assert_close(many, again, rtol=0.01, atol=0.5)
    with pytest.raises(ConfigError, match="samples"):
        elbo_scores(enc, dec, x, y, torch.Generator(), samples=0)
