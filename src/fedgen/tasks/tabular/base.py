"""What every table synthesizer shares: built from a table's encoder, sampling n rows.

A table task models rows in the reversible encoding of ``fedgen.data.table_encoder``
(fitted federatedly before round 1 and carried by ``DataSpec.table``); it generates
encoded rows with ``generate`` and this base decodes them to a ``pandas.DataFrame``.
``sample`` takes an int (n unconditioned rows) or ``(n, {column: value})``: n rows
whose categorical ``column`` holds ``value``, which a conditional model is asked for
directly when it trained on conditions naming that column (CTGAN, a ``condition_on``
column) and every model's output is filtered for. A category absent from the training
rows is a ``ValueError`` that lists the ones there are.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from fedgen.data.table_encoder import CategoricalEncoding, TableEncoder
from fedgen.modality import Conditioning, DataSpec, Modality
from fedgen.seeding import seed_from
from fedgen.tasks.base import Task, TaskParams
from fedgen.tasks.tabular import optimizer_state
from fedgen.tasks.tabular.condition_block import ConditionBlock
from fedgen.types import StateDict

#: Batches ``sample`` generates, at most, while filtering for a condition, per batch
#: that the ``n`` rows asked fill: a model whose rows match 1 in 50 or more fills any n.
MAX_CONDITION_TRIES = 50


class TableTaskParams(TaskParams):
    """Hyper-parameters every table task has."""

    batch_size: int = Field(500, ge=2)
    lr: float = Field(2e-4, gt=0)
    #: Rows generated per forward pass when sampling.
    sample_batch: int = Field(1000, ge=1)
    #: Each client keeps its Adam moments between rounds (its private state, never sent;
    #: ``fedgen.tasks.tabular.optimizer_state``); false starts every round from a fresh Adam.
    keep_optimizer: bool = True
    #: The clients' optimizer. ``sgd``: plain SGD steps at ``lr``, no moments, the client
    #: half of FedOpt (Reddi et al. 2021, "Adaptive Federated Optimization"): with an
    #: adaptive server optimizer (strategy ``fedadam`` or ``fedyogi``) the Adam
    #: normalisation happens once, on the averaged update, as centralized Adam's does on a
    #: pooled batch. Each client's own Adam instead normalises its own update: under silos
    #: (one value of a column per client) that weighs the tensors every client moves
    #: against those only one client moves (the silo's condition) differently from a
    #: pooled batch (``benchmarks/results/tabular.md``).
    local_optimizer: Literal["adam", "sgd"] = "adam"


class TableTask(Task):
    """Base of the table synthesizers (``tvae``, ``ctgan``)."""

    modality = Modality.TABLES
    conditioning = Conditioning.COLUMN
    task_name = "table task"
    #: The categorical columns a conditional model is given (``condition_on``), set by
    #: ``build``; None: every column (CTGAN) or none (TVAE).
    condition: ConditionBlock | None = None

    def __init__(self, params: TaskParams, encoder: TableEncoder, seed: int) -> None:
        self.encoder = encoder
        self.spans = encoder.spans()
        #: The loaded client's Adam moments (``optimizer_state`` keys); empty: fresh ones.
        self._optimizer: StateDict = {}
        #: Category counts generation draws conditional vectors by, one array per
        #: categorical column (``own_frequencies``); None: the merged encoder's.
        self.generation_counts: list[np.ndarray] | None = None
        super().__init__(params, 0, (0, 0, 0), seed)

    @contextmanager
    def own_frequencies(self, codes: Mapping[str, np.ndarray]) -> Iterator[None]:
        """Generate as the client holding rows of ``codes`` (``TableClientData.codes``)
        would for its own share of a table: conditional vectors, and a conditional
        block's categories, drawn by that client's category counts instead of the merged
        ones, until the block exits."""
        saved = self.generation_counts, self.condition
        self.generation_counts = [
            np.bincount(codes[enc.name], minlength=enc.width)
            for enc, _ in self.encoder.categorical()
        ]
        if self.condition is not None:
            self.condition = self.condition.with_shares_of(codes)
        try:
            yield
        finally:
            self.generation_counts, self.condition = saved

    # -- optimizer state kept by the client ------------------------------------------

    def optimizer_groups(self) -> dict[str, list[str]]:
        """The modules each of the task's optimizers trains, by optimizer (default: none)."""
        return {}

    def _named(self, group: str) -> list[tuple[str, torch.nn.Parameter]]:
        return [
            (f"{m}.{k}", param)
            for m in self.optimizer_groups()[group]
            for k, param in self.modules[m].named_parameters()
        ]

    def private_state(self) -> StateDict:
        """The private tensors and, with ``keep_optimizer``, the client's Adam moments."""
        state = super().private_state()
        if self._keeps_moments():
            for group in self.optimizer_groups():
                fresh = optimizer_state.zero_state(group, self._named(group))
                state.update({k: self._optimizer.get(k, v).clone() for k, v in fresh.items()})
        return state

    def load_state(self, state: StateDict) -> None:
        own = {k: v for k, v in state.items() if k.startswith(optimizer_state.PREFIX)}
        super().load_state({k: v for k, v in state.items() if k not in own})
        self._optimizer.update({k: v.clone() for k, v in own.items()})

    def _keeps_moments(self) -> bool:
        return bool(self.params.keep_optimizer) and self.params.local_optimizer == "adam"  # type: ignore[attr-defined]

    def make_optimizer(
        self, group: str, *, lr: float, weight_decay: float, **adam_options: Any
    ) -> torch.optim.Optimizer:
        """``group``'s optimizer: an Adam resuming the loaded client's moments when kept,
        or (``local_optimizer: sgd``) plain SGD, which has none."""
        if self.params.local_optimizer == "sgd":  # type: ignore[attr-defined]
            named = self._named(group)
            return torch.optim.SGD([q for _, q in named], lr=lr, weight_decay=weight_decay)
        kept = self._optimizer if self._keeps_moments() else {}
        return optimizer_state.adam(
            group, self._named(group), kept, lr=lr, weight_decay=weight_decay, **adam_options
        )

    def keep_optimizer(self, group: str, opt: torch.optim.Optimizer) -> None:
        """Remember an Adam's moments for ``private_state`` (with ``keep_optimizer``)."""
        if self._keeps_moments() and isinstance(opt, torch.optim.Adam):
            self._optimizer.update(optimizer_state.export(group, self._named(group), opt))

    def why_no_functional_training(self) -> str:
        if self.params.local_optimizer == "sgd":  # type: ignore[attr-defined]
            return (
                f"task {self.task_name}'s functional step runs Adam only, and "
                "local_optimizer is sgd; use backend inprocess or process_pool "
                "(or local_optimizer adam)"
            )
        return super().why_no_functional_training()

    @classmethod
    def from_spec(cls, params: TaskParams, spec: DataSpec, seed: int) -> Task:
        if spec.modality != Modality.TABLES or spec.table is None:
            raise ValueError(
                f"task {cls.task_name} generates tables, but the data is {spec.modality}; "
                "choose a table source (e.g. data.sources=[fair])"
            )
        if getattr(spec.table, "groups", ()):
            raise ValueError(
                f"task {cls.task_name} models whole rows, but the table is split by columns "
                "(table_vertical): use task vertical_ctgan or vertical_tvae with backend vertical"
            )
        return cls(params, spec.table, seed)

    def privacy_problems(self) -> list[str]:
        # Table tasks draw their rows themselves (training-by-sampling), not through
        # ``local_training``, so DP-SGD would never see them; the encoder's statistics are
        # released without noise too. Refuse rather than pretend.
        return [
            f"task {self.task_name} does not train through DP-SGD, and its encoder is fitted "
            "from client statistics released without noise; drop the dpsgd section"
        ]

    @abstractmethod
    def generate(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        """``(n, encoder.dim)`` encoded rows; ``condition`` is ``(categorical column index,
        category index)`` for models that take a conditional vector (others ignore it)."""

    def sample(self, condition: Any, generator: torch.Generator) -> pd.DataFrame:
        """Rows of the table: ``condition`` is n, or ``(n, {column: value})``."""
        if isinstance(condition, int | np.integer):
            return self.sample_rows(int(condition), generator)
        n, given = condition
        if not isinstance(given, Mapping) or len(given) != 1:
            raise ValueError("condition rows on one column: (n, {column: value})")
        ((column, value),) = given.items()
        return self.sample_rows(int(n), generator, column, value)

    def condition_index(self, column: str, value: Any) -> tuple[int, int]:
        """``(categorical column index, category index)`` of ``column == value``.

        Raises ``ValueError`` for a column that is not categorical or a value absent
        from the training rows, listing the choices.
        """
        categorical = [enc for enc, _ in self.encoder.categorical()]
        names = [enc.name for enc in categorical]
        if column not in names:
            raise ValueError(
                f"rows can be conditioned on a categorical column; {column!r} is not one: "
                f"choose from {names}"
            )
        enc: CategoricalEncoding = categorical[names.index(column)]
        return names.index(column), enc.index(value)

    @torch.no_grad()
    def sample_rows(
        self, n: int, generator: torch.Generator, column: str | None = None, value: Any = None
    ) -> pd.DataFrame:
        """``n`` decoded rows, all with ``column == value`` when a column is given.

        Conditioned rows are generated (with the condition, for a conditional model) and
        filtered, in at most ``MAX_CONDITION_TRIES`` times the batches ``n`` rows fill;
        ``ValueError`` when the rows matching so far say that budget cannot give ``n``.
        """
        if n < 0:
            raise ValueError(f"n is {n}; ask for 0 or more rows")
        for module in self.modules.values():
            module.eval()
        batch_size: int = self.params.sample_batch  # type: ignore[attr-defined]
        if column is None:
            parts = []
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                parts.append(self.generate(count, generator, None).numpy())
            rows = np.concatenate(parts) if parts else np.zeros((0, self.encoder.dim))
            return self.encoder.decode(rows)
        condition = self.condition_index(column, value)
        wanted = self.encoder.categorical()[condition[0]][0].categories[condition[1]]
        # The budget grows with n (a fixed one refused large n even when every row
        # matched); it stays bounded, so a condition that never matches still fails.
        budget = MAX_CONDITION_TRIES * max(math.ceil(n / batch_size), 1)
        kept: list[pd.DataFrame] = []
        have = tries = 0
        while have < n:
            # After the first MAX_CONDITION_TRIES batches the match rate is known well
            # enough to stop early when it cannot fill n rows within the budget.
            projected = math.inf if have == 0 else tries * n / have
            if tries >= budget or (tries >= MAX_CONDITION_TRIES and projected > budget):
                raise ValueError(
                    f"the model generated only {have} rows with {column} == {wanted!r} in "
                    f"{tries} batches of {batch_size}; {n} rows at that rate need more than "
                    f"the {budget} batches allowed: train it longer or ask for fewer rows"
                )
            batch = self.encoder.decode(self.generate(batch_size, generator, condition).numpy())
            match = batch[batch[column] == wanted]
            kept.append(match)
            have += len(match)
            tries += 1
        if not kept:  # n == 0
            return self.encoder.decode(np.zeros((0, self.encoder.dim)))
        return pd.concat(kept, ignore_index=True).iloc[:n].reset_index(drop=True)


def apply_activations(
    raw: torch.Tensor, spans: list[Any], tau: float | None = None
) -> torch.Tensor:
    """Network outputs ``(B, dim)`` to encoded rows: tanh for offsets, softmax (or Gumbel-
    softmax at temperature ``tau``, as CTGAN's generator) for one-hots."""
    parts = []
    for span in spans:
        block = raw[:, span.start : span.start + span.width]
        if span.activation == "tanh":
            parts.append(torch.tanh(block))
        elif tau is None:
            parts.append(torch.softmax(block, dim=1))
        else:
            parts.append(torch.nn.functional.gumbel_softmax(block, tau=tau))
    return torch.cat(parts, dim=1)


def draw_conditions(
    n: int,
    categorical: list[tuple[CategoricalEncoding, Any]],
    offsets: list[int],
    width: int,
    condition: tuple[int, int] | None,
    generator: torch.Generator,
    only: int | None = None,
    counts: Sequence[np.ndarray] | None = None,
) -> torch.Tensor:
    """CTGAN's conditional vectors for ``n`` generated rows, ``width`` wide.

    ``condition`` ``(column, category)`` sets that one-hot in every row; without it,
    each row picks a categorical column uniformly (column ``only`` when given) and a
    category by its frequency (the ctgan library's docstring says the same, but its
    ``DataSampler.sample_original_condvec`` draws from the log-frequencies it trains
    with; raw frequencies give the table's own category mix): the encoder's merged
    counts, or ``counts[i]`` for column ``i`` when given (one client's own).
    ``offsets[i]`` is where column ``i``'s one-hot starts.
    """
    cond = torch.zeros(n, width)
    if condition is not None:
        column, category = condition
        cond[:, offsets[column] + category] = 1.0
    elif categorical:
        rng = np.random.default_rng(seed_from(generator))
        columns = rng.integers(len(categorical), size=n) if only is None else np.full(n, only)
        for i, (enc, _) in enumerate(categorical):
            picked = np.flatnonzero(columns == i)
            frequency = enc.counts if counts is None else counts[i]
            p = frequency / frequency.sum()
            cond[picked, offsets[i] + rng.choice(enc.width, size=len(picked), p=p)] = 1.0
    return cond
