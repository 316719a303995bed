"""Conditional GAN: a small DCGAN without BatchNorm and a projection discriminator.

Generator after Radford et al. 2016 (DCGAN) with GroupNorm in place of
BatchNorm: batch statistics break DP-SGD and vectorized clients, and
GroupNorm keeps working when a client's batch holds one class. The
discriminator conditions on the label by projection (Miyato & Koyama 2018,
"cGANs with Projection Discriminator"), which ties samples to their class
more tightly than concatenating a label plane. Loss: non-saturating BCE
(Goodfellow et al. 2014) by default, or the hinge loss with spectral normalization
of the discriminator (Miyato et al. 2018, the SNGAN / projection-cGAN recipe),
optionally several discriminator steps per generator step, and optionally MSGAN's
mode-seeking term on the generator (Mao et al. 2019).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedgen.data.client_data import ClientData
from fedgen.modality import TensorKind
from fedgen.registry import TASKS
from fedgen.tasks.base import Task, TaskParams
from fedgen.tasks.gan_functional import GanFunctionalTraining, mode_seeking_term


class GanParams(TaskParams):
    """Hyper-parameters of the conditional GAN."""

    latent_dim: int = 64
    embed_dim: int = 16
    generator_width: int = 32
    discriminator_width: int = 32
    federate: list[str] = Field(default_factory=lambda: ["generator", "discriminator"])
    #: Labels of fake images: those of the real batch ("data"), or drawn uniformly
    #: ("uniform"), which DP-SGD needs: the generator's step is not privatized, so it
    #: must not read the labels of private examples.
    fake_labels: Literal["data", "uniform"] = "data"
    #: ``bce``: non-saturating BCE; ``hinge``: D minimizes relu(1 - D(real)) + relu(1 +
    #: D(fake)), G minimizes -D(fake) (Lim & Ye 2017; Miyato et al. 2018).
    loss: Literal["bce", "hinge"] = "bce"
    #: Spectral normalization of every discriminator layer (one power iteration per
    #: forward pass; its vectors are buffers, averaged with the weights).
    spectral_norm: bool = False
    #: Discriminator steps per generator step, each on a fresh real batch.
    d_steps: int = Field(1, ge=1)
    #: AC-GAN (Odena et al. 2017): a class head on the discriminator's features, trained
    #: on real images' labels, whose cross-entropy on fakes the generator also minimizes,
    #: both weighted by this (0: no head, the projection discriminator alone).
    aux_weight: float = Field(0.0, ge=0)
    #: MSGAN (Mao et al. 2019, "Mode Seeking GANs"): weight of the generator's
    #: mode-seeking term ``1 / (mean|G(z1, y) - G(z2, y)| / mean|z1 - z2| + 1e-5)``
    #: over pairs of latents with one label, which makes two latents that land on one
    #: image cost the generator (against mode collapse). It reads only the generator, so
    #: under DP-SGD it is post-processing and spends no privacy. 0: off.
    mode_seeking: float = Field(0.0, ge=0)


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

    def __init__(
        self,
        num_classes: int,
        width: int,
        channels: int,
        spectral_norm: bool = False,
        aux_classifier: bool = False,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),  # 28 -> 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # 14 -> 7
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        feat_dim = 2 * width * 7 * 7
        self.head: nn.Module = nn.Linear(feat_dim, 1)
        self.embed: nn.Module = nn.Embedding(num_classes, feat_dim)
        nn.init.normal_(self.embed.weight, std=0.01)
        #: AC-GAN's class head (not spectrally normalized: it is a classifier).
        self.classify = nn.Linear(feat_dim, num_classes) if aux_classifier else None
        if spectral_norm:
            sn = nn.utils.parametrizations.spectral_norm
            self.features[0] = sn(self.features[0])
            self.features[2] = sn(self.features[2])
            self.head = sn(self.head)
            self.embed = sn(self.embed)

    def forward(self, x: torch.Tensor, y: torch.Tensor, with_classes: bool = False) -> Any:
        """The logits ``(B,)``; with ``with_classes`` also the class head's (the form
        ``torch.func.functional_call`` reaches, which only calls ``forward``)."""
        logits, classes = self.logits_and_classes(x, y)
        return (logits, classes) if with_classes else logits

    def logits_and_classes(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The real/fake logits, and the class head's logits (None without a head)."""
        h = self.features(x)  # (B, 2w*49)
        logits = self.head(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)
        return logits, None if self.classify is None else self.classify(h)


FEDERATED = TensorKind.FEDERATED
#: Draws of best-of-m sampling that pass through the networks at once (memory bound).
BEST_OF_BATCH = 4096


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
                self.num_classes,
                p.discriminator_width,
                channels,
                p.spectral_norm,
                aux_classifier=p.aux_weight > 0,
            ),
        }

    def federated_modules(self) -> list[str]:
        return list(self.params.federate)

    def private_data_modules(self) -> list[str]:
        # Only the discriminator sees real images; the generator learns through it.
        return ["discriminator"]

    def private_batches_per_step(self) -> int:
        # Each of a step's d_steps discriminator updates draws its own batch of real data.
        return self.params.d_steps

    def privacy_problems(self) -> list[str]:
        problems = []
        if self.params.fake_labels == "data":
            problems.append(
                "task.params.fake_labels=data: the generator's step uses the labels of "
                "private examples without noise; set task.params.fake_labels=uniform"
            )
        if self.params.aux_weight > 0:
            problems.append(
                "task.params.aux_weight>0: the AC-GAN head is not supported under DP-SGD "
                "(its second forward pass bypasses Opacus's module wrapper); set "
                "task.params.aux_weight=0"
            )
        if self.params.spectral_norm:
            # Its power iteration mixes every example of a batch into the normalized
            # weight, which per-example gradients cannot bound.
            problems.append(
                "task.params.spectral_norm=true: the power iteration mixes the examples of "
                "a batch, so per-example clipping does not bound one example's influence; "
                "set task.params.spectral_norm=false"
            )
        return problems

    def train_local(
        self, data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        p = self.params
        G, D = self.modules["generator"], self.modules["discriminator"]
        lr = float(config.get("lr", p.lr))
        # Fresh optimizers per round: optimizer state is not federated (standard FedAvg).
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
            sum_d = sum_g = sum_ms = 0.0
            for _ in range(steps):
                for _ in range(p.d_steps):
                    real, y = next(batches)
                    real = real * 2 - 1  # [0,1] -> [-1,1], the generator's range
                    b = real.shape[0]
                    y_fake = y if p.fake_labels == "data" else self._uniform_labels(b, generator)
                    z = torch.randn(b, p.latent_dim, generator=generator)
                    fake = G(z, y_fake)
                    # Under DP-SGD fake i is clipped together with real i (one per-sample
                    # term). Real before fake, as before these options existed: the same
                    # order of operations keeps the default run's figures bit for bit.
                    if p.aux_weight > 0:
                        out_real, cls_real = self._with_classes(real, y)
                    else:
                        out_real, cls_real = D(real, y), None
                    loss_d = self._discriminator_loss(out_real, D(fake.detach(), y_fake))
                    if cls_real is not None:  # AC-GAN: the head learns real labels only
                        loss_d = loss_d + p.aux_weight * F.cross_entropy(cls_real, y)
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()
                if p.mode_seeking > 0:
                    fake_g, y_g, pair = self._paired_batch(y, generator)
                elif p.fake_labels == "data":
                    # Non-saturating loss, labels drawn from the client's own data.
                    fake_g, y_g = fake, y
                else:
                    # A fresh batch of fixed size: the generator's step must depend neither
                    # on private labels nor on how many examples the batch happened to hold.
                    y_g = self._uniform_labels(p.batch_size, generator)
                    fake_g = G(torch.randn(p.batch_size, p.latent_dim, generator=generator), y_g)
                if p.aux_weight > 0:  # and fakes the head classifies as their label
                    out_g, cls_g = self._with_classes(fake_g, y_g)
                    loss_g = self._generator_loss(out_g)
                    loss_g = loss_g + p.aux_weight * F.cross_entropy(cls_g, y_g)
                else:
                    loss_g = self._generator_loss(D(fake_g, y_g))
                sum_g += float(loss_g.detach())
                if p.mode_seeking > 0:
                    seeking = mode_seeking_term(fake_g, *pair)
                    sum_ms += float(seeking.detach())
                    loss_g = loss_g + p.mode_seeking * seeking
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                sum_d += float(loss_d.detach())
        n = max(steps, 1)
        out = {"loss/discriminator": sum_d / n, "loss/generator": sum_g / n}
        if p.mode_seeking > 0:  # the term itself; loss/generator stays the adversarial loss
            out["loss/mode_seeking"] = sum_ms / n
        return out

    def _paired_batch(
        self, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, int]]:
        """The generator's batch for the mode-seeking term: two halves with the same
        labels and their own latents; the images, labels and (latents, half)."""
        p = self.params
        if p.fake_labels == "data":
            half = y[: (y.shape[0] + 1) // 2]  # the real batch's labels (never under DP)
        else:  # a batch of fixed size, as without the term
            half = self._uniform_labels(max(p.batch_size // 2, 1), generator)
        y_g = torch.cat([half, half])
        z = torch.randn(y_g.shape[0], p.latent_dim, generator=generator)
        return self.modules["generator"](z, y_g), y_g, (z, half.shape[0])

    def _with_classes(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        D = self.modules["discriminator"]
        assert isinstance(D, ProjectionDiscriminator)  # no DP wrapper: refused with a head
        return D.logits_and_classes(x, y)

    def _discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.params.loss == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        # softplus(-D(real)) + softplus(D(fake)) is BCE with logits.
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def _generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        if self.params.loss == "hinge":
            return -fake.mean()
        return F.softplus(-fake).mean()  # non-saturating

    def functional_training(self) -> GanFunctionalTraining | None:
        """``train_local``'s iteration as a pure function (the vectorized backend's), for
        the BCE loss with one discriminator step and no spectral normalization (None
        otherwise: clients train sequentially)."""
        p = self.params
        if p.loss != "bce" or p.spectral_norm or p.d_steps != 1:
            return None
        return GanFunctionalTraining(
            self.modules["generator"],
            self.modules["discriminator"],
            num_classes=self.num_classes,
            latent_dim=p.latent_dim,
            batch_size=p.batch_size,
            lr=p.lr,
            betas=p.betas,
            uniform_labels=p.fake_labels == "uniform",
            mode_seeking=p.mode_seeking,
            aux_weight=p.aux_weight,
        )

    def _uniform_labels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.num_classes, (n,), generator=generator)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        G = self.modules["generator"]
        G.eval()
        z = torch.randn(labels.shape[0], self.params.latent_dim, generator=generator)
        return (G(z, labels) + 1) / 2

    def best_of_problems(self) -> list[str]:
        """Why ``sample_best_of`` would not score draws by the released discriminator
        here, each with its fix (empty: it would)."""
        problems = []
        D = self.modules["discriminator"]
        kept = [k for k in D.state_dict() if self.tensor_kind("discriminator", k) != FEDERATED]
        if kept:
            problems.append(
                f"best-of-m sampling scores draws by the federated discriminator, but its "
                f"tensors {kept[:3]} are not federated (a client's own, or never trained by "
                "the server's model); federate the whole discriminator, or draw plainly "
                "(best_of 1)"
            )
        if self.params.spectral_norm:
            problems.append(
                "best-of-m sampling with spectral_norm: the discriminator's power-iteration "
                "vectors are averaged across clients (and noised under DP), so its "
                "evaluation-time scale, and the order of its scores, cannot be trusted; "
                "draw plainly (best_of 1)"
            )
        return problems

    @torch.no_grad()
    def sample_best_of(
        self, labels: torch.Tensor, generator: torch.Generator, best_of: int
    ) -> torch.Tensor:
        """``sample``, each image the best of ``best_of`` draws by the discriminator's
        logit D(x, y): discriminator rejection sampling (Azadi et al. 2019) in its
        best-of-m form. It reads only the released model, so under DP it costs no
        privacy (post-processing). ``best_of`` 1 is ``sample``, draw for draw.
        """
        if best_of < 1:
            raise ValueError(f"best_of must be >= 1, got {best_of}")
        if best_of == 1:
            return self.sample(labels, generator)
        G, D = self.modules["generator"], self.modules["discriminator"]
        G.eval()
        D.eval()
        picked = []
        # At most BEST_OF_BATCH draws through the networks at once, whatever n * m.
        for chunk in labels.split(max(1, BEST_OF_BATCH // best_of)):
            n = chunk.shape[0]
            candidates = chunk.repeat_interleave(best_of)
            z = torch.randn(n * best_of, self.params.latent_dim, generator=generator)
            images = G(z, candidates)
            best = D(images, candidates).view(n, best_of).argmax(dim=1)
            picked.append(images.view(n, best_of, *images.shape[1:])[torch.arange(n), best])
        return (torch.cat(picked) + 1) / 2
