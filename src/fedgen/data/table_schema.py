"""The schema of a table: its columns, each continuous, integer or categorical.

A table's rows are a ``pandas.DataFrame``. Categorical values are kept as
strings (a category is a label, even when it is written as a number, such as an
occupation code); continuous and integer values as numbers. ``TableSchema.check``
is the one place a table is checked against its schema: a column of an unknown
type, a missing value (NaN), a missing or unexpected column, or a column whose
values do not fit its type is a ``SchemaError`` that names the column and says
what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from fedgen.errors import ConfigError


class SchemaError(ConfigError):
    """A table or schema is malformed: unknown column type, NaNs, columns that differ."""


class ColumnType(StrEnum):
    """How a column is modelled: a real number, a whole number, or one of finitely many labels."""

    CONTINUOUS = "continuous"
    INTEGER = "integer"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Column:
    """One column of a schema."""

    name: str
    type: ColumnType

    @property
    def numeric(self) -> bool:
        """Whether the column holds numbers (continuous or integer)."""
        return self.type != ColumnType.CATEGORICAL


@dataclass(frozen=True)
class TableSchema:
    """The columns of a table, in order."""

    columns: tuple[Column, ...]

    @classmethod
    def from_mapping(cls, types: Mapping[str, str]) -> TableSchema:
        """A schema from ``{column name: type name}`` in column order.

        Raises ``SchemaError`` for a type other than continuous, integer and
        categorical, naming the column, or for an empty mapping.
        """
        if not types:
            raise SchemaError("a table schema needs at least one column")
        known = ", ".join(t.value for t in ColumnType)
        columns = []
        for name, kind in types.items():
            try:
                columns.append(Column(str(name), ColumnType(kind)))
            except ValueError:
                raise SchemaError(
                    f"column {name!r} has unknown type {kind!r}; use one of: {known}"
                ) from None
        return cls(tuple(columns))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """The column called ``name``; ``SchemaError`` lists the columns there are."""
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"no column {name!r} in the table; its columns are {self.names}")

    def categorical(self) -> list[str]:
        """Names of the categorical columns, in order."""
        return [c.name for c in self.columns if c.type == ColumnType.CATEGORICAL]

    def to_json(self) -> dict[str, str]:
        return {c.name: c.type.value for c in self.columns}

    def check(self, frame: pd.DataFrame, what: str = "the table") -> pd.DataFrame:
        """``frame`` with the schema's columns in order and typed (categories as ``str``).

        Raises ``SchemaError`` when columns are missing or unexpected, any value is
        missing (NaN/None), a numeric column holds non-numbers, or an integer column
        holds fractions. Every problem is listed, not only the first.
        """
        problems = []
        missing = [n for n in self.names if n not in frame.columns]
        extra = [str(n) for n in frame.columns if n not in self.names]
        if missing:
            problems.append(f"columns {missing} of the schema are not in {what}")
        if extra:
            problems.append(f"{what} has columns {extra} the schema does not name")
        if problems:
            raise SchemaError(
                "; ".join(problems) + f"; the schema's columns are {self.names}: make "
                "the table and the schema name the same columns"
            )
        out = {}
        for c in self.columns:
            values = frame[c.name]
            nans = int(values.isna().sum())
            if nans:
                problems.append(
                    f"column {c.name!r} has {nans} missing values (NaN) in {what}; drop or "
                    "impute those rows first"
                )
                continue
            if c.type == ColumnType.CATEGORICAL:
                out[c.name] = values.astype(str)
                continue
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.isna().any():
                bad = values[numbers.isna()].iloc[0]
                problems.append(
                    f"column {c.name!r} is {c.type.value} but holds {bad!r} in {what}; declare "
                    "it categorical or fix the value"
                )
                continue
            array = numbers.to_numpy(dtype=np.float64)
            if not np.isfinite(array).all():
                problems.append(f"column {c.name!r} holds infinite values in {what}")
                continue
            if c.type == ColumnType.INTEGER and not np.all(array == np.round(array)):
                problems.append(
                    f"column {c.name!r} is integer but holds fractions in {what}; declare it "
                    "continuous"
                )
                continue
            out[c.name] = array
        if problems:
            raise SchemaError("; ".join(problems))
        return pd.DataFrame(out, index=frame.index)[self.names]
