"""The categorical column a conditional table model's decoder is given (TVAE's
``condition_on``): read from the encoded rows in training, drawn when generating."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedgen.data.table_encoder import CategoricalEncoding


@dataclass(frozen=True)
class ConditionBlock:
    """The categorical column a conditional TVAE's decoder reads: where its one-hot sits
    in an encoded row, its index among the categorical columns, and its category shares."""

    column: str
    index: int
    start: int
    shares: torch.Tensor  # (width,) float64, from the encoder's pooled counts

    @property
    def width(self) -> int:
        return int(self.shares.numel())

    def draw(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        """``(n, width)`` one-hots: every row the asked category when ``condition`` is
        this column's, else categories drawn by their shares in the training rows."""
        if condition is not None and condition[0] == self.index:
            picked = torch.full((n,), condition[1], dtype=torch.long)
        else:
            picked = torch.multinomial(self.shares, n, replacement=True, generator=generator)
        return F.one_hot(picked, self.width).float()


def condition_block(
    categorical: list[tuple[CategoricalEncoding, int]], column: str | None
) -> ConditionBlock | None:
    """``condition_on``'s block, or None; ``ValueError`` naming the choices for a column
    that is not categorical."""
    if column is None:
        return None
    names = [enc.name for enc, _ in categorical]
    if column not in names:
        raise ValueError(
            f"task.params.condition_on is {column!r}, which is no categorical column of "
            f"this table; choose one of {names}, or drop condition_on"
        )
    index = names.index(column)
    enc, start = categorical[index]
    counts = torch.as_tensor(enc.counts, dtype=torch.float64)
    return ConditionBlock(column, index, start, counts / counts.sum())


def with_condition(
    z: torch.Tensor, x: torch.Tensor, condition: ConditionBlock | None
) -> torch.Tensor:
    """The decoder's input: the latent ``z (..., B, latent)``, followed by the
    conditioning column's one-hot read from the encoded rows ``x (..., B, dim)``."""
    if condition is None:
        return z
    return torch.cat([z, x[..., condition.start : condition.start + condition.width]], dim=-1)
