"""A TVAE split vertically: each client encodes and reconstructs its own columns.

The vertical counterpart of ``fedgen.tasks.tabular.vertical_ctgan`` for the tabular VAE
(TVAE, Xu et al. 2019; networks as ``fedgen.tasks.tabular.tvae``). TVAE is cut where
its networks touch the columns:

- client ``i`` holds its share of the encoder's first linear layer (over its encoded
  columns) and the decoder's output layer for its columns with their learned standard
  deviations, with the encoder it fitted on its columns;
- the server holds the rest: the sum of the shares through the encoder's remaining
  layers to the Gaussian latent, and the decoder's body from the latent to its last
  hidden layer.

A linear layer over the joined row is the sum of linear layers over each client's
columns, and the decoder's output layer is one linear map per output column, so for
any number of clients the networks are exactly TVAE's; with per-parameter Adam on
every party the joint iteration is TVAE's iteration too (``tests/unit/tasks/
test_vertical_tvae.py`` checks it against ``TvaeTask`` step for step). One client
holding every column is the centralized reference (TVAE with ``keep_optimizer: false``:
backend ``vertical`` starts every party's Adam each round). How the parties train, and what
crosses, is ``fedgen.tasks.tabular.vertical_tvae_training``; the backend is
``fedgen.engine.backends.vertical``.

Sampling draws the latent on the server, runs its decoder body, and every client's
head draws its columns of the same synthetic rows.
"""

from __future__ import annotations

import torch
from pydantic import model_validator
from torch import nn

from fedgen.data.table_vertical import VerticalTableEncoder
from fedgen.registry import TASKS
from fedgen.tasks.base import TaskParams
from fedgen.tasks.tabular.tvae import TvaeTask, draw_rows
from fedgen.tasks.tabular.tvae_functional import RowReconstruction
from fedgen.tasks.tabular.vertical_base import VerticalTableTask, init_as_slices_of_one_layer

ENCODER_TOP = "encoder_top"
DECODER_BODY = "decoder_body"


def encoder_bottom_name(client: int) -> str:
    """Module name of client ``client``'s share of the encoder's first layer."""
    return f"encoder_bottom_{client}"


def decoder_head_name(client: int) -> str:
    """Module name of client ``client``'s decoder output layer."""
    return f"decoder_head_{client}"


class EncoderTop(nn.Module):
    """The server's part of the encoder: the clients' shares summed, then TVAE's layers."""

    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, shares: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(torch.stack(shares).sum(dim=0))
        return self.mu(h), self.logvar(h)  # each (B, latent)


class DecoderBody(nn.Module):
    """The server's part of the decoder: latent to its last hidden layer."""

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, hidden)


class DecoderHead(nn.Module):
    """A client's decoder output layer for its columns, and their standard deviations."""

    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(hidden, dim)
        # Per-output standard deviation of the offsets' Gaussian likelihood (TVAE: 0.1).
        self.sigma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h)  # (B, dim)


@TASKS.register("vertical_tvae")
class VerticalTvaeTask(VerticalTableTask):
    """TVAE split by column owners (module docstring); trained by backend ``vertical``."""

    task_name = "vertical_tvae"

    class Params(TvaeTask.Params):
        """``task.params`` of ``vertical_tvae`` (TVAE's, without kept optimizer moments or
        ``condition_on``)."""

        #: Not built here: backend vertical starts every party's optimizer each round.
        keep_optimizer: bool = False

        @model_validator(mode="after")
        def _no_kept_moments(self) -> VerticalTvaeTask.Params:
            if self.keep_optimizer:
                raise ValueError(
                    "keep_optimizer is not built for vertical_tvae (its optimizers start "
                    "each round); leave it false"
                )
            if self.local_optimizer != "adam":
                raise ValueError(
                    "local_optimizer sgd is not built for vertical_tvae (every party steps "
                    "Adam); leave it adam"
                )
            if self.compute_dtype != "float32":
                raise ValueError(
                    "compute_dtype bfloat16 is not built for vertical_tvae (backend vertical "
                    "runs its joint iteration outside autocast); leave it float32"
                )
            # Inherited from TVAE but not built: the server's decoder body would need the
            # column's one-hot, which only its owner holds. Accepted, it would silently
            # train an unconditional model.
            if self.condition_on is not None:
                raise ValueError(
                    "condition_on is not built for vertical_tvae (its decoder is not given "
                    "the column); drop condition_on, or use task tvae on a table split by rows"
                )
            return self

    params: Params

    def __init__(self, params: TaskParams, encoder: VerticalTableEncoder, seed: int) -> None:
        super().__init__(params, encoder, seed)
        #: Each client's reconstruction term over its own columns.
        self.reconstructions = [RowReconstruction(e.spans(), e.dim) for e in self.parties]

    def build(self) -> dict[str, nn.Module]:
        p = self.params
        modules: dict[str, nn.Module] = {
            ENCODER_TOP: EncoderTop(p.hidden, p.latent_dim),
            DECODER_BODY: DecoderBody(p.latent_dim, p.hidden),
        }
        bottoms = []
        for i, enc in enumerate(self.parties):
            # Only client 0's share has a bias: the joint layer has one, and a bias on
            # every share would move their sum K times as fast under Adam.
            bottoms.append(nn.Linear(enc.dim, p.hidden, bias=i == 0))
            modules[encoder_bottom_name(i)] = bottoms[-1]
            modules[decoder_head_name(i)] = DecoderHead(p.hidden, enc.dim)
        # The shares start as slices of TVAE's one first layer (same bound, one bias).
        init_as_slices_of_one_layer(bottoms)
        return modules

    def federated_modules(self) -> list[str]:
        """The server's encoder top and decoder body; the clients' parts stay with them."""
        return [ENCODER_TOP, DECODER_BODY]

    def party_modules(self, client: int) -> tuple[str, ...]:
        """Client ``client``'s share of the encoder's first layer and its decoder head."""
        return (encoder_bottom_name(client), decoder_head_name(client))

    def generate(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        # TVAE is unconditional: a condition is met by ``sample_rows``'s filtering.
        z = torch.randn(n, self.params.latent_dim, generator=generator)
        h = self.modules[DECODER_BODY](z)
        rows = torch.zeros(n, self.encoder.dim)
        for i in range(self.num_parties):
            head = self.modules[decoder_head_name(i)]
            assert isinstance(head, DecoderHead)
            rows[:, self.positions[i]] = draw_rows(
                head(h), self.party_spans(i), head.sigma, generator, self.params.categories
            )
        return rows
