"""CTGAN: a conditional Wasserstein GAN over mode-specifically normalized rows.

Xu, Skoularidou, Cuesta-Infante and Veeramachaneni, "Modeling Tabular data using
Conditional GAN", NeurIPS 2019. Its three ideas, as the ``ctgan`` library has them:

- mode-specific normalization of numeric columns (``fedgen.data.table_encoder``);
- a conditional vector: the one-hot of one category of one categorical column,
  given to both networks; the generator is also penalised (cross-entropy) when
  its row does not hold that category;
- training-by-sampling: each row of a batch picks a categorical column uniformly
  and a category by its log-frequency in the client's rows, then a real row of that
  category, so rare categories are seen and the generator learns every condition.

The generator is two residual blocks (here with LayerNorm, not BatchNorm: DESIGN.md
forbids BatchNorm in federated tasks); the critic sees ``pac`` rows at once
(PacGAN) with a gradient penalty (WGAN-GP). Federated, both networks are averaged,
as Fed-TGAN does.

``condition_on`` restricts the conditional vector to one categorical column (e.g. the
target): training-by-sampling picks that column for every row, and generated rows draw
its category by the merged frequencies. The generator then learns the other columns
given that column's category, which is what survives averaging when clients hold
different mixes of it (label skew), as it does for TVAE's ``condition_on``.

``condition_on`` may also name two columns (a silo column and the target): every
conditional vector then holds one category of each. Training-by-sampling picks a cell of
the client's own contingency table of the pair by its log-frequency and a real row of that
cell; generated rows draw cells from the pooled joint counts the encoder merged, so the
pair keeps its dependence (drawn apart, a silo's rows would get the other silos' targets).
The generator is penalised on both columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from fedgen.data.table_data import TableClientData
from fedgen.registry import TASKS
from fedgen.seeding import global_rng_from, seed_from
from fedgen.tasks.tabular.base import (
    TableTask,
    TableTaskParams,
    apply_activations,
    draw_conditions,
)
from fedgen.tasks.tabular.condition_block import condition_block
from fedgen.tasks.tabular.ctgan_functional import DROPOUT, CtganFunctionalTraining
from fedgen.tasks.tabular.optimizer_state import FunctionalAdams


class _Residual(nn.Module):
    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width_in, width_out)
        self.norm = nn.LayerNorm(width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.norm(self.fc(x))), x], dim=1)  # (B, out + in)


class _Generator(nn.Module):
    def __init__(self, noise: int, cond: int, hidden: int, dim: int) -> None:
        super().__init__()
        width = noise + cond
        self.blocks = nn.Sequential(_Residual(width, hidden), _Residual(width + hidden, hidden))
        self.out = nn.Linear(width + 2 * hidden, dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(torch.cat([z, c], dim=1)))  # (B, dim), before activations


class _Critic(nn.Module):
    def __init__(self, width: int, hidden: int, pac: int) -> None:
        super().__init__()
        self.pac = pac
        self.net = nn.Sequential(
            nn.Linear(width * pac, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(DROPOUT),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(DROPOUT),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, x.shape[1] * self.pac))  # (B / pac, 1)


@TASKS.register("ctgan")
class CtganTask(TableTask):
    """CTGAN (see module docstring); generator and critic are federated."""

    task_name = "ctgan"

    class Params(TableTaskParams):
        """``task.params`` of ``ctgan`` (defaults: the ``ctgan`` library's)."""

        betas: tuple[float, float] = (0.5, 0.9)
        noise_dim: int = Field(128, ge=1)
        hidden: int = Field(256, ge=1)
        pac: int = Field(10, ge=1)
        gp_weight: float = Field(10.0, ge=0)
        weight_decay: float = Field(1e-6, ge=0)
        #: Temperature of the generator's Gumbel-softmax one-hots.
        tau: float = Field(0.2, gt=0)
        #: The categorical column conditional vectors name, or two named jointly (see
        #: the module docstring); None: every categorical column, chosen uniformly, as
        #: the library does.
        condition_on: str | list[str] | None = None

        @model_validator(mode="after")
        def _batch_fills_packs(self) -> CtganTask.Params:
            if self.batch_size % self.pac:
                raise ValueError(
                    f"batch_size {self.batch_size} must be a multiple of pac {self.pac}"
                )
            return self

    params: Params

    @property
    def cond_dim(self) -> int:
        return sum(enc.width for enc, _ in self.encoder.categorical())

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"generator": ["generator"], "critic": ["critic"]}

    def build(self) -> dict[str, nn.Module]:
        p, dim = self.params, self.encoder.dim
        #: The categorical columns every conditional vector names, or None: any one.
        self.condition = condition_block(self.encoder, p.condition_on)
        return {
            "generator": _Generator(p.noise_dim, self.cond_dim, p.hidden, dim),
            "critic": _Critic(dim + self.cond_dim, p.hidden, p.pac),
        }

    def functional_training(self) -> CtganFunctionalTraining | None:
        """``train_local``'s iteration as a pure function (the vectorized backend's), both
        Adams' moments and step counts kept between rounds as ``train_local`` keeps them;
        None with ``local_optimizer: sgd``."""
        if self.params.local_optimizer != "adam":
            return None  # see why_no_functional_training
        p = self.params
        adams = FunctionalAdams(
            self.optimizer_groups(),
            keep=p.keep_optimizer,
            betas=p.betas,
            weight_decay=p.weight_decay,
        )
        return CtganFunctionalTraining(
            self.modules["generator"],
            conditions=self._training_conditions,
            spans=self.spans,
            categorical=[(start, enc.width) for enc, start in self.encoder.categorical()],
            dim=self.encoder.dim,
            cond_dim=self.cond_dim,
            hidden=p.hidden,
            noise_dim=p.noise_dim,
            batch_size=p.batch_size,
            pac=p.pac,
            tau=p.tau,
            gp_weight=p.gp_weight,
            lr=p.lr,
            adams=adams,
        )

    def _cond_offsets(self) -> list[int]:
        offsets, start = [], 0
        for enc, _ in self.encoder.categorical():
            offsets.append(start)
            start += enc.width
        return offsets

    def _training_conditions(
        self, data: TableClientData, n: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """Training-by-sampling: conditional vectors ``(n, cond_dim)``, the columns and
        categories each names ``(n, k)`` (k = 2 with a joint ``condition_on``, else 1),
        and a real row index of the client holding those categories."""
        categorical = self.encoder.categorical()
        if self.condition is not None and len(self.condition.columns) == 2:
            return self._joint_conditions(data, n, rng)
        offsets = self._cond_offsets()
        if not categorical:  # nothing to condition on: plain uniform rows
            rows = rng.integers(data.num_examples, size=n)
            zeros = np.zeros((n, 1), np.int64)
            return torch.zeros(n, 0), zeros, zeros.copy(), rows
        if self.condition is None:
            columns = rng.integers(len(categorical), size=n)
        else:
            columns = np.full(n, self.condition.indices[0])
        categories = np.zeros(n, dtype=np.int64)
        rows = np.zeros(n, dtype=np.int64)
        cond = torch.zeros(n, self.cond_dim)
        for i, (enc, _) in enumerate(categorical):
            picked = np.flatnonzero(columns == i)
            if not len(picked):
                continue
            chosen, rows[picked] = _sample_by_log_frequency(
                data.codes[enc.name], enc.width, len(picked), rng
            )
            categories[picked] = chosen
            cond[picked, offsets[i] + chosen] = 1.0
        return cond, columns[:, None], categories[:, None], rows

    def _joint_conditions(
        self, data: TableClientData, n: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """``_training_conditions`` for two columns: a cell of the client's contingency
        table of the pair by its log-frequency, and a real row of that cell."""
        assert self.condition is not None
        (a, b), (wa, wb) = self.condition.columns, self.condition.widths
        cells = data.codes[a].astype(np.int64) * wb + data.codes[b]
        chosen, rows = _sample_by_log_frequency(cells, wa * wb, n, rng)
        categories = np.stack([chosen // wb, chosen % wb], axis=1)
        columns = np.broadcast_to(np.array(self.condition.indices), (n, 2)).copy()
        offsets = self._cond_offsets()
        cond = torch.zeros(n, self.cond_dim)
        for j in range(2):
            cond[np.arange(n), offsets[columns[0, j]] + categories[:, j]] = 1.0
        return cond, columns, categories, rows

    def _gradient_penalty(
        self, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        pac = self.params.pac
        alpha = torch.rand(len(real) // pac, 1, 1, generator=generator)
        alpha = alpha.repeat(1, pac, real.shape[1]).reshape(-1, real.shape[1])
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        score = self.modules["critic"](mixed)
        (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
        norms = grad.reshape(-1, pac * real.shape[1]).norm(2, dim=1)
        return ((norms - 1) ** 2).mean() * self.params.gp_weight

    def _condition_loss(
        self, raw: torch.Tensor, columns: np.ndarray, categories: np.ndarray
    ) -> torch.Tensor:
        """Cross-entropy of the generated one-hots of each row's conditioned columns
        (``columns``, ``categories``: ``(B, k)``), summed, over the batch size."""
        loss = raw.new_zeros(())
        for j in range(columns.shape[1]):
            for i, (enc, start) in enumerate(self.encoder.categorical()):
                picked = torch.from_numpy(np.flatnonzero(columns[:, j] == i))
                if len(picked):
                    logits = raw[picked, start : start + enc.width]
                    target = torch.from_numpy(categories[picked.numpy(), j])
                    loss = loss + F.cross_entropy(logits, target, reduction="sum")
        return loss / len(raw)

    def train_local(
        self, data: Any, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        assert isinstance(data, TableClientData)
        p = self.params
        lr = float(config.get("lr", p.lr))
        gen, critic = self.modules["generator"], self.modules["critic"]
        opt_g = self.make_optimizer("generator", lr=lr, betas=p.betas, weight_decay=p.weight_decay)
        opt_d = self.make_optimizer("critic", lr=lr, betas=p.betas, weight_decay=p.weight_decay)
        gen.train()
        critic.train()
        rng = np.random.default_rng(seed_from(generator))
        b = p.batch_size
        totals = {"loss/generator": 0.0, "loss/critic": 0.0}
        with global_rng_from(generator):
            for _ in range(steps):
                # Critic: real rows of the sampled categories against fakes of the same
                # conditions, in a shuffled order (as CTGAN pairs them).
                cond, _, _, rows = self._training_conditions(data, b, rng)
                z = torch.randn(b, p.noise_dim, generator=generator)
                fake = apply_activations(gen(z, cond), self.spans, p.tau)
                perm = torch.from_numpy(rng.permutation(b))
                real = data.encoded[torch.from_numpy(rows)][perm]
                real_in = torch.cat([real, cond[perm]], dim=1)
                fake_in = torch.cat([fake, cond], dim=1).detach()
                loss_d = critic(fake_in).mean() - critic(real_in).mean()
                penalty = self._gradient_penalty(real_in, fake_in, generator)
                opt_d.zero_grad()
                (loss_d + penalty).backward()
                opt_d.step()
                # Generator: fool the critic and honour the condition.
                cond, columns, categories, _ = self._training_conditions(data, b, rng)
                z = torch.randn(b, p.noise_dim, generator=generator)
                raw = gen(z, cond)
                fake = apply_activations(raw, self.spans, p.tau)
                loss_g = -critic(torch.cat([fake, cond], dim=1)).mean()
                loss_g = loss_g + self._condition_loss(raw, columns, categories)
                opt_g.zero_grad()
                loss_g.backward()
                opt_g.step()
                totals["loss/generator"] += loss_g.item()
                totals["loss/critic"] += loss_d.item()
        self.keep_optimizer("generator", opt_g)
        self.keep_optimizer("critic", opt_d)
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def generate(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        cond = self.generation_conditions(n, generator, condition)
        z = torch.randn(n, self.params.noise_dim, generator=generator)
        with global_rng_from(generator):
            return apply_activations(
                self.modules["generator"](z, cond), self.spans, self.params.tau
            )

    def generation_conditions(
        self, n: int, generator: torch.Generator, condition: tuple[int, int] | None
    ) -> torch.Tensor:
        """The conditional vectors ``(n, cond_dim)`` of ``n`` generated rows.

        Unconditioned rows draw them from the merged frequencies (the table's own; the
        ctgan library draws from log-frequencies, see ``draw_conditions``); a
        ``condition_on`` column from its merged counts, a joint pair from its merged
        cells, the other column given the asked one when ``condition`` names one of the
        pair. A condition on a column outside
        ``condition_on`` draws as an unconditioned row does (``sample_rows`` keeps the
        matching rows), as TVAE's block does."""
        block = self.condition
        if block is not None and condition is not None and condition[0] not in block.indices:
            # Training sets exactly the condition_on slots in every vector; one naming
            # another column alone (those slots all zero) is an input the generator never saw.
            condition = None
        if block is None or len(block.columns) == 1:
            return draw_conditions(
                n,
                self.encoder.categorical(),
                self._cond_offsets(),
                self.cond_dim,
                condition,
                generator,
                only=None if block is None else block.indices[0],
                counts=self.generation_counts,
            )
        pair = block.draw(n, generator, condition)
        cond = torch.zeros(n, self.cond_dim)
        offsets, at = self._cond_offsets(), 0
        for index, width in zip(block.indices, block.widths, strict=True):
            cond[:, offsets[index] : offsets[index] + width] = pair[:, at : at + width]
            at += width
        return cond


def _sample_by_log_frequency(
    codes: np.ndarray, width: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` categories of ``codes`` (values below ``width``) by their log-frequency in
    these rows, and a uniform row of each: categories the rows do not hold are never
    asked. The rows grouped by category (each group in row order), one bounded draw per
    row in a single call: the same draws as a choice among that category's rows per row
    (held by a test)."""
    counts = np.bincount(codes, minlength=width)
    p = np.log1p(counts)
    p /= p.sum()
    chosen = rng.choice(width, size=n, p=p)
    by_category = np.argsort(codes, kind="stable")
    first = np.searchsorted(codes[by_category], chosen)
    return chosen, by_category[first + rng.integers(0, counts[chosen])]
