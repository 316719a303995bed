"""TVAE's local step as a pure function (``fedgen.tasks.functional``).

The same iteration as ``TvaeTask.train_local``: a batch of the client's encoded rows,
the reparameterisation noise from the client's own generator, the loss of
``TvaeTask.loss`` written per row (so padded rows of a small shard can be masked out:
the batch mean of per-row sums equals the task's sums over the batch divided by its
size), one Adam step with torch's coupled weight decay over encoder and decoder, and
the decoder's standard deviations clamped to [0.01, 1] as after every step there.

Categorical and mode spans use ``logsumexp(logits) - logit[target]`` with the target
read through the encoded one-hot (``RowReconstruction``): ``cross_entropy`` against its
argmax, without the class-index targets whose range check ``vmap`` refuses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from fedgen.data.table_encoder import Span
from fedgen.tasks.batched_mlp import batched_forward, batched_linear, supports_batched_forward
from fedgen.tasks.functional import (
    Batches,
    FunctionalTraining,
    ModuleTensors,
    OptimizerState,
    StepInputs,
    masked_mean,
)
from fedgen.tasks.tabular.condition_block import ConditionBlock, with_condition
from fedgen.tasks.tabular.optimizer_state import FunctionalAdams

#: TVAE keeps the likelihood's standard deviations in this range after every step.
SIGMA_RANGE = (0.01, 1.0)


class RowReconstruction:
    """TVAE's reconstruction term of each row, for one table's spans, in a few fused ops.

    Per row: for each offset, ``(x - tanh(out))^2 / (2 sigma^2) + log sigma``; for each
    one-hot span, its cross-entropy ``logsumexp(out_span) - out[target]``. The spans'
    logits are gathered into one padded ``(B, spans, widest)`` block for a single
    ``logsumexp``, and the offsets taken with a column mask: a constant number of ops
    whatever the number of columns (a loop over spans costs a dozen ops per span, and
    under ``vmap`` and ``grad`` each op's overhead outweighs a small table's arithmetic).
    """

    def __init__(self, spans: list[Span], dim: int) -> None:
        soft = [s for s in spans if s.activation != "tanh"]
        widest = max((s.width for s in soft), default=1)
        index = torch.zeros(len(soft), widest, dtype=torch.long)
        valid = torch.zeros(len(soft), widest, dtype=torch.bool)
        for i, span in enumerate(soft):
            index[i, : span.width] = torch.arange(span.start, span.start + span.width)
            valid[i, : span.width] = True
        self.index, self.valid = index, valid
        self.offsets = torch.zeros(dim)  # 1 on offset (tanh) columns
        self.one_hots = torch.zeros(dim)  # 1 on one-hot columns
        for span in spans:
            mask = self.offsets if span.activation == "tanh" else self.one_hots
            mask[span.start : span.start + span.width] = 1.0

    def __call__(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``(..., B)`` from decoder outputs ``out (..., B, dim)``, encoded rows ``x`` and
        ``sigma (..., dim)`` (leading dimensions: a batched group's clients)."""
        sigma = sigma.unsqueeze(-2)  # (..., 1, dim): the same for every row
        gauss = ((x - torch.tanh(out)) ** 2 / 2 / sigma**2 * self.offsets).sum(-1)
        log_sigma = (torch.log(sigma) * self.offsets).sum(-1)  # (..., 1)
        logits = torch.where(self.valid, out[..., self.index], float("-inf"))  # (..., B, S, W)
        target = (out * x * self.one_hots).sum(-1)  # each span's target logit, summed
        return gauss + log_sigma + torch.logsumexp(logits, dim=-1).sum(-1) - target


def row_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of each row's posterior to the standard normal prior ``(..., B)``."""
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)


class TvaeFunctionalTraining(FunctionalTraining):
    """``TvaeTask``'s step for ``vmap`` (built by ``TvaeTask.functional_training``)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        reconstruction: RowReconstruction,
        latent_dim: int,
        lr: float,
        adams: FunctionalAdams,
        loss_factor: float,
        condition: ConditionBlock | None = None,
    ) -> None:
        self.modules = {"encoder": encoder, "decoder": decoder}
        self.condition = condition
        self.reconstruction = reconstruction
        self.latent_dim = latent_dim
        self.lr = lr
        self.adams = adams
        self.loss_factor = loss_factor
        # The hidden stacks, when the batched step can run them (TVAE's own: Linear, ReLU).
        nets = (getattr(encoder, "net", None), getattr(decoder, "net", None))
        self._nets: tuple[nn.Module, nn.Module] | None = None
        if all(isinstance(n, nn.Module) and supports_batched_forward(n) for n in nets):
            self._nets = (nets[0], nets[1])  # type: ignore[assignment]

    def init_state(self, tensors: ModuleTensors, config: dict[str, Any]) -> OptimizerState:
        # Both networks are parameters only (no buffers): one Adam over both, as
        # train_local's, counting its own steps (they outlive a round with keep_optimizer).
        return self.adams.init(tensors)

    def kept(self, state: OptimizerState) -> dict[str, torch.Tensor]:
        return self.adams.kept(state)

    def resume(self, state: OptimizerState, kept: dict[str, torch.Tensor]) -> OptimizerState:
        return self.adams.resume(state, kept)

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
            zc = with_condition(z, x, self.condition)
            out = functional_call(self.modules["decoder"], params["decoder"], (zc,))
            sigma = params["decoder"]["sigma"]
            recon = masked_mean(self.reconstruction(out, x, sigma), m)
            kl = masked_mean(row_kl(mu, logvar), m)
            return self.loss_factor * recon + kl, (recon, kl)

        grads, (_, (recon, kl)) = grad_and_value(losses, has_aux=True)(tensors)
        return self._update(tensors, grads, state, lr, recon, kl)

    def batched_step(
        self,
        tensors: ModuleTensors,
        state: OptimizerState,
        inputs: StepInputs,
        masks: dict[str, torch.Tensor],
        step: int,
        config: dict[str, Any],
    ) -> tuple[ModuleTensors, OptimizerState, dict[str, torch.Tensor]] | None:
        """``step`` for a group: ``baddbmm`` per layer, autograd of the summed losses."""
        if self._nets is None:
            return None
        encoder_net, decoder_net = self._nets
        lr = float(config.get("lr", self.lr))
        x, eps, m = inputs["x"], inputs["eps"], masks["x"]
        leaves = {
            name: {k: v.detach().requires_grad_() for k, v in module.items()}
            for name, module in tensors.items()
        }
        enc, dec = leaves["encoder"], leaves["decoder"]
        with torch.enable_grad():
            h = batched_forward(encoder_net, enc, x, "net.")
            mu = batched_linear(h, enc["mu.weight"], enc["mu.bias"])
            logvar = batched_linear(h, enc["logvar.weight"], enc["logvar.bias"])
            z = mu + eps * torch.exp(0.5 * logvar)
            out = batched_linear(
                batched_forward(decoder_net, dec, with_condition(z, x, self.condition), "net."),
                dec["out.weight"],
                dec["out.bias"],
            )
            recon = masked_mean(self.reconstruction(out, x, dec["sigma"]), m)  # (C,)
            kl = masked_mean(row_kl(mu, logvar), m)
            # Client c's loss depends on its own tensors only: the gradient of the sum
            # is each client's gradient, stacked.
            total = (self.loss_factor * recon + kl).sum()
            flat = [(name, k) for name, module in leaves.items() for k in module]
            grad_list = torch.autograd.grad(total, [leaves[n][k] for n, k in flat])
        grads: ModuleTensors = {name: {} for name in leaves}
        for (name, k), g in zip(flat, grad_list, strict=True):
            grads[name][k] = g
        return self._update(tensors, grads, state, lr, recon.detach(), kl.detach())

    def _update(
        self,
        tensors: ModuleTensors,
        grads: ModuleTensors,
        state: OptimizerState,
        lr: float,
        recon: torch.Tensor,
        kl: torch.Tensor,
    ) -> tuple[ModuleTensors, OptimizerState, dict[str, torch.Tensor]]:
        """Adam on every tensor, then ``sigma`` clamped: the end of both steps."""
        new_tensors, new_state = self.adams.step("vae", tensors, grads, state, lr)
        sigma = new_tensors["decoder"]["sigma"]
        new_tensors["decoder"] = {**new_tensors["decoder"], "sigma": sigma.clamp(*SIGMA_RANGE)}
        return new_tensors, new_state, {"loss/reconstruction": recon, "loss/kl": kl}
