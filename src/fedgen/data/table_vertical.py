"""Vertical table federations: every client holds some columns of the same rows.

Organisations that know different things about the same people (a bank's balances,
an insurer's claims) federate *vertically*: client ``i`` holds the columns of its
group, for every record. The recipe names the groups
(``data.partition = {kind: table_vertical, params: {columns: [[...], [...]]}}``);
every column of the table belongs to exactly one client.

Records are aligned by a shared record id (``RECORD_ID``): here the row's position in
the source, which every client keeps beside its columns. How organisations find the
records they share without revealing the others (private set intersection) is out of
scope: ``align_records`` only checks that every client holds the same ids and orders
its rows by them, and refuses clients whose ids differ.

Each client fits the encoding of its own columns from its own rows
(``fedgen.data.table_encoder``, one client's statistics): nothing about a column
leaves its owner, not even the encoder's statistics, so ``client_bytes`` are 0. The
simulation joins the clients' encodings into one ``VerticalTableEncoder`` in schema
order, which the evaluation decodes joined synthetic rows with; the pooled Pearson
correlations across owners are unknown to everyone (``correlation`` is None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.data.table_data import TableClientData, TablePartition, encode_client, split_holdout
from fedgen.data.table_encoder import (
    TableEncoder,
    client_statistics,
    encoder_from_state,
    merge_statistics,
)
from fedgen.data.table_schema import TableSchema
from fedgen.data.table_sources import get_table_source
from fedgen.errors import ConfigError
from fedgen.modality import DataSpec, Modality
from fedgen.registry import PARTITIONERS
from fedgen.seeding import derive_seed

#: The column every client keeps beside its own: the shared id its rows are aligned by.
RECORD_ID = "record_id"


def check_column_groups(
    groups: Sequence[Sequence[str]], schema: TableSchema
) -> tuple[tuple[str, ...], ...]:
    """The column groups as tuples, each column in exactly one group.

    Raises ``ConfigError`` listing every problem: an empty group, a column the table
    does not have, a column in two clients, a column in no client.
    """
    problems = []
    seen: dict[str, int] = {}
    for i, group in enumerate(groups):
        if not group:
            problems.append(f"client {i} holds no column; give every client at least one")
        for column in group:
            if column not in schema.names:
                problems.append(
                    f"client {i} names column {column!r}, which the table does not have "
                    f"(its columns: {schema.names})"
                )
            elif column in seen:
                problems.append(
                    f"column {column!r} is in client {seen[column]} and client {i}; "
                    "a column belongs to one client"
                )
            else:
                seen[column] = i
    missing = [c for c in schema.names if c not in seen]
    if missing:
        problems.append(f"columns {missing} belong to no client; add each to one group")
    if problems:
        raise ConfigError("table_vertical column groups: " + "; ".join(problems))
    return tuple(tuple(g) for g in groups)


def align_records(frames: Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    """Each client's rows ordered by ``RECORD_ID``; ``ConfigError`` unless every client
    holds the same ids, each once (the alignment itself, PSI, is out of scope)."""
    aligned = []
    reference: np.ndarray | None = None
    for i, frame in enumerate(frames):
        if RECORD_ID not in frame.columns:
            raise ConfigError(f"client {i}'s rows have no {RECORD_ID!r} column to align by")
        ids = frame[RECORD_ID].to_numpy()
        if len(np.unique(ids)) != len(ids):
            raise ConfigError(f"client {i} holds record ids more than once; ids must be unique")
        ordered = frame.sort_values(RECORD_ID, kind="stable").reset_index(drop=True)
        these = ordered[RECORD_ID].to_numpy()
        if reference is None:
            reference = these
        elif len(these) != len(reference) or not np.array_equal(these, reference):
            only_here = np.setdiff1d(these, reference)[:5].tolist()
            only_first = np.setdiff1d(reference, these)[:5].tolist()
            raise ConfigError(
                f"record ids not aligned: client {i} holds {len(these)} records, client 0 "
                f"{len(reference)}; ids only in client {i}: {only_here}, only in client 0: "
                f"{only_first}. Align the clients on the records they share first (private "
                "set intersection is out of scope here)"
            )
        aligned.append(ordered)
    return aligned


@dataclass(frozen=True)
class VerticalTableEncoder(TableEncoder):
    """The clients' own encoders joined in schema order, and which client owns which column."""

    groups: tuple[tuple[str, ...], ...] = field(default=())

    def owner_encoder(self, client: int) -> TableEncoder:
        """The encoder client ``client`` fitted on its own columns (schema order)."""
        names = set(self.groups[client])
        schema = TableSchema(tuple(c for c in self.schema.columns if c.name in names))
        return TableEncoder(schema, tuple(e for e in self.encodings if e.name in names))

    def owner_positions(self, client: int) -> torch.Tensor:
        """Where client ``client``'s encoded block sits in a joined encoded row: ``(dim_i,)``."""
        names, start = set(self.groups[client]), 0
        positions: list[int] = []
        for e in self.encodings:
            if e.name in names:
                positions.extend(range(start, start + e.width))
            start += e.width
        return torch.tensor(positions, dtype=torch.long)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "groups": [list(g) for g in self.groups]}


@dataclass(frozen=True)
class VerticalTable:
    """Every client's columns of the shared records, the server's holdout, the encoders."""

    source: str
    sha256: str
    schema: TableSchema
    target: str
    encoder: VerticalTableEncoder
    clients: list[TableClientData]
    holdout: pd.DataFrame
    record_ids: np.ndarray
    seed: int
    partition: str = "table_vertical"

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def train(self) -> pd.DataFrame:
        """The clients' columns joined on the record id (for evaluation only)."""
        return pd.concat([c.rows for c in self.clients], axis=1)[self.schema.names]

    def pooled_client(self) -> TableClientData:
        """Refused: the centralized reference of a vertical split is one column group."""
        raise ConfigError(
            "federation.centralized with table_vertical: the centralized reference is one "
            "client holding every column; give data.partition.params.columns a single group "
            "and data.num_clients=1"
        )

    def spec(self) -> DataSpec:
        return DataSpec(Modality.TABLES, table=self.encoder)

    def to_json(self) -> dict[str, Any]:
        """Who holds which columns of how many records."""
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
                {"client_id": c.client_id, "rows": c.num_examples, "columns": list(g)}
                for c, g in zip(self.clients, self.encoder.groups, strict=True)
            ],
            "encoder": self.encoder.to_json(),
        }


@PARTITIONERS.register("table_vertical")
class VerticalPartition(TablePartition):
    """Columns split across clients, every client holding every record (module docstring)."""

    name = "table_vertical"

    class Params(BaseModel):
        """``data.partition.params`` of ``table_vertical``."""

        model_config = ConfigDict(extra="forbid")

        #: The column names of each client, e.g. ``[[age, educ], [religious, had_affair]]``.
        columns: list[list[str]]
        holdout_fraction: float = Field(0.2, gt=0, lt=1)
        #: Hold out this fold of ``round(1 / holdout_fraction)`` instead (cross-validation).
        holdout_fold: int | None = Field(None, ge=0)
        max_modes: int = Field(10, ge=1)

    def __init__(
        self,
        columns: list[list[str]],
        holdout_fraction: float = 0.2,
        max_modes: int = 10,
        holdout_fold: int | None = None,
    ) -> None:
        super().__init__(holdout_fraction, max_modes, holdout_fold)
        self.columns = columns

    def federate(  # type: ignore[override]
        self,
        source_name: str,
        num_clients: int,
        seed: int,
        encoder: dict[str, Any] | None = None,
        data_dir: Path | str | None = None,
    ) -> VerticalTable:
        """Load the table, hold out rows, give each client its columns of the other rows.

        ``encoder``: the joined encoder as ``encoder_state`` gives it, used instead of each
        client fitting its own again (a client side built from the recipe gets it).
        ``data_dir``: where a downloaded table is looked for (``data.data_dir``).
        """
        source = get_table_source(source_name)
        groups = check_column_groups(self.columns, source.schema)
        if num_clients != len(groups):
            raise ConfigError(
                f"data.num_clients is {num_clients} but table_vertical names {len(groups)} "
                f"column groups; set data.num_clients={len(groups)}"
            )
        table = source.load(data_dir)
        table.insert(0, RECORD_ID, np.arange(len(table)))
        train, holdout = split_holdout(table, self.holdout_fraction, seed, self.holdout_fold)
        # Each client's view: the record id and its own columns (what it would hold).
        frames = align_records([train[[RECORD_ID, *g]] for g in groups])
        record_ids = frames[0][RECORD_ID].to_numpy()
        if encoder is not None:
            given = encoder_from_state(encoder, source.schema)
            joined = VerticalTableEncoder(
                source.schema, given.encodings, given.client_bytes, None, groups=groups
            )
        else:
            fits = []
            for i, (frame, group) in enumerate(zip(frames, groups, strict=True)):
                schema = TableSchema(tuple(c for c in source.schema.columns if c.name in group))
                own_seed = derive_seed(seed, "table-encoder", i) % 2**31
                stats = client_statistics(
                    frame[list(schema.names)], schema, self.max_modes, own_seed
                )
                fits.append(merge_statistics([stats], schema, self.max_modes, own_seed))
            by_name = {e.name: e for enc in fits for e in enc.encodings}
            joined = VerticalTableEncoder(
                source.schema,
                tuple(by_name[n] for n in source.schema.names),
                client_bytes=tuple(0 for _ in groups),  # no statistic leaves its owner
                correlation=None,
                groups=groups,
            )
        encoders = [joined.owner_encoder(i) for i in range(len(groups))]
        clients = [
            encode_client(i, frame[list(enc.schema.names)], enc, derive_seed(seed, "vertical", i))
            for i, (frame, enc) in enumerate(zip(frames, encoders, strict=True))
        ]
        return VerticalTable(
            source=source.name,
            sha256=source.sha256,
            schema=source.schema,
            target=source.target,
            encoder=joined,
            clients=clients,
            holdout=holdout.drop(columns=[RECORD_ID]).reset_index(drop=True),
            record_ids=record_ids,
            seed=seed,
        )


__all__ = [
    "RECORD_ID",
    "VerticalPartition",
    "VerticalTable",
    "VerticalTableEncoder",
    "align_records",
    "check_column_groups",
]
