"""A CTGAN split vertically: each client generates and judges its own columns.

GTV (Zhao, Wu, Huang, Chen, "GTV: Generating Tabular Data via Vertical Federated
Learning", DSN 2025; the VT-GAN line of work): organisations holding different
columns of the same records train one conditional tabular GAN without pooling them.
The networks of CTGAN (``fedgen.tasks.tabular.ctgan``) are cut so that

- the server holds the shared body of the generator (noise and conditional vector
  to a hidden row, two residual blocks) and the top of the critic (the layers after
  the first);
- client ``i`` holds the generator head for its own columns (the last linear layer,
  to its encoded block) and its share of the critic's first linear layer (over
  ``pac`` rows of its columns and its part of the conditional vector), with the
  encoder it fitted on its columns. The server sums the shares before the first
  activation, which is exactly the first layer over the joined row.

For any number of clients the networks are therefore CTGAN's own (the generator's
output layer and the critic's first layer cut by columns); one client holding every
column is the centralized reference. The conditional vector is split by owner too: a row
conditioned on one of client ``i``'s categorical columns has its one-hot in client
``i``'s part. How the parties train it, and what crosses between them, is
``fedgen.tasks.tabular.vertical_training``; the backend that runs it per round is
``fedgen.engine.backends.vertical``. Tensors of the body and the critic top are
federated (the server's), the heads and input blocks private to their client.

Sampling runs the server's body and every client's head and joins the columns, as
the clients would release their synthetic columns for the same synthetic rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from fedgen.registry import TASKS
from fedgen.seeding import global_rng_from
from fedgen.tasks.tabular.base import (
    TableTaskParams,
    apply_activations,
    draw_conditions,
)
from fedgen.tasks.tabular.vertical_base import VerticalTableTask, init_as_slices_of_one_layer

BODY = "generator_body"
TOP = "critic_top"


def head_name(client: int) -> str:
    """Module name of client ``client``'s generator head."""
    return f"generator_head_{client}"


def bottom_name(client: int) -> str:
    """Module name of client ``client``'s critic input block."""
    return f"critic_bottom_{client}"


class _Residual(nn.Module):
    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width_in, width_out)
        self.norm = nn.LayerNorm(width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.norm(self.fc(x))), x], dim=1)  # (B, out + in)


class GeneratorBody(nn.Module):
    """The server's part of the generator: ``(z, cond)`` to a hidden row."""

    def __init__(self, noise: int, cond: int, hidden: int) -> None:
        super().__init__()
        width = noise + cond
        self.blocks = nn.Sequential(_Residual(width, hidden), _Residual(width + hidden, hidden))
        self.width = width + 2 * hidden

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.cat([z, c], dim=1))  # (B, noise + cond + 2 hidden)


class CriticBottom(nn.Module):
    """A client's share of the critic's first linear layer: ``pac`` rows of its columns and
    its condition, to the layer's width (no activation: see ``CriticTop``)."""

    def __init__(self, width: int, hidden: int, pac: int, bias: bool = True) -> None:
        super().__init__()
        self.pac = pac
        self.fc = nn.Linear(width * pac, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = x.reshape(-1, x.shape[1] * self.pac)  # (B / pac, pac * width)
        return self.fc(packed)  # (B / pac, hidden)


class CriticTop(nn.Module):
    """The server's part of the critic: the clients' shares summed, then CTGAN's layers.

    A linear layer over the joined row is the sum of linear layers over each client's
    columns, so summing the shares before the first activation gives exactly CTGAN's
    critic, cross-client interactions included from its first layer. (Joining the
    clients' activations instead, each after its own nonlinearity, lost 27% of the
    TSTR score with two clients: ``benchmarks/results/tabular.md``.)
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.5),
            nn.Linear(hidden, 1),
        )

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.net(torch.stack(parts).sum(dim=0))  # (B / pac, 1)


@TASKS.register("vertical_ctgan")
class VerticalCtganTask(VerticalTableTask):
    """CTGAN split by column owners (module docstring); trained by backend ``vertical``."""

    task_name = "vertical_ctgan"

    class Params(TableTaskParams):
        """``task.params`` of ``vertical_ctgan`` (defaults: the ``ctgan`` library's)."""

        betas: tuple[float, float] = (0.5, 0.9)
        noise_dim: int = Field(128, ge=1)
        hidden: int = Field(256, ge=1)
        pac: int = Field(10, ge=1)
        gp_weight: float = Field(10.0, ge=0)
        weight_decay: float = Field(1e-6, ge=0)
        tau: float = Field(0.2, gt=0)
        #: Not built here: backend vertical starts every party's optimizer each round.
        keep_optimizer: bool = False

        @model_validator(mode="after")
        def _batch_fills_packs(self) -> VerticalCtganTask.Params:
            if self.keep_optimizer:
                raise ValueError(
                    "keep_optimizer is not built for vertical_ctgan (its optimizers start "
                    "each round); leave it false"
                )
            if self.local_optimizer != "adam":
                raise ValueError(
                    "local_optimizer sgd is not built for vertical_ctgan (every party steps "
                    "Adam); leave it adam"
                )
            if self.compute_dtype != "float32":
                raise ValueError(
                    "compute_dtype bfloat16 is not built for vertical_ctgan (backend vertical "
                    "runs its joint iteration outside autocast); leave it float32"
                )
            if self.batch_size % self.pac:
                raise ValueError(
                    f"batch_size {self.batch_size} must be a multiple of pac {self.pac}"
                )
            return self

    params: Params

    def cond_width(self, client: int) -> int:
        """Width of client ``client``'s part of the conditional vector."""
        return sum(enc.width for enc, _ in self.parties[client].categorical())

    def build(self) -> dict[str, nn.Module]:
        p = self.params
        cond = sum(self.cond_width(i) for i in range(self.num_parties))
        body = GeneratorBody(p.noise_dim, cond, p.hidden)
        modules: dict[str, nn.Module] = {BODY: body}
        bottoms = []
        for i, enc in enumerate(self.parties):
            modules[head_name(i)] = nn.Linear(body.width, enc.dim)
            # Only client 0's share has a bias: the joint layer has one, and a bias on
            # every share would move their sum K times as fast under Adam.
            bottoms.append(CriticBottom(enc.dim + self.cond_width(i), p.hidden, p.pac, i == 0))
            modules[bottom_name(i)] = bottoms[-1]
        init_as_slices_of_one_layer([bottom.fc for bottom in bottoms])
        modules[TOP] = CriticTop(p.hidden)
        return modules

    def federated_modules(self) -> list[str]:
        """The server's body and critic top; every head and input block stays with its owner."""
        return [BODY, TOP]

    def party_modules(self, client: int) -> tuple[str, ...]:
        """Client ``client``'s generator head and critic input block."""
        return (head_name(client), bottom_name(client))

    def _cond_slots(self) -> list[int]:
        """For each categorical column in schema order: its offset in the conditional
        vector, which is laid out by owner (client 0's columns first)."""
        offset, by_name = 0, {}
        for party in self.parties:
            for enc, _ in party.categorical():
                by_name[enc.name] = offset
                offset += enc.width
        return [by_name[enc.name] for enc, _ in self.encoder.categorical()]

    def generate(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        # As CTGAN samples: a column uniformly, a category by its frequency (each owner
        # draws the rows conditioned on its columns from its own counts).
        width = sum(self.cond_width(i) for i in range(self.num_parties))
        cond = draw_conditions(
            n, self.encoder.categorical(), self._cond_slots(), width, condition, generator
        )
        z = torch.randn(n, self.params.noise_dim, generator=generator)
        rows = torch.zeros(n, self.encoder.dim)
        with global_rng_from(generator):
            h = self.modules[BODY](z, cond)
            for i in range(self.num_parties):
                raw = self.modules[head_name(i)](h)
                rows[:, self.positions[i]] = apply_activations(
                    raw, self.party_spans(i), self.params.tau
                )
        return rows
