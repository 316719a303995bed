"""Table federations: rows split across clients, a server holdout, the federated encoder.

``make_federated_table`` holds back a seeded ``holdout_fraction`` of the rows
(the evaluation's held-out real rows: TSTR's test set, DCR's holdout; with
``holdout_fold`` set, fold ``f`` of ``round(1 / holdout_fraction)`` folds of the same
seeded order, so runs of folds 0..k-1 test on every row once), splits the
rest across clients by one of two partitioners, fits the ``TableEncoder`` from the
clients' statistics (``fedgen.data.table_encoder``) and has each client encode its
own rows with it:

- ``table_silos``: clients are the values of a categorical column (the source's
  ``silo_column`` by default: occupations, insurance plans), the realistic split of
  organisations that each serve one kind of person. With fewer clients than values,
  values go largest first to the client holding the fewest rows so far.
- ``table_dirichlet``: Dirichlet(alpha) label skew on a categorical column (the
  source's ``target`` by default), as ``dirichlet`` does for image classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.data.partition import DirichletPartitioner
from fedgen.data.table_encoder import (
    TableEncoder,
    encoder_from_state,
    fit_encoder_federated,
)
from fedgen.data.table_schema import TableSchema
from fedgen.data.table_source import TableSource
from fedgen.data.table_sources import get_table_source
from fedgen.errors import ConfigError
from fedgen.modality import DataSpec, Modality
from fedgen.registry import PARTITIONERS
from fedgen.seeding import derive_seed, numpy_rng


@dataclass(frozen=True)
class TableClientData:
    """The private rows of client ``client_id``, raw and encoded by the global encoder.

    ``encoded`` is ``(N, encoder.dim)`` float32. ``codes[column]`` is the category
    index of every row in each categorical column (training-by-sampling draws rows
    of a chosen category from it).
    """

    client_id: int
    rows: pd.DataFrame
    encoded: torch.Tensor
    codes: dict[str, np.ndarray]

    @property
    def num_examples(self) -> int:
        return len(self.rows)

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled ``(encoded rows (B, dim), row indices (B,))``; a client with
        fewer rows than ``batch_size`` yields all of them each time."""
        n = self.num_examples
        if n == 0:
            raise ConfigError(f"table client {self.client_id} holds no rows; use fewer clients")
        bs = min(batch_size, n)
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - bs + 1, bs):
                idx = order[start : start + bs]
                yield self.encoded[idx], idx


def encode_client(
    client_id: int, rows: pd.DataFrame, encoder: TableEncoder, seed: int
) -> TableClientData:
    """A client's data: its rows encoded (modes drawn from its own seeded generator)."""
    encoded = encoder.encode(rows, numpy_rng(seed, "table-encode", client_id))
    codes = {}
    for enc, start in encoder.categorical():
        codes[enc.name] = encoded[:, start : start + enc.width].argmax(axis=1)
    return TableClientData(client_id, rows.reset_index(drop=True), torch.from_numpy(encoded), codes)


@dataclass(frozen=True)
class FederatedTable:
    """Every client's rows, the server's holdout, the merged encoder and the settings."""

    source: str
    sha256: str
    schema: TableSchema
    target: str
    encoder: TableEncoder
    clients: list[TableClientData]
    holdout: pd.DataFrame
    partition: str
    seed: int

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def train(self) -> pd.DataFrame:
        """Every client's rows pooled (for the centralized ceiling and evaluation only)."""
        return pd.concat([c.rows for c in self.clients], ignore_index=True)

    def pooled_client(self) -> TableClientData:
        """The centralized ceiling's one client holding every client's rows."""
        return TableClientData(
            0,
            self.train,
            torch.cat([c.encoded for c in self.clients]),
            {k: np.concatenate([c.codes[k] for c in self.clients]) for k in self.clients[0].codes},
        )

    def spec(self) -> DataSpec:
        return DataSpec(Modality.TABLES, table=self.encoder)

    def to_json(self) -> dict[str, Any]:
        """Who holds how many rows of which categories, and what the encoder cost."""
        return {
            "modality": "tables",
            "source": self.source,
            "sha256": self.sha256,
            "partition": self.partition,
            "seed": self.seed,
            "schema": self.schema.to_json(),
            "target": self.target,
            "num_clients": self.num_clients,
            "holdout_rows": len(self.holdout),
            "sizes": [c.num_examples for c in self.clients],
            "clients": [
                {
                    "client_id": c.client_id,
                    "rows": c.num_examples,
                    self.target: c.rows[self.target].value_counts().sort_index().to_dict(),
                }
                for c in self.clients
            ],
            "encoder": self.encoder.to_json(),
        }


def split_holdout(
    table: pd.DataFrame, fraction: float, seed: int, fold: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, holdout)``: a seeded ``fraction`` of the rows held back.

    ``fold``: hold back fold ``fold`` of ``k = round(1 / fraction)`` near-equal folds of
    the seeded order instead (k-fold cross-validation: small tables' holdouts are a few
    dozen rows, and one of them moves TSTR by several points).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"holdout_fraction is {fraction}; use a fraction in (0, 1), e.g. 0.2")
    order = numpy_rng(seed, "table-holdout").permutation(len(table))
    if fold is None:
        cut = len(table) - round(fraction * len(table))
        return table.iloc[np.sort(order[:cut])], table.iloc[np.sort(order[cut:])]
    folds = max(2, round(1 / fraction))
    if not 0 <= fold < folds:
        raise ConfigError(
            f"holdout_fold is {fold}, but holdout_fraction {fraction} makes {folds} folds; "
            f"use a fold in 0..{folds - 1}"
        )
    bounds = np.linspace(0, len(table), folds + 1).round().astype(int)
    held = np.zeros(len(table), dtype=bool)
    held[order[bounds[fold] : bounds[fold + 1]]] = True
    return table.iloc[np.flatnonzero(~held)], table.iloc[np.flatnonzero(held)]


class TablePartition:
    """Base of the table partitioners: holdout, split, federated encoder, encoded clients."""

    name = "table"
    #: What a run with this partitioner generates (``experiment`` reads it).
    modality = Modality.TABLES

    def __init__(
        self, holdout_fraction: float = 0.2, max_modes: int = 10, holdout_fold: int | None = None
    ) -> None:
        self.holdout_fraction = holdout_fraction
        self.max_modes = max_modes
        self.holdout_fold = holdout_fold

    def split_rows(
        self, rows: pd.DataFrame, source: TableSource, num_clients: int, seed: int
    ) -> list[np.ndarray]:
        """Positional row indices of each client."""
        raise NotImplementedError

    def federate(
        self,
        source_name: str,
        num_clients: int,
        seed: int,
        encoder: dict[str, Any] | None = None,
        data_dir: Path | str | None = None,
    ) -> FederatedTable:
        """Load ``source_name``, hold out rows, split the rest, fit the encoder federatedly.

        ``encoder``: the merged encoder as ``encoder_state`` gives it (what a client
        receives from the server), used instead of fitting it again. ``data_dir``: where
        a downloaded table is looked for (``data.data_dir``).
        """
        source = get_table_source(source_name)
        train, holdout = split_holdout(
            source.load(data_dir), self.holdout_fraction, seed, self.holdout_fold
        )
        train = train.reset_index(drop=True)
        parts = self.split_rows(train, source, num_clients, seed)
        frames = [train.iloc[p].reset_index(drop=True) for p in parts]
        if encoder is not None:
            fitted = encoder_from_state(encoder, source.schema)
        else:
            fitted = fit_encoder_federated(
                frames, source.schema, self.max_modes, derive_seed(seed, "table-encoder") % 2**31
            )
        clients = [encode_client(i, f, fitted, seed) for i, f in enumerate(frames)]
        return FederatedTable(
            source=source.name,
            sha256=source.sha256,
            schema=source.schema,
            target=source.target,
            encoder=fitted,
            clients=clients,
            holdout=holdout.reset_index(drop=True),
            partition=self.name,
            seed=seed,
        )


class _TableParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    #: Hold out this fold of ``round(1 / holdout_fraction)`` instead (cross-validation).
    holdout_fold: int | None = Field(None, ge=0)
    #: At most this many mixture modes per numeric column (CTGAN: 10).
    max_modes: int = Field(10, ge=1)


@PARTITIONERS.register("table_silos")
class SiloPartition(TablePartition):
    """Clients are the values of a categorical column (see module docstring)."""

    name = "table_silos"

    class Params(_TableParams):
        """``data.partition.params`` of ``table_silos``."""

        #: The categorical column whose values make the clients (default: the source's).
        column: str | None = None

    def __init__(
        self,
        column: str | None = None,
        holdout_fraction: float = 0.2,
        max_modes: int = 10,
        holdout_fold: int | None = None,
    ) -> None:
        super().__init__(holdout_fraction, max_modes, holdout_fold)
        self.column = column

    def split_rows(
        self, rows: pd.DataFrame, source: TableSource, num_clients: int, seed: int
    ) -> list[np.ndarray]:
        column = self.column or source.silo_column
        if column is None:
            raise ConfigError(
                f"table_silos: {source.name} has no silo column (none of its columns names a "
                f"realistic data owner); split it by Dirichlet skew of its target instead: "
                f"data.partition: {{kind: table_dirichlet}} (it skews {source.target!r}), or "
                f"name a categorical column in data.partition.params.column"
            )
        if column not in source.schema.categorical():
            raise ConfigError(
                f"table_silos splits by a categorical column; {column!r} is not one of "
                f"{source.name}'s: {source.schema.categorical()}"
            )
        counts = rows[column].value_counts()
        if num_clients > len(counts):
            raise ConfigError(
                f"table_silos by {column!r} gives at most {len(counts)} clients (its values "
                f"{sorted(counts.index)}), but data.num_clients is {num_clients}; use at most "
                f"{len(counts)} clients"
            )
        # Largest value first to the lightest client: balanced when values outnumber clients.
        load = np.zeros(num_clients, dtype=np.int64)
        owner = {}
        for value, count in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            client = int(load.argmin())
            owner[value] = client
            load[client] += count
        who = rows[column].map(owner).to_numpy()
        return [np.flatnonzero(who == c) for c in range(num_clients)]


@PARTITIONERS.register("table_dirichlet")
class TableDirichletPartition(TablePartition):
    """Dirichlet(alpha) label skew on a categorical column (see module docstring)."""

    name = "table_dirichlet"

    class Params(_TableParams):
        """``data.partition.params`` of ``table_dirichlet``."""

        alpha: float = Field(0.5, gt=0, allow_inf_nan=False)
        #: The categorical column whose classes are skewed (default: the source's target).
        column: str | None = None
        min_size: int = Field(20, ge=1)

    def __init__(
        self,
        alpha: float = 0.5,
        column: str | None = None,
        min_size: int = 20,
        holdout_fraction: float = 0.2,
        max_modes: int = 10,
        holdout_fold: int | None = None,
    ) -> None:
        super().__init__(holdout_fraction, max_modes, holdout_fold)
        self.alpha, self.column, self.min_size = alpha, column, min_size

    def split_rows(
        self, rows: pd.DataFrame, source: TableSource, num_clients: int, seed: int
    ) -> list[np.ndarray]:
        column = self.column or source.target
        if column not in source.schema.categorical():
            raise ConfigError(
                f"table_dirichlet skews a categorical column; {column!r} is not one of "
                f"{source.name}'s: {source.schema.categorical()}"
            )
        labels = pd.factorize(rows[column], sort=True)[0].astype(np.int64)
        partitioner = DirichletPartitioner(alpha=self.alpha, min_size=self.min_size)
        return partitioner.split(labels, num_clients, numpy_rng(seed, "table-partition"))


def federate_tables(
    sources: list[str],
    partitioner: Any,
    num_clients: int,
    seed: int,
    *,
    dp: bool,
    encoder: dict[str, Any] | None = None,
    data_dir: Path | str | None = None,
) -> tuple[FederatedTable, DataSpec]:
    """The federated table of a recipe and its ``DataSpec``; ``ConfigError`` with the fix when
    the recipe mixes a table with other sources, uses a non-table partitioner, or asks for DP.
    ``encoder``: the merged encoder already fitted (``encoder_state``; a client building
    its side from the recipe receives it), so it is not fitted again.

    DP is refused, not accounted: the encoder is fitted from statistics each client releases
    without noise (category counts, moments, ranges, mixture fits), which no DP guarantee
    on the model updates would cover.
    """
    if len(sources) != 1:
        raise ConfigError(f"data.sources: a table federates alone, got {sources}; name one")
    if not isinstance(partitioner, TablePartition):
        raise ConfigError(
            f"data.partition.kind: a table source ({sources[0]}) is split by table_silos or "
            "table_dirichlet"
        )
    if dp:
        raise ConfigError(
            "tables: differential privacy is refused: the table encoder is fitted from "
            "per-client statistics (category counts, moments, min/max, mixture fits) released "
            "without noise, which the DP guarantee would not cover; drop dpsgd and client_dp"
        )
    table = partitioner.federate(sources[0], num_clients, seed, encoder, data_dir)
    return table, table.spec()


__all__ = [
    "FederatedTable",
    "SiloPartition",
    "TableClientData",
    "TableDirichletPartition",
    "federate_tables",
]
