"""TVAE's local step as a pure function (``fedgen.tasks.functional``).

The same iteration as ``TvaeTask.train_local``: a batch of the client's encoded rows,
the reparameterisation noise from the client's own generator, the loss of
``TvaeTask.loss`` written per row (so padded rows of a small shard can be masked out:
the batch mean of per-row sums equals the task's sums over the batch divided by its
size), one Adam step with torch's coupled weight decay over encoder and decoder, and
the decoder's standard deviations clamped to [0.01, 1] as after every step there.

Categorical and mode spans use ``-(log_softmax * one_hot).sum``: the encoded block is
an exact one-hot, so this is ``cross_entropy`` against its argmax, without the class-
index targets whose range check ``vmap`` refuses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from fedgen.data.table_encoder import Span
from fedgen.tasks.functional import (
    Batches,
    FunctionalTraining,
    ModuleTensors,
    OptimizerState,
    StepInputs,
    masked_mean,
)
from fedgen.tasks.functional_optim import adam_init, adam_step

#: TVAE keeps the likelihood's standard deviations in this range after every step.
SIGMA_RANGE = (0.01, 1.0)


def row_reconstruction(
    out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, spans: list[Span]
) -> torch.Tensor:
    """TVAE's reconstruction term of each row ``(B,)``: Gaussian offsets (with their
    ``log sigma``), cross-entropy of one-hots, from decoder outputs ``out (B, dim)``."""
    total = out.new_zeros(out.shape[0])
    for span in spans:
        a, b = span.start, span.start + span.width
        if span.activation == "tanh":
            s = sigma[a:b]
            total = total + ((x[:, a:b] - torch.tanh(out[:, a:b])) ** 2 / 2 / s**2).sum(1)
            total = total + torch.log(s).sum()
        else:
            total = total - (torch.log_softmax(out[:, a:b], dim=1) * x[:, a:b]).sum(1)
    return total


def row_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of each row's posterior to the standard normal prior ``(B,)``."""
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)


class TvaeFunctionalTraining(FunctionalTraining):
    """``TvaeTask``'s step for ``vmap`` (built by ``TvaeTask.functional_training``)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        spans: list[Span],
        latent_dim: int,
        lr: float,
        weight_decay: float,
        loss_factor: float,
    ) -> None:
        self.modules = {"encoder": encoder, "decoder": decoder}
        self.spans = spans
        self.latent_dim = latent_dim
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss_factor = loss_factor

    def init_state(self, tensors: ModuleTensors, config: dict[str, Any]) -> OptimizerState:
        # Both networks are parameters only (no buffers): one Adam state per module.
        return {name: adam_init(tensors[name]) for name in self.modules}

    def draw(self, batches: Batches, generator: torch.Generator) -> StepInputs:
        x, _ = next(batches)
        eps = torch.randn((x.shape[0], self.latent_dim), generator=generator)
        return {"x": x, "eps": eps}

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
        x, eps, m = inputs["x"], inputs["eps"], masks["x"]

        def losses(params: ModuleTensors) -> tuple[torch.Tensor, Any]:
            mu, logvar = functional_call(self.modules["encoder"], params["encoder"], (x,))
            z = mu + eps * torch.exp(0.5 * logvar)
            out = functional_call(self.modules["decoder"], params["decoder"], (z,))
            sigma = params["decoder"]["sigma"]
            recon = masked_mean(row_reconstruction(out, x, sigma, self.spans), m)
            kl = masked_mean(row_kl(mu, logvar), m)
            return self.loss_factor * recon + kl, (recon, kl)

        grads, (_, (recon, kl)) = grad_and_value(losses, has_aux=True)(tensors)
        new_tensors: ModuleTensors = {}
        new_state: OptimizerState = {}
        for name in self.modules:
            new_tensors[name], new_state[name] = adam_step(
                tensors[name],
                grads[name],
                state[name],
                step,
                lr,
                (0.9, 0.999),  # torch.optim.Adam's defaults, as train_local's optimizer
                weight_decay=self.weight_decay,
            )
        sigma = new_tensors["decoder"]["sigma"]
        new_tensors["decoder"] = {**new_tensors["decoder"], "sigma": sigma.clamp(*SIGMA_RANGE)}
        return new_tensors, new_state, {"loss/reconstruction": recon, "loss/kl": kl}
