"""The conditional GAN's local step as a pure function (``fedgen.tasks.functional``).

The same iteration as ``ConditionalGan.train_local``: a discriminator step on a real
batch and the generator's fakes, then a non-saturating generator step through the
updated discriminator, each with its own Adam. With ``fake_labels="data"`` the
generator's step reuses the fakes of the discriminator step (the generator has not
changed in between), so its gradient comes from the forward pass's ``vjp`` instead
of a second forward pass, as ``train_local`` reuses its autograd graph. With the
mode-seeking term (``mode_seeking`` > 0) the generator's step runs on a fresh paired
batch instead: one set of labels, two latents per label, as ``train_local`` draws it.
With AC-GAN's class head (``aux_weight`` > 0) the discriminator's loss adds the head's
cross-entropy on real labels, and the generator's the head's cross-entropy on its fakes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vjp

from fedgen.tasks.functional import (
    Batches,
    FunctionalTraining,
    ModuleTensors,
    OptimizerState,
    StepInputs,
    masked_mean,
)
from fedgen.tasks.functional_optim import adam_init, adam_step


class GanFunctionalTraining(FunctionalTraining):
    """``ConditionalGan``'s step for ``vmap`` (built by ``ConditionalGan.functional_training``).

    Args:
        generator, discriminator: the task's modules (architecture only: the tensors
            come with each call).
        uniform_labels: ``fake_labels == "uniform"``.
        mode_seeking: the weight of MSGAN's term in the generator's loss (0: none).
        aux_weight: the weight of AC-GAN's class cross-entropy in both losses (0: the
            discriminator has no class head).
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        *,
        num_classes: int,
        latent_dim: int,
        batch_size: int,
        lr: float,
        betas: tuple[float, float],
        uniform_labels: bool,
        mode_seeking: float = 0.0,
        aux_weight: float = 0.0,
    ) -> None:
        self.generator = generator
        self.discriminator = discriminator
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.batch_size = batch_size
        self.lr = lr
        self.betas = betas
        self.uniform_labels = uniform_labels
        self.mode_seeking = mode_seeking
        self.aux_weight = aux_weight

    def init_state(self, tensors: ModuleTensors, config: dict[str, Any]) -> OptimizerState:
        return {
            "generator": adam_init(self._trained(tensors, "generator")),
            "discriminator": adam_init(self._trained(tensors, "discriminator")),
        }

    def _trained(self, tensors: ModuleTensors, module: str) -> dict[str, torch.Tensor]:
        """The tensors of ``module`` its optimizer steps: its parameters (no buffers here)."""
        names = dict(getattr(self, module).named_parameters())
        return {k: v for k, v in tensors[module].items() if k in names}

    def draw(self, batches: Batches, generator: torch.Generator) -> StepInputs:
        # The draws of one iteration of train_local, in its order.
        real, y = next(batches)
        b = real.shape[0]
        inputs = {"real": real * 2 - 1, "y": y}  # [0,1] -> [-1,1], the generator's range
        inputs["y_fake"] = (
            torch.randint(self.num_classes, (b,), generator=generator) if self.uniform_labels else y
        )
        inputs["z"] = torch.randn(b, self.latent_dim, generator=generator)
        if self.mode_seeking > 0:
            # train_local's _paired_batch: h labels, then 2h latents (row i pairs with
            # row h + i). Kept as two inputs of h rows: padded alike, they stay paired.
            if self.uniform_labels:
                half = torch.randint(
                    self.num_classes, (max(self.batch_size // 2, 1),), generator=generator
                )
            else:
                half = y[: (b + 1) // 2]
            z_pair = torch.randn(2 * half.shape[0], self.latent_dim, generator=generator)
            inputs["y_half"] = half
            inputs["z_a"], inputs["z_b"] = z_pair[: half.shape[0]], z_pair[half.shape[0] :]
        elif self.uniform_labels:
            inputs["y_g"] = torch.randint(self.num_classes, (self.batch_size,), generator=generator)
            inputs["z_g"] = torch.randn(self.batch_size, self.latent_dim, generator=generator)
        return inputs

    def step(
        self,
        tensors: ModuleTensors,
        state: OptimizerState,
        inputs: StepInputs,
        masks: dict[str, torch.Tensor],
        step: int,
        config: dict[str, Any],
    ) -> tuple[ModuleTensors, OptimizerState, dict[str, torch.Tensor]]:
        lr = float(config.get("lr", self.lr))
        g_all, d_all = tensors["generator"], tensors["discriminator"]
        g_params = self._trained(tensors, "generator")
        d_params = self._trained(tensors, "discriminator")
        real, y, y_fake, z = inputs["real"], inputs["y"], inputs["y_fake"], inputs["z"]
        m = masks["real"]  # (B,): 1 for a real example, 0 for padding

        def generate(g: dict[str, torch.Tensor], z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return functional_call(self.generator, {**g_all, **g}, (z, y))

        def discriminate(
            d: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            return functional_call(self.discriminator, {**d_all, **d}, (x, y))

        def critic(
            d: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor | float]:
            """The logits of ``x``, and the class head's weighted cross-entropy on ``y``
            (0 without a head)."""
            if self.aux_weight == 0:
                return discriminate(d, x, y), 0.0
            logits, classes = functional_call(
                self.discriminator, {**d_all, **d}, (x, y), {"with_classes": True}
            )
            entropy = F.cross_entropy(classes, y, reduction="none")
            return logits, self.aux_weight * masked_mean(entropy, mask)

        def fooled(
            d: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
        ) -> torch.Tensor:
            """The generator's non-saturating loss on fakes ``x`` (plus the class term)."""
            logits, classes = critic(d, x, y, mask)
            return masked_mean(F.softplus(-logits), mask) + classes

        # fake (B, C, H, W) and the pullback of the generator at these inputs.
        pullback = vjp(lambda g: generate(g, z, y_fake), g_params)
        fake, generator_vjp = pullback[0], pullback[1]

        def loss_d(d: dict[str, torch.Tensor]) -> torch.Tensor:
            # softplus(-D(real)) + softplus(D(fake)): BCE with logits; fakes held fixed.
            # The class head, if any, learns the real labels only.
            logits_real, classes = critic(d, real, y, m)
            loss = masked_mean(F.softplus(-logits_real), m) + masked_mean(
                F.softplus(discriminate(d, fake, y_fake)), m
            )
            return loss + classes

        grads_d, value_d = grad_and_value(loss_d)(d_params)
        d_new, state_d = adam_step(d_params, grads_d, state["discriminator"], step, lr, self.betas)
        extra: dict[str, torch.Tensor] = {}
        if self.mode_seeking > 0:
            y_half, z_a, z_b = inputs["y_half"], inputs["z_a"], inputs["z_b"]
            m_half = masks["y_half"]
            pairs, y_pairs = torch.cat([z_a, z_b]), torch.cat([y_half, y_half])
            m_pairs = torch.cat([m_half, m_half])
            h = z_a.shape[0]

            def loss_g_paired(g: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
                fake_g = generate(g, pairs, y_pairs)
                adversarial = fooled(d_new, fake_g, y_pairs, m_pairs)
                seeking = mode_seeking_term(fake_g, pairs, h, m_half)
                return adversarial + self.mode_seeking * seeking, (adversarial, seeking)

            grads_g, (value_g, seeking) = grad(loss_g_paired, has_aux=True)(g_params)
            extra["loss/mode_seeking"] = seeking
        elif self.uniform_labels:
            y_g, z_g = inputs["y_g"], inputs["z_g"]
            whole = torch.ones_like(y_g, dtype=real.dtype)  # a fixed-size batch: no padding

            def loss_g(g: dict[str, torch.Tensor]) -> torch.Tensor:
                return fooled(d_new, generate(g, z_g, y_g), y_g, whole)

            grads_g, value_g = grad_and_value(loss_g)(g_params)
        else:

            def loss_g_of_fake(x: torch.Tensor) -> torch.Tensor:
                return fooled(d_new, x, y, m)

            grad_fake, value_g = grad_and_value(loss_g_of_fake)(fake)
            (grads_g,) = generator_vjp(grad_fake)
        g_new, state_g = adam_step(g_params, grads_g, state["generator"], step, lr, self.betas)
        new_tensors = {
            "generator": {**g_all, **g_new},
            "discriminator": {**d_all, **d_new},
        }
        losses = {"loss/discriminator": value_d, "loss/generator": value_g, **extra}
        return new_tensors, {"generator": state_g, "discriminator": state_d}, losses


def mode_seeking_term(
    images: torch.Tensor, z: torch.Tensor, half: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSGAN's term for a batch whose first ``half`` rows pair with the next ``half``
    (one label, two latents): the inverse of the images' mean absolute distance over the
    latents', so it is large when different latents give one image. With ``mask``
    (``(half,)``, 0 for a padded pair) only the real pairs count."""
    images_gap = (images[:half] - images[half : 2 * half]).abs()
    latent_gap = (z[:half] - z[half : 2 * half]).abs()
    if mask is None:
        return 1 / (images_gap.mean() / latent_gap.mean() + 1e-5)
    # Every pair has as many elements: the mean of the real pairs' means.
    images_mean = masked_mean(images_gap.flatten(1).mean(dim=1), mask)
    return 1 / (images_mean / masked_mean(latent_gap.mean(dim=1), mask) + 1e-5)
