"""What a gradient-inversion attacker observes: one client's update, with or without defences.

A client's update here is the gradient of its local loss on one real batch at
the global weights (a one-step SGD delta is this gradient times ``-lr``, the
same direction, so a cosine-matching attacker gains nothing from one over the
other). Three views of it:

- ``none``: the server sees the client's gradient as is;
- ``dp``: the update clipped to L2 norm ``C`` with Gaussian noise of standard
  deviation ``z * C`` added to every coordinate: the Gaussian mechanism of
  DP-FedAvg (McMahan et al. 2018) applied to one client's update, i.e. what the
  server sees when each client adds the noise itself (local DP);
- ``secure_sum``: under secure aggregation (Bonawitz et al. 2017) the server
  only sees the sum of ``K`` clients' updates.

A ``GradientTarget`` names the parameters and the loss whose gradient leaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedgen.errors import ConfigError
from fedgen.tasks.base import Task
from fedgen.tasks.bernoulli import bernoulli_nll
from fedgen.tasks.gan import ConditionalGan
from fedgen.tasks.vae import ConditionalVae


@dataclass
class GradientTarget:
    """The networks whose gradient a client sends, and its loss on a batch.

    ``loss(images (B, C, H, W) in [0, 1], labels (B,)) -> scalar`` must be
    differentiable twice (the attacker differentiates the gradient).
    """

    name: str
    parameters: list[nn.Parameter]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def gradient(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The flat gradient of ``loss`` on this batch, detached, shape ``(num_params,)``."""
        grads = torch.autograd.grad(self.loss(images, labels), self.parameters)
        return torch.cat([g.reshape(-1) for g in grads]).detach()

    def differentiable_gradient(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per-parameter gradients that stay in the graph, for the attacker's matching loss."""
        return list(
            torch.autograd.grad(self.loss(images, labels), self.parameters, create_graph=True)
        )


def discriminator_target(task: ConditionalGan) -> GradientTarget:
    """The real-data half of the GAN discriminator's loss, ``mean softplus(-D(x, y))``,
    plus the AC-GAN head's weighted cross-entropy on the real labels when it has one
    (``aux_weight``), as ``train_local`` computes it.

    The other half, ``softplus(D(G(z), y))``, depends on no private image, so
    it is left out: the attack is on what the private batch contributes.
    """
    D = task.modules["discriminator"]
    aux_weight = task.params.aux_weight

    def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if aux_weight > 0:
            logits, classes = D(images * 2 - 1, labels, with_classes=True)
            real = F.softplus(-logits).mean()
            return real + aux_weight * F.cross_entropy(classes, labels)
        return F.softplus(-D(images * 2 - 1, labels)).mean()

    return GradientTarget("discriminator", [p for p in D.parameters() if p.requires_grad], loss)


def vae_target(task: ConditionalVae, noise_seed: int) -> GradientTarget:
    """The cVAE's negative ELBO on a batch, as ``ConditionalVae.train_local`` computes it.

    The reparameterisation noise is drawn from ``noise_seed`` for every call,
    i.e. the attacker is granted the client's noise: an upper bound on what it
    can reconstruct.
    """
    enc, dec = task.modules["encoder"], task.modules["decoder"]
    beta = task.params.beta

    def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mu, logvar = enc(images, labels)  # (B, latent) each
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(noise_seed))
        logits = dec(mu + eps * (0.5 * logvar).exp(), labels)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return (bernoulli_nll(logits, images) + beta * kl).mean()

    params = [p for m in (enc, dec) for p in m.parameters() if p.requires_grad]
    return GradientTarget("encoder+decoder", params, loss)


def gradient_target(task: Task, noise_seed: int = 0) -> GradientTarget:
    """The target for ``task``: its discriminator (cGAN) or its encoder and decoder (cVAE).

    Raises ``ConfigError`` for other tasks.
    """
    if isinstance(task, ConditionalGan):
        return discriminator_target(task)
    if isinstance(task, ConditionalVae):
        return vae_target(task, noise_seed)
    raise ConfigError(
        f"gradient inversion knows the cgan and cvae tasks, not {type(task).__name__}; "
        "write a GradientTarget for it"
    )


def dp_update(
    update: torch.Tensor, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """``update`` scaled to L2 norm at most ``clip_norm``, plus ``N(0, (z C)^2)`` per coordinate."""
    if clip_norm <= 0:
        raise ConfigError(f"clip_norm must be > 0, got {clip_norm}")
    if noise_multiplier < 0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    scale = min(1.0, clip_norm / (float(update.norm()) + 1e-12))
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype)
    return update * scale + noise * (noise_multiplier * clip_norm)


def secure_sum(updates: list[torch.Tensor]) -> torch.Tensor:
    """The only thing the server learns under secure aggregation: the sum of the updates."""
    if len(updates) < 2:
        raise ConfigError(
            f"a secure sum needs at least 2 clients' updates, got {len(updates)}; "
            "with one client the sum is that client's update"
        )
    return torch.stack(updates).sum(0)


def share_of_sum(update: torch.Tensor, total: torch.Tensor) -> float:
    """Cosine between one client's ``update`` and the ``total`` it is part of.

    1 when the others add nothing in other directions (the sum then hides nothing of
    the update's direction, which is all a cosine-matching inversion uses); about
    1/sqrt(n) for n orthogonal updates of equal norm.
    """
    return float(torch.nn.functional.cosine_similarity(update, total, dim=0))
