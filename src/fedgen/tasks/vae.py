"""Conditional VAE (Kingma & Welling 2014; Sohn et al. 2015, "CVAE").

An encoder ``q(z | x, y)`` and decoder ``p(x | z, y)``, convolutional by default
(no BatchNorm: GroupNorm instead, for DP-SGD and vectorized clients) or, with
``architecture: mlp``, one hidden layer each: Kingma & Welling's MNIST VAE, which at a
few hidden units is the few-thousand-parameter network of simulation benchmarks. The
pixel likelihood is Bernoulli on [0, 1] intensities, the usual choice for MNIST-like
data.

Every network takes its labels either as class indices ``(B,)`` or already one-hot
``(B, classes)`` floats: ``F.one_hot`` checks its input's range with ``.item()``, which
``vmap`` refuses, so the vectorized step passes one-hot rows.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.registry import TASKS
from fedgen.tasks.base import Task, TaskParams
from fedgen.tasks.bernoulli import bernoulli_nll
from fedgen.tasks.vae_functional import VaeFunctionalTraining

#: GroupNorm groups of the convolutional networks: their widths are multiples of it.
NORM_GROUPS = 8


class VaeParams(TaskParams):
    """Hyper-parameters of the conditional VAE."""

    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    latent_dim: int = Field(16, ge=1)
    #: The convolutional networks' channels at 14x14 (twice that at 7x7): a multiple of
    #: ``NORM_GROUPS`` (``architecture: conv`` only).
    width: int = Field(32, ge=1)
    #: Weight of the KL term (beta-VAE; 1: the ELBO).
    beta: float = Field(1.0, ge=0)
    architecture: Literal["conv", "mlp"] = "conv"
    #: The MLP's hidden units (``architecture: mlp``; Kingma & Welling used 500).
    hidden: int = Field(default=400, ge=1)
    federate: list[str] = Field(default_factory=lambda: ["encoder", "decoder"])

    @model_validator(mode="after")
    def _width_fills_the_groups(self) -> VaeParams:
        # Otherwise GroupNorm fails inside torch at build, naming no parameter.
        if self.architecture == "conv" and self.width % NORM_GROUPS:
            raise ValueError(
                f"task.params.width must be a positive multiple of {NORM_GROUPS} (the "
                f"GroupNorm groups), got {self.width}; e.g. "
                f"{max(NORM_GROUPS, round(self.width / NORM_GROUPS) * NORM_GROUPS)}"
            )
        return self


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as float one-hot rows ``(B, classes)``; one-hot input passes through."""
    if y.is_floating_point():
        return y
    return F.one_hot(y, num_classes).float()


class Encoder(nn.Module):
    """``(x (B,1,28,28), y (B,)) -> (mu, logvar)``, each ``(B, latent)``."""

    def __init__(self, num_classes: int, latent_dim: int, width: int, channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(channels + num_classes, width, 4, 2, 1),  # 28 -> 14
            nn.GroupNorm(NORM_GROUPS, width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # 14 -> 7
            nn.GroupNorm(NORM_GROUPS, 2 * width),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_stats = nn.Linear(2 * width * 49, 2 * latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        planes = one_hot(y, self.num_classes)[:, :, None, None]
        planes = planes.expand(-1, -1, x.shape[2], x.shape[3])  # (B, C, 28, 28)
        mu, logvar = self.to_stats(self.features(torch.cat([x, planes], 1))).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


class Decoder(nn.Module):
    """``(z (B, latent), y (B,)) -> pixel logits (B, 1, 28, 28)``."""

    def __init__(self, num_classes: int, latent_dim: int, width: int, channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        self.project = nn.Linear(latent_dim + num_classes, 2 * width * 49)
        self.body = nn.Sequential(
            nn.GroupNorm(NORM_GROUPS, 2 * width),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),  # 7 -> 14
            nn.GroupNorm(NORM_GROUPS, width),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),  # 14 -> 28
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, one_hot(y, self.num_classes)], 1))
        return self.body(h.view(-1, 2 * self.width, 7, 7))


class MlpEncoder(nn.Module):
    """``(x (B,C,H,W), y) -> (mu, logvar)`` through one hidden layer."""

    def __init__(self, num_classes: int, latent_dim: int, hidden: int, pixels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Linear(pixels + num_classes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.net(torch.cat([x.flatten(1), one_hot(y, self.num_classes)], 1))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


class MlpDecoder(nn.Module):
    """``(z (B, latent), y) -> pixel logits (B, C, H, W)`` through one hidden layer."""

    def __init__(
        self, num_classes: int, latent_dim: int, hidden: int, shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shape = shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim + num_classes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, math.prod(shape)),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.net(torch.cat([z, one_hot(y, self.num_classes)], 1))
        return h.view(-1, *self.shape)


@TASKS.register("cvae")
class ConditionalVae(Task):
    """Class-conditional VAE; encoder and decoder are federated by default."""

    Params = VaeParams
    params: VaeParams

    def build(self) -> dict[str, nn.Module]:
        p = self.params
        if p.architecture == "mlp":
            shape = tuple(self.image_shape)
            return {
                "encoder": MlpEncoder(self.num_classes, p.latent_dim, p.hidden, math.prod(shape)),
                "decoder": MlpDecoder(self.num_classes, p.latent_dim, p.hidden, shape),
            }
        c = self.image_shape[0]
        return {
            "encoder": Encoder(self.num_classes, p.latent_dim, p.width, c),
            "decoder": Decoder(self.num_classes, p.latent_dim, p.width, c),
        }

    def federated_modules(self) -> list[str]:
        return list(self.params.federate)

    def private_data_modules(self) -> list[str]:
        # The encoder reads real images; the decoder's loss compares against them.
        return ["encoder", "decoder"]

    def train_local(
        self, data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        enc, dec = self.modules["encoder"], self.modules["decoder"]
        params = [*enc.parameters(), *dec.parameters()]
        with self.local_training(generator) as local:
            opt = local.optimizer(
                torch.optim.Adam(params, lr=float(config.get("lr", p.lr)), betas=p.betas),
                ["encoder", "decoder"],
            )
            enc.train()
            dec.train()
            batches = local.batches(data, p.batch_size)
            sum_rec = sum_kl = 0.0
            for _ in range(steps):
                x, y = next(batches)
                mu, logvar = enc(x, y)
                eps = torch.randn(mu.shape, generator=generator)
                z = mu + eps * (0.5 * logvar).exp()  # reparameterisation
                logits = dec(z, y)
                # Per-example sums, batch means: the ELBO in nats per image.
                rec = bernoulli_nll(logits, x).mean()
                kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
                loss = rec + p.beta * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sum_rec += float(rec.detach())
                sum_kl += float(kl.detach())
        n = max(steps, 1)
        return {
            "loss/reconstruction": sum_rec / n,
            "loss/kl": sum_kl / n,
            "loss/elbo": (sum_rec + sum_kl) / n,
        }

    def functional_training(self) -> VaeFunctionalTraining:
        """``train_local``'s iteration as a pure function (the vectorized backend's)."""
        p = self.params
        return VaeFunctionalTraining(
            self.modules["encoder"],
            self.modules["decoder"],
            num_classes=self.num_classes,
            latent_dim=p.latent_dim,
            lr=p.lr,
            betas=p.betas,
            beta=p.beta,
        )

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dec = self.modules["decoder"]
        dec.eval()
        z = torch.randn(labels.shape[0], self.params.latent_dim, generator=generator)
        return torch.sigmoid(dec(z, labels))
