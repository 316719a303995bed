"""HuSCF-GAN's conditional GAN as a task: two networks of five blocks, split or whole.

Tawfilis, Amer, El-Aasser and Elshabrawy 2025, "HuSCF-GAN: Heterogeneous
U-shaped Split Clustered Federated GAN" (arXiv 2507.12979). The networks are
``fedgen.split.huscf_gan``'s G1..G5 and D1..D5, held as lists of blocks so
that the split backend (``fedgen.engine.backends.split``) can cut them per
client; their tensors are keyed ``generator.<block>.<tensor>``.

``train_local`` trains the *whole* model on one client, unsplit: run with an
ordinary backend and FedAvg, this is the "FedAvg cGAN, whole model on every
client" baseline on the same architecture; centralized, it is the ceiling. The
loss is the published code's: discriminator on the fakes (detached) and the
real batch, one step, then the generator through it, all binary cross-entropy
on sigmoid outputs (non-saturating). Fakes take the labels of the real batch,
as in the split trainer.

``architecture`` picks a preset: ``faithful`` (the published network, with
BatchNorm), ``groupnorm`` (GroupNorm instead: no batch statistics shared across
clients or domains; the default, since fedgen's federated tasks avoid
BatchNorm) or ``light`` (GroupNorm, a quarter of the channels). ``aux_weight``
> 0 adds a class head to D5 and the AC-GAN class loss (``fedgen.split.gan_loss``):
fedgen's variant; 0 is the published loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.errors import ConfigError
from fedgen.registry import TASKS
from fedgen.split.gan_loss import gan_loss
from fedgen.split.huscf_gan import (
    CLUSTER_BLOCK,
    FAITHFUL,
    GROUPNORM,
    LIGHT,
    HuscfGanSpec,
    discriminator_blocks,
    generator_blocks,
)
from fedgen.tasks.base import Task, TaskParams

PRESETS: dict[str, HuscfGanSpec] = {"faithful": FAITHFUL, "groupnorm": GROUPNORM, "light": LIGHT}


class HuscfGanParams(TaskParams):
    """Hyper-parameters of the HuSCF-GAN cGAN (Adam 2e-4, betas (0.5, 0.999), batch 64)."""

    architecture: Literal["faithful", "groupnorm", "light"] = "groupnorm"
    #: Channel multiplier overriding the preset's (1.0 = the published widths).
    width: float | None = Field(None, gt=0)
    #: Weight of the AC-GAN class loss on a class head of D5 (0: published, no head).
    aux_weight: float = Field(0.0, ge=0)
    #: Convolutions in channels-last layout (NHWC): the same networks, in other rounding.
    #: On S1 in bfloat16 an iteration ran 1.06x as fast (median of three side-by-side
    #: pairs, 0.995-1.20x; float32 about 1.0x once each process's matmul speed is
    #: divided out): ``benchmarks/split_speed.py --versus``, ``speed.md`` 2026-12-07.
    channels_last: bool = False


class BlockChain(nn.ModuleList):
    """Blocks run in order; the first takes several inputs, e.g. ``(z, labels)``."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        h = self[0](*inputs)
        for block in self[1:]:
            h = block(h)
        return h


def spec_for(params: HuscfGanParams, num_classes: int) -> HuscfGanSpec:
    """The architecture spec of ``params`` for ``num_classes`` classes."""
    spec = PRESETS[params.architecture]
    changes: dict[str, Any] = {
        "num_classes": num_classes,
        "aux_classifier": params.aux_weight > 0,
        "channels_last": params.channels_last,
    }
    if params.width is not None:
        changes["width"] = params.width
    return dataclasses.replace(spec, **changes)


@TASKS.register("huscf_cgan")
class HuscfGan(Task):
    """The HuSCF-GAN cGAN (module docstring); the split backend trains it U-shaped."""

    Params = HuscfGanParams
    params: HuscfGanParams
    spec: HuscfGanSpec

    def build(self) -> dict[str, nn.Module]:
        if tuple(self.image_shape) != (1, 28, 28):
            raise ConfigError(
                f"huscf_cgan is built for 1x28x28 images, the data has {self.image_shape}; "
                "use MNIST-like sources"
            )
        self.spec = spec_for(self.params, self.num_classes)
        return {
            "generator": BlockChain(generator_blocks(self.spec)),
            "discriminator": BlockChain(discriminator_blocks(self.spec)),
        }

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    #: Discriminator block whose server-side output HuSCF-GAN clusters clients by (D3).
    capture_block = CLUSTER_BLOCK

    def generator_blocks(self) -> list[nn.Module]:
        """G1..G5, the live modules (split learning copies them per client and server)."""
        return list(self.modules["generator"].children())

    def discriminator_blocks(self) -> list[nn.Module]:
        """D1..D5, the live modules."""
        return list(self.modules["discriminator"].children())

    def private_data_modules(self) -> list[str]:
        return ["discriminator"]  # only D reads real images

    def privacy_problems(self) -> list[str]:
        problems = [
            "task huscf_cgan: the generator's step uses the labels of private examples "
            "without noise; use task cgan with fake_labels=uniform for DP-SGD"
        ]
        if self.params.architecture == "faithful":
            problems.append(
                "task.params.architecture=faithful uses BatchNorm, which DP-SGD (Opacus) "
                "rejects; use architecture=groupnorm or light"
            )
        return problems

    def train_local(
        self, data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        G, D = self.modules["generator"], self.modules["discriminator"]
        lr = float(config.get("lr", p.lr))
        # Fresh optimizers per round: optimizer state is not federated (as FedAvg does).
        with self.local_training(generator) as local:
            opt_g = local.optimizer(
                torch.optim.Adam(G.parameters(), lr=lr, betas=p.betas), ["generator"]
            )
            opt_d = local.optimizer(
                torch.optim.Adam(D.parameters(), lr=lr, betas=p.betas), ["discriminator"]
            )
            G.train()
            D.train()
            batches = local.batches(data, p.batch_size)
            sums = {"discriminator": 0.0, "generator": 0.0}
            for _ in range(steps):
                real, y = next(batches)
                real = real * 2 - 1  # [0, 1] -> [-1, 1], the generator's Tanh range
                z = torch.randn(real.shape[0], self.latent_dim, generator=generator)
                fake = G(z, y)  # (B, 1, 28, 28)
                # (B, 1) probabilities, or (B, 1 + K) with class logits
                out_fake, out_real = D(fake.detach(), y), D(real, y)
                loss_d = gan_loss(out_fake, y, 0.0) + gan_loss(
                    out_real, y, 1.0, classify=True, aux_weight=p.aux_weight
                )
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                loss_g = gan_loss(D(fake, y), y, 1.0, classify=True, aux_weight=p.aux_weight)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                sums["discriminator"] += float(loss_d.detach())
                sums["generator"] += float(loss_g.detach())
        n = max(steps, 1)
        return {f"loss/{k}": v / n for k, v in sums.items()}

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        G = self.modules["generator"]
        mode = G.training
        G.eval()  # BatchNorm (faithful) uses its running statistics
        try:
            z = torch.randn(labels.shape[0], self.latent_dim, generator=generator)
            return (G(z, labels) + 1) / 2
        finally:
            G.train(mode)  # as it was: sampling must not change how training runs next
