"""The DDPM's local step as a pure function (``fedgen.tasks.functional``).

The same iteration as ``ConditionalDdpm.train_local``: a timestep, noise and label
dropout drawn from the client's generator in its order, the noised image through the
UNet, the per-example mean squared error against the noise, weighted (Min-SNR) when the
task's ``snr_gamma`` is set (padding masked out), and one
Adam step on the UNet's trained tensors. The UNet (GroupNorm, no BatchNorm, no dropout)
runs under ``vmap`` as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from fedgen.tasks.diffusion_process import GaussianDiffusion
from fedgen.tasks.functional import (
    Batches,
    FunctionalTraining,
    ModuleTensors,
    OptimizerState,
    StepInputs,
    masked_mean,
)
from fedgen.tasks.functional_optim import adam_init, adam_step


def draw_step(
    images: torch.Tensor,
    labels: torch.Tensor,
    timesteps: int,
    label_dropout: float,
    num_classes: int,
    generator: torch.Generator,
) -> StepInputs:
    """One training step's inputs from a batch, drawn in the order both paths share:
    timesteps, noise, label dropout (a dropped label becomes class ``num_classes``)."""
    x0 = images * 2 - 1  # [0, 1] -> [-1, 1], the process's data range
    b = x0.shape[0]
    t = torch.randint(timesteps, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    dropped = torch.rand(b, generator=generator) < label_dropout
    y = torch.where(dropped, torch.full_like(labels, num_classes), labels)
    return {"x0": x0, "t": t, "noise": noise, "y": y}


class DdpmFunctionalTraining(FunctionalTraining):
    """``ConditionalDdpm``'s step for ``vmap`` (``ConditionalDdpm.functional_training``)."""

    # benchmarks/results/speed.md (2026-12-03): vmap's batching rules decompose the
    # GroupNorm and SiLU backward passes into elementwise ops that cost more than the
    # per-client calls they save at a UNet's batch sizes.
    slower_on_cpu = (
        "the ddpm UNet's vectorized step measured 0.66-0.72x the sequential speed on one "
        "CPU core (10 and 100 clients of 5 steps of 10 images); use backend process_pool "
        "for speed on a CPU"
    )

    def __init__(
        self,
        unet: nn.Module,
        diffusion: GaussianDiffusion,
        *,
        num_classes: int,
        label_dropout: float,
        lr: float,
        betas: tuple[float, float],
        snr_gamma: float | None = None,
    ) -> None:
        self.unet = unet
        self.snr_gamma = snr_gamma
        self.diffusion = diffusion
        self.num_classes = num_classes
        self.label_dropout = label_dropout
        self.lr = lr
        self.betas = betas

    def _trained(self, tensors: ModuleTensors) -> dict[str, torch.Tensor]:
        """The tensors train_local's Adam steps: the UNet's trainable parameters."""
        names = {k for k, q in self.unet.named_parameters() if q.requires_grad}
        return {k: v for k, v in tensors["unet"].items() if k in names}

    def init_state(self, tensors: ModuleTensors, config: dict[str, Any]) -> OptimizerState:
        return {"unet": adam_init(self._trained(tensors))}

    def draw(self, batches: Batches, generator: torch.Generator) -> StepInputs:
        images, labels = next(batches)
        return draw_step(
            images,
            labels,
            self.diffusion.timesteps,
            self.label_dropout,
            self.num_classes,
            generator,
        )

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
        x0, t, noise, y, m = inputs["x0"], inputs["t"], inputs["noise"], inputs["y"], masks["x0"]
        trained = self._trained(tensors)
        x_t = self.diffusion.q_sample(x0, t, noise)
        weights = self.diffusion.loss_weights(t, self.snr_gamma)

        def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            pred = functional_call(self.unet, {**tensors["unet"], **params}, (x_t, t, y))
            # One weighted squared error per example (mean over pixels), the batch's mean.
            return masked_mean((pred - noise).pow(2).flatten(1).mean(1) * weights, m)

        grads, value = grad_and_value(loss)(trained)
        new, new_state = adam_step(trained, grads, state["unet"], step, lr, self.betas)
        return {"unet": {**tensors["unet"], **new}}, {"unet": new_state}, {"loss/denoising": value}
