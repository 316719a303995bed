"""What the column-split (vertical) synthesizers share: the parties and their columns.

A vertical task (``vertical_ctgan``, ``vertical_tvae``) is built from a table split by
columns (``fedgen.data.table_vertical``): each client owns some columns of the same
records, with the encoder it fitted on them. The task keeps, per client, that encoder
and where its block sits in a joined encoded row; the server's modules are the
federated ones and each client's are its private state (``party_modules``). Such a
task trains only through backend ``vertical`` (all clients' columns together), and
samples with every client's parts loaded (``samples_jointly``).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from fedgen.data.table_encoder import Span
from fedgen.data.table_vertical import VerticalTableEncoder
from fedgen.errors import ConfigError
from fedgen.modality import DataSpec, Modality
from fedgen.tasks.base import Task, TaskParams
from fedgen.tasks.tabular.base import TableTask


class VerticalTableTask(TableTask):
    """Base of the column-split synthesizers (module docstring)."""

    #: Sampling needs every client's parts: evaluation loads all clients' private parts.
    samples_jointly = True

    def __init__(self, params: TaskParams, encoder: VerticalTableEncoder, seed: int) -> None:
        self.parties = [encoder.owner_encoder(i) for i in range(len(encoder.groups))]
        self.positions = [encoder.owner_positions(i) for i in range(len(encoder.groups))]
        super().__init__(params, encoder, seed)

    @classmethod
    def from_spec(cls, params: TaskParams, spec: DataSpec, seed: int) -> Task:
        if spec.modality != Modality.TABLES or not isinstance(spec.table, VerticalTableEncoder):
            raise ValueError(
                f"task {cls.task_name} needs a table split by columns: use "
                "data.partition.kind=table_vertical with params.columns (one list per client)"
            )
        return cls(params, spec.table, seed)

    @property
    def num_parties(self) -> int:
        return len(self.parties)

    def party_spans(self, client: int) -> list[Span]:
        """Output blocks of client ``client``'s head (within its own encoded block)."""
        return self.parties[client].spans()

    @abstractmethod
    def party_modules(self, client: int) -> tuple[str, ...]:
        """Names of client ``client``'s own modules."""

    def party_keys(self, client: int) -> list[str]:
        """State keys of client ``client``'s own modules."""
        return [
            f"{name}.{key}"
            for name in self.party_modules(client)
            for key in self.modules[name].state_dict()
        ]

    def train_local(
        self, data: Any, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        raise ConfigError(
            f"task {self.task_name} trains every client's columns together, not one client "
            "at a time: use backend vertical"
        )


@torch.no_grad()
def init_as_slices_of_one_layer(shares: list[nn.Linear]) -> None:
    """Initialise the clients' shares of a first layer (CTGAN's critic, TVAE's encoder) as
    the library initialises that one layer over the joined row.

    ``nn.Linear`` draws its weights and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Each
    share built alone uses its own (smaller) fan-in, so the summed layer would start
    about sqrt(K) times larger than the joint one, and a client with few columns would
    get the largest weights. Here every weight is drawn with the joint layer's bound (the
    same distribution as slicing one joint layer: its entries are i.i.d.), and so is the
    bias of the one share that has it (the joint layer has one bias, so only the first
    share is built with one).
    """
    bound = 1.0 / math.sqrt(sum(share.in_features for share in shares))
    for share in shares:
        share.weight.uniform_(-bound, bound)
        if share.bias is not None:
            share.bias.uniform_(-bound, bound)
