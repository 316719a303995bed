"""The categorical columns a conditional table model's decoder is given (TVAE's
``condition_on``): read from the encoded rows in training, drawn when generating.

One column, or two drawn jointly from their pooled joint counts (the encoder's, merged
from the clients' contingency tables): drawn apart, two dependent columns (a silo and
the target) would lose their dependence in every generated row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from fedgen.data.table_encoder import TableEncoder

#: The most columns ``condition_on`` takes: the encoder merges pairs' joint counts.
MAX_COLUMNS = 2


@dataclass(frozen=True)
class ConditionBlock:
    """The categorical columns a conditional TVAE's decoder reads: where each one-hot
    sits in an encoded row, each column's index among the categorical columns, and the
    columns' joint category shares."""

    columns: tuple[str, ...]
    indices: tuple[int, ...]
    starts: tuple[int, ...]
    widths: tuple[int, ...]
    #: ``(prod(widths),)`` float64: the share of each combination of categories, the
    #: last column's varying fastest, from the encoder's pooled counts.
    shares: torch.Tensor

    @property
    def width(self) -> int:
        return sum(self.widths)

    def draw(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        """``(n, width)`` one-hots: categories drawn by their joint shares in the
        training rows; a ``condition`` on one of the columns fixes that column's category
        and draws the other's given it."""
        shares = self.shares
        if condition is not None and condition[0] in self.indices:
            axis, category = self.indices.index(condition[0]), condition[1]
            if len(self.columns) == 1:
                picked = torch.full((n,), category, dtype=torch.long)
                return F.one_hot(picked, self.width).float()
            # The other column drawn given the asked category: its slice of the shares.
            grid = shares.reshape(self.widths)
            kept = torch.zeros_like(grid)
            kept.select(axis, category).copy_(grid.select(axis, category))
            shares = kept.reshape(-1)
        cell = torch.multinomial(shares, n, replacement=True, generator=generator)
        parts = []
        for width in reversed(self.widths):
            parts.append(F.one_hot(cell % width, width).float())
            cell = cell // width
        return torch.cat(parts[::-1], dim=1)

    def with_shares_of(self, codes: Mapping[str, np.ndarray]) -> ConditionBlock:
        """This block drawing by the (joint) category counts of the rows whose category
        codes are ``codes`` (one client's ``TableClientData.codes``), not the pooled ones."""
        cells = np.zeros(len(codes[self.columns[0]]), dtype=np.int64)
        for column, width in zip(self.columns, self.widths, strict=True):
            cells = cells * width + codes[column].astype(np.int64)
        counts = np.bincount(cells, minlength=math.prod(self.widths))
        if counts.sum() == 0:
            raise ValueError("no rows to draw the condition's categories by: give codes of rows")
        return replace(self, shares=torch.as_tensor(counts / counts.sum(), dtype=torch.float64))

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """The columns' one-hots in encoded rows ``x (..., dim)``, side by side."""
        return torch.cat(
            [x[..., s : s + w] for s, w in zip(self.starts, self.widths, strict=True)], dim=-1
        )

    def write(self, rows: torch.Tensor, given: torch.Tensor) -> None:
        """Put the one-hots ``given`` (as ``draw`` returns them) into encoded ``rows``."""
        offset = 0
        for start, width in zip(self.starts, self.widths, strict=True):
            rows[:, start : start + width] = given[:, offset : offset + width]
            offset += width


def condition_block(
    encoder: TableEncoder, columns: str | Sequence[str] | None
) -> ConditionBlock | None:
    """``condition_on``'s block, or None; ``ValueError`` naming the choices for a column
    that is not categorical, or what to change for more than two."""
    if columns is None:
        return None
    asked = (columns,) if isinstance(columns, str) else tuple(columns)
    categorical = encoder.categorical()
    names = [enc.name for enc, _ in categorical]
    if not asked or len(asked) > MAX_COLUMNS or len(set(asked)) != len(asked):
        raise ValueError(
            f"task.params.condition_on is {list(asked)}: name one categorical column, or "
            f"two different ones (drawn jointly from their pooled joint counts); "
            f"the table's categorical columns are {names}"
        )
    for column in asked:
        if column not in names:
            raise ValueError(
                f"task.params.condition_on names {column!r}, which is no categorical column "
                f"of this table; choose from {names}, or drop condition_on"
            )
    indices = tuple(names.index(c) for c in asked)
    encodings = [categorical[i][0] for i in indices]
    if len(asked) == 1:
        counts = torch.as_tensor(encodings[0].counts, dtype=torch.float64)
    else:
        joint = encoder.joint_counts(*asked)
        if joint is None:
            raise ValueError(
                f"task.params.condition_on names {list(asked)}, but the table encoder holds "
                "no joint counts of them (it was fitted before clients sent them): fit it "
                "again (a new run), or condition on one column"
            )
        counts = torch.as_tensor(joint, dtype=torch.float64).reshape(-1)
    widths = tuple(e.width for e in encodings)
    assert counts.numel() == math.prod(widths)
    return ConditionBlock(
        asked,
        indices,
        tuple(categorical[i][1] for i in indices),
        widths,
        counts / counts.sum(),
    )


def with_condition(
    z: torch.Tensor, x: torch.Tensor, condition: ConditionBlock | None
) -> torch.Tensor:
    """The decoder's input: the latent ``z (..., B, latent)``, followed by the
    conditioning columns' one-hots read from the encoded rows ``x (..., B, dim)``."""
    if condition is None:
        return z
    return torch.cat([z, condition.read(x)], dim=-1)
