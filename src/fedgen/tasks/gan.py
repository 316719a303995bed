"""Conditional GAN: a small DCGAN without BatchNorm and a projection discriminator.

Generator after Radford et al. 2016 (DCGAN) with GroupNorm in place of
BatchNorm: batch statistics break DP-SGD and vectorized clients, and
GroupNorm keeps working when a client's batch holds one class. The
discriminator conditions on the label by projection (Miyato & Koyama 2018,
"cGANs with Projection Discriminator"), which ties samples to their class
more tightly than concatenating a label plane. Loss: non-saturating BCE
(Goodfellow et al. 2014).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.registry import TASKS
from fedgen.tasks.base import Task, TaskParams


class GanParams(TaskParams):
    """Hyper-parameters of the conditional GAN."""

    latent_dim: int = 64
    embed_dim: int = 16
    generator_width: int = 32
    discriminator_width: int = 32
    federate: list[str] = Field(default_factory=lambda: ["generator", "discriminator"])


class Generator(nn.Module):
    """``(z (B, latent), y (B,)) -> images (B, 1, 28, 28)`` in [-1, 1]."""

    def __init__(
        self, latent_dim: int, num_classes: int, embed_dim: int, width: int, channels: int
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.project = nn.Linear(latent_dim + embed_dim, 2 * width * 7 * 7)
        self.body = nn.Sequential(
            nn.GroupNorm(8, 2 * width),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),  # 7x7 -> 14x14
            nn.GroupNorm(8, width),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),  # 14x14 -> 28x28
            nn.Tanh(),
        )
        self.width = width

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(y)], dim=1))  # (B, 2w*49)
        return self.body(h.view(-1, 2 * self.width, 7, 7))


class ProjectionDiscriminator(nn.Module):
    """``(x (B, 1, 28, 28), y (B,)) -> logits (B,)``: ``psi(h) + <embed(y), h>``."""

    def __init__(self, num_classes: int, width: int, channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),  # 28 -> 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # 14 -> 7
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        feat_dim = 2 * width * 7 * 7
        self.head = nn.Linear(feat_dim, 1)
        self.embed = nn.Embedding(num_classes, feat_dim)
        nn.init.normal_(self.embed.weight, std=0.01)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, 2w*49)
        return self.head(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


@TASKS.register("cgan")
class ConditionalGan(Task):
    """Class-conditional GAN; both networks train locally and are federated by default."""

    Params = GanParams
    params: GanParams

    def build(self) -> dict[str, nn.Module]:
        p = self.params
        channels = self.image_shape[0]
        return {
            "generator": Generator(
                p.latent_dim, self.num_classes, p.embed_dim, p.generator_width, channels
            ),
            "discriminator": ProjectionDiscriminator(
                self.num_classes, p.discriminator_width, channels
            ),
        }

    def federated_modules(self) -> list[str]:
        return list(self.params.federate)

    def train_local(
        self, data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        G, D = self.modules["generator"], self.modules["discriminator"]
        lr = float(config.get("lr", p.lr))
        # Fresh optimizers per round: optimizer state is not federated (standard FedAvg).
        opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=p.betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=p.betas)
        G.train()
        D.train()
        batches = data.batches(p.batch_size, generator)
        sum_d = sum_g = 0.0
        for _ in range(steps):
            real, y = next(batches)
            real = real * 2 - 1  # [0,1] -> [-1,1], the generator's range
            b = real.shape[0]
            z = torch.randn(b, p.latent_dim, generator=generator)
            fake = G(z, y)
            # Discriminator: softplus(-D(real)) + softplus(D(fake)) is BCE with logits.
            loss_d = F.softplus(-D(real, y)).mean() + F.softplus(D(fake.detach(), y)).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # Generator: non-saturating loss, labels drawn from the client's own data.
            loss_g = F.softplus(-D(fake, y)).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            sum_d += float(loss_d.detach())
            sum_g += float(loss_g.detach())
        n = max(steps, 1)
        return {"loss/discriminator": sum_d / n, "loss/generator": sum_g / n}

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        G = self.modules["generator"]
        G.eval()
        z = torch.randn(labels.shape[0], self.params.latent_dim, generator=generator)
        return (G(z, labels) + 1) / 2
