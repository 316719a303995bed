"""The conditional VAE's local step as a pure function (``fedgen.tasks.functional``).

The same iteration as ``ConditionalVae.train_local``: encode, reparameterise with the
client's own noise, decode, and one Adam step on the negative ELBO (per-example sums,
batch means) over encoder and decoder together. The networks take one-hot labels as
well as class indices; the step passes a comparison one-hot, because ``F.one_hot``
checks its labels with ``.item()``, which ``vmap`` refuses: the same numbers (the
oracle test holds it to ``train_local``), for either architecture.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from fedgen.tasks.bernoulli import bernoulli_nll
from fedgen.tasks.functional import (
    Batches,
    FunctionalTraining,
    ModuleTensors,
    OptimizerState,
    StepInputs,
    masked_mean,
)
from fedgen.tasks.functional_optim import adam_init, adam_step


class VaeFunctionalTraining(FunctionalTraining):
    """``ConditionalVae``'s step for ``vmap`` (built by ``ConditionalVae.functional_training``)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        num_classes: int,
        latent_dim: int,
        lr: float,
        betas: tuple[float, float],
        beta: float,
    ) -> None:
        self.modules = {"encoder": encoder, "decoder": decoder}
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.lr = lr
        self.betas = betas
        self.beta = beta

    def _trained(self, tensors: ModuleTensors) -> dict[str, dict[str, torch.Tensor]]:
        """Per module, the tensors the optimizer steps: parameters, not buffers."""
        return {
            name: {k: v for k, v in tensors[name].items() if k in dict(m.named_parameters())}
            for name, m in self.modules.items()
        }

    def init_state(self, tensors: ModuleTensors, config: dict[str, Any]) -> OptimizerState:
        trained = self._trained(tensors)
        return {name: adam_init(params) for name, params in trained.items()}

    def draw(self, batches: Batches, generator: torch.Generator) -> StepInputs:
        x, y = next(batches)
        eps = torch.randn((x.shape[0], self.latent_dim), generator=generator)
        return {"x": x, "y": y, "eps": eps}

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        # F.one_hot checks its labels' range with .item(), which vmap refuses: (B, classes).
        return (y[:, None] == torch.arange(self.num_classes)).float()

    def _encode(
        self, tensors: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's ``forward`` on ``tensors``, with a vmap-safe one-hot."""
        stats: tuple[torch.Tensor, torch.Tensor] = functional_call(
            self.modules["encoder"], tensors, (x, self._one_hot(y))
        )
        return stats

    def _decode(
        self, tensors: dict[str, torch.Tensor], z: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's ``forward`` on ``tensors``, with a vmap-safe one-hot."""
        logits: torch.Tensor = functional_call(
            self.modules["decoder"], tensors, (z, self._one_hot(y))
        )
        return logits

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
        x, y, eps, m = inputs["x"], inputs["y"], inputs["eps"], masks["x"]
        trained = self._trained(tensors)

        def losses(params: dict[str, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, Any]:
            enc = {**tensors["encoder"], **params["encoder"]}
            dec = {**tensors["decoder"], **params["decoder"]}
            mu, logvar = self._encode(enc, x, y)  # (B, latent) each
            z = mu + eps * (0.5 * logvar).exp()  # reparameterisation
            logits = self._decode(dec, z, y)  # (B, C, H, W)
            rec = masked_mean(bernoulli_nll(logits, x), m)
            kl = masked_mean(-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1), m)
            return rec + self.beta * kl, (rec, kl)

        grads, (_, (rec, kl)) = grad_and_value(losses, has_aux=True)(trained)
        new_tensors: ModuleTensors = {}
        new_state: OptimizerState = {}
        for name, params in trained.items():
            # One Adam over both modules in train_local: per-tensor arithmetic, the same.
            new, new_state[name] = adam_step(params, grads[name], state[name], step, lr, self.betas)
            new_tensors[name] = {**tensors[name], **new}
        metrics = {"loss/reconstruction": rec, "loss/kl": kl, "loss/elbo": rec + kl}
        return new_tensors, new_state, metrics
