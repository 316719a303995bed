"""One training iteration of a U-shaped split conditional GAN over many clients.

HuSCF-GAN (Tawfilis et al. 2025, arXiv 2507.12979), as its public code's
``train_step`` does it: every client generates a batch of fakes (generator
split between client and server), the discriminator is trained on the fakes
(detached) then on the real batch, one optimizer step; then the generator is
trained through the discriminator with the non-saturating loss. Losses are
binary cross-entropy on the client; Adam (2e-4, betas (0.5, 0.999)) on every
client's head/tail and on the server's blocks (with ``aux_weight`` > 0 and a
class head on the last discriminator block, plus the AC-GAN class term of
``fedgen.split.gan_loss``, on the client too). Only activations and their
gradients cross the ``Channel``; a client that drops out mid-iteration, or whose own
computation raises, is reported in ``failures`` and the iteration goes on with the rest.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedgen.errors import CheckpointError, ConfigError
from fedgen.split.cut import Cut
from fedgen.split.gan_loss import gan_loss
from fedgen.split.messages import Channel
from fedgen.split.protocol import SplitPass, client_error
from fedgen.split.segments import ClientSegments, ServerSegments


@dataclass
class IterationResult:
    """What one iteration produced (losses are means over the clients that finished, and
    include the AC-GAN class term when the trainer has ``aux_weight`` > 0)."""

    d_loss_real: float
    d_loss_fake: float
    g_loss: float
    clients: list[int]
    failures: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    #: Server-side output of ``capture_block`` of the discriminator on each real batch.
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    #: Per finished client: (D loss on real, D loss on fake, G loss).
    client_losses: dict[int, tuple[float, float, float]] = field(default_factory=dict)


def _adam(module: nn.Module, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    # foreach: one fused update over a module's tensors instead of a Python loop over
    # them (torch picks it only on GPUs by default); 24 optimizers step every iteration.
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, foreach=True)


class UShapedGanTrainer:
    """Per-client heads/tails of G and D, one server middle of each, trained together.

    Args:
        generator_blocks: G1..Gn; block 0 takes ``(z, labels)``.
        discriminator_blocks: D1..Dm; block 0 takes ``(images in [-1, 1], labels)``,
            the last block returns P(real) of shape ``(B, 1)``, or ``(B, 1 + K)`` with
            class logits after it.
        generator_cuts / discriminator_cuts: one ``Cut`` per client id.
        latent_dim: size of z.
        capture_block: discriminator block whose server output on the real batch is
            returned in ``IterationResult.features`` (HuSCF-GAN clusters on D3).
        aux_weight: weight of the AC-GAN class loss (0: the published loss).
    """

    def __init__(
        self,
        generator_blocks: Sequence[nn.Module],
        discriminator_blocks: Sequence[nn.Module],
        generator_cuts: Mapping[int, Cut],
        discriminator_cuts: Mapping[int, Cut],
        latent_dim: int,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        channel: Channel | None = None,
        capture_block: int | None = None,
        aux_weight: float = 0.0,
    ) -> None:
        if set(generator_cuts) != set(discriminator_cuts):
            raise ConfigError(
                "generator_cuts and discriminator_cuts must name the same clients; "
                f"got {sorted(generator_cuts)} and {sorted(discriminator_cuts)}"
            )
        self.client_ids = sorted(generator_cuts)
        self.latent_dim = latent_dim
        self.aux_weight = aux_weight
        self.channel = channel or Channel()
        # Every client starts from the same weights (one template), as after FedAvg.
        self.gen_clients = {
            c: ClientSegments(generator_blocks, generator_cuts[c], "generator")
            for c in self.client_ids
        }
        self.disc_clients = {
            c: ClientSegments(discriminator_blocks, discriminator_cuts[c], "discriminator")
            for c in self.client_ids
        }
        self.gen_server = ServerSegments(generator_blocks, generator_cuts, "generator")
        self.disc_server = ServerSegments(discriminator_blocks, discriminator_cuts, "discriminator")
        self.disc_server.capture_block = capture_block
        # The segments are deep copies of the task's blocks, which keep their mode: after
        # an evaluation sampled the task (eval mode), a trainer built then would train
        # with BatchNorm frozen on its running statistics.
        for segment in (
            self.gen_server,
            self.disc_server,
            *self.gen_clients.values(),
            *self.disc_clients.values(),
        ):
            segment.train()
        self.reset_optimizers(lr, betas)

    def reset_optimizers(self, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999)) -> None:
        """Fresh Adam optimizers everywhere (each round, unless the backend keeps them)."""
        self.gen_opts = {c: _adam(m, lr, betas) for c, m in self.gen_clients.items()}
        self.disc_opts = {c: _adam(m, lr, betas) for c, m in self.disc_clients.items()}
        self.gen_server_opt = _adam(self.gen_server, lr, betas)
        self.disc_server_opt = _adam(self.disc_server, lr, betas)

    def set_lr(self, lr: float) -> None:
        """Every optimizer's learning rate (a round's config may change it)."""
        for opt in self._optimizers():
            for group in opt.param_groups:
                group["lr"] = lr

    def optimizer_state(self) -> dict[str, Any]:
        """Every Adam's state (moments and step counts), for a checkpoint."""
        return {
            "generator": {c: o.state_dict() for c, o in self.gen_opts.items()},
            "discriminator": {c: o.state_dict() for c, o in self.disc_opts.items()},
            "generator_server": self.gen_server_opt.state_dict(),
            "discriminator_server": self.disc_server_opt.state_dict(),
        }

    def load_optimizer_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``optimizer_state`` returned, for the same clients and cuts."""
        for name, opts in (("generator", self.gen_opts), ("discriminator", self.disc_opts)):
            if sorted(state[name]) != sorted(opts):
                raise CheckpointError(
                    f"the checkpoint's {name} optimizers are for clients "
                    f"{sorted(state[name])}, this federation's for {sorted(opts)}; resume "
                    "with the config the run was started with"
                )
            for c, opt in opts.items():
                opt.load_state_dict(state[name][c])
        self.gen_server_opt.load_state_dict(state["generator_server"])
        self.disc_server_opt.load_state_dict(state["discriminator_server"])

    def _optimizers(self) -> list[torch.optim.Adam]:
        return [
            *self.gen_opts.values(),
            *self.disc_opts.values(),
            self.gen_server_opt,
            self.disc_server_opt,
        ]

    def _pass(self, name: str) -> SplitPass:
        if name == "generator":
            return SplitPass(name, self.gen_clients, self.gen_server, self.channel)
        return SplitPass(name, self.disc_clients, self.disc_server, self.channel)

    def step(
        self,
        batches: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator | Mapping[int, torch.Generator],
    ) -> IterationResult:
        """One iteration on ``{client: (real images in [-1, 1] (B,1,28,28), labels (B,))}``.

        ``generator`` draws the latent codes: one for all clients (in client order),
        or one per client, so a client's noise does not depend on who else takes part.
        Clients absent from ``batches`` sit this iteration out; clients that drop
        out mid-iteration are listed in ``failures`` and their optimizers do not step.
        """
        t0 = time.perf_counter()
        up0, down0 = self.channel.bytes_up, self.channel.bytes_down
        unknown = set(batches) - set(self.client_ids)
        if unknown:
            raise ConfigError(f"batches for unknown clients {sorted(unknown)}")
        failures: dict[int, str] = {}
        active = sorted(batches)
        for c in active:
            self.disc_opts[c].zero_grad()
        self.disc_server_opt.zero_grad()

        # --- generator forward: z and labels never leave the client ---
        gen = self._pass("generator")
        z = {
            c: torch.randn(
                batches[c][1].shape[0],
                self.latent_dim,
                generator=generator if isinstance(generator, torch.Generator) else generator[c],
            )
            for c in active
        }
        fakes = gen.forward({c: (z[c], batches[c][1]) for c in active})
        failures.update(gen.failures)

        def discriminate(
            images: Mapping[int, torch.Tensor], target: float, classify: bool
        ) -> tuple[SplitPass, dict[int, torch.Tensor]]:
            p = self._pass("discriminator")
            alive = [c for c in images if c not in failures]
            probs = p.forward({c: (images[c], batches[c][1]) for c in alive})
            failures.update(p.failures)
            losses: dict[int, torch.Tensor] = {}
            for c, out in probs.items():
                try:
                    losses[c] = gan_loss(out, batches[c][1], target, classify, self.aux_weight)
                except Exception as exc:  # computed on the client: it fails alone
                    failures[c] = client_error(exc)
            if losses:
                torch.stack(list(losses.values())).sum().backward()
            p.backward()
            failures.update(p.failures)
            return p, losses

        # --- discriminator step: fakes (detached), then the real batch ---
        _, loss_fake = discriminate({c: f.detach() for c, f in fakes.items()}, 0.0, False)
        _, loss_real = discriminate({c: batches[c][0] for c in fakes}, 1.0, True)
        features = dict(self.disc_server.captured)
        ok = [c for c in active if c not in failures]
        if ok:
            self.disc_server_opt.step()
        for c in ok:
            self.disc_opts[c].step()

        # --- generator step: non-saturating loss through the discriminator ---
        for c in active:
            self.gen_opts[c].zero_grad()
        self.gen_server_opt.zero_grad()
        _, loss_gen = discriminate({c: f for c, f in fakes.items() if c not in failures}, 1.0, True)
        gen.backward()
        failures.update(gen.failures)
        ok = [c for c in active if c not in failures]
        if ok:
            self.gen_server_opt.step()
        for c in ok:
            self.gen_opts[c].step()
        for c in failures:
            # A client that left keeps its weights; its partial gradients are dropped.
            self.gen_opts[c].zero_grad()
            self.disc_opts[c].zero_grad()

        def mean(losses: dict[int, torch.Tensor]) -> float:
            vals = [float(v.detach()) for c, v in losses.items() if c in ok]
            return sum(vals) / len(vals) if vals else float("nan")

        return IterationResult(
            d_loss_real=mean(loss_real),
            d_loss_fake=mean(loss_fake),
            g_loss=mean(loss_gen),
            clients=ok,
            failures=failures,
            bytes_up=self.channel.bytes_up - up0,
            bytes_down=self.channel.bytes_down - down0,
            seconds=time.perf_counter() - t0,
            features={c: f for c, f in features.items() if c in ok},
            client_losses={
                c: (
                    float(loss_real[c].detach()),
                    float(loss_fake[c].detach()),
                    float(loss_gen[c].detach()),
                )
                for c in ok
            },
        )

    @torch.no_grad()
    def sample(
        self, client_id: int, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Images in [-1, 1] from ``client_id``'s head/tail and the server's middle (eval mode)."""
        modules = [self.gen_clients[client_id], self.gen_server]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            z = torch.randn(labels.shape[0], self.latent_dim, generator=generator)
            h = self.gen_clients[client_id].forward_head(z, labels)
            h = self.gen_server({client_id: h})[client_id]
            return self.gen_clients[client_id].forward_tail(h)
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)
