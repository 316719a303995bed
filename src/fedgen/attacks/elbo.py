"""White-box membership inference against a conditional VAE by its evidence lower bound.

The VAE analogue of a discriminator score (Hilprecht, Härterich & Bernau
2019, "Monte Carlo and Reconstruction Membership Inference Attacks against
Generative Models", PoPETs; Chen et al. 2020, GAN-Leaks, white-box VAE
setting): a model fits its training images better, so their ELBO
``E_q[log p(x|z,y)] - KL(q(z|x,y) || N(0, I))`` is higher than that of unseen
images. The expectation is estimated with ``samples`` seeded draws of ``z``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedgen.errors import ConfigError
from fedgen.tasks.bernoulli import bernoulli_nll


@torch.no_grad()
def elbo_scores(
    encoder: nn.Module,
    decoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    samples: int = 8,
    batch_size: int = 500,
) -> torch.Tensor:
    """ELBO in nats per image of images ``(N, C, H, W)`` in [0, 1]; higher means "member". ``(N,)``.

    Uses the Bernoulli pixel likelihood of ``fedgen.tasks.vae`` and its
    ``encoder(x, y) -> (mu, logvar)`` / ``decoder(z, y) -> logits`` modules.
    """
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    encoder.eval()
    decoder.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x, y = images[i : i + batch_size], labels[i : i + batch_size]
        mu, logvar = encoder(x, y)  # (b, latent) each
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)  # (b,)
        log_lik = torch.zeros_like(kl)
        for _ in range(samples):
            z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
            log_lik -= bernoulli_nll(decoder(z, y), x) / samples
        out.append(log_lik - kl)
    return torch.cat(out).float()
