"""Byzantine-robust aggregation: rules that bound what a few poisoned updates can do.

Each rule replaces FedAvg's mean by a robust combination of the round's
individual updates (flattened to one vector per client; memory O(cohort x
model), which these rules need by definition) and keeps FedAvg's sampling, server
learning rate and moving average. Each states how many Byzantine clients ``f``
(``byzantine``) it tolerates among ``n`` results, refuses a recipe whose planned
cohort cannot meet it before any client trains, and fails a round that ends with
too few results (the loop keeps the previous state). All are unweighted: a client
that lies about its example count must not buy influence. None can aggregate a
sum, so secure aggregation refuses them (``needs = Needs.INDIVIDUAL``), and
client-level DP refuses them (its sensitivity analysis bounds a mean, not a rule).

- ``median``: coordinate-wise median (Yin et al. 2018); n >= 2f + 1.
- ``trimmed_mean``: per coordinate, drop the f largest and f smallest values and
  average the rest (Yin et al. 2018); n >= 2f + 1.
- ``krum``: the update with the smallest sum of squared distances to its n - f - 2
  nearest others (Blanchard et al. 2017); n >= 2f + 3.
- ``multi_krum``: the mean of the ``selected`` updates with the best Krum scores
  (Blanchard et al. 2017; default n - f); n >= 2f + 3.
- ``bulyan``: n - 2f updates chosen by Krum one at a time, then per coordinate the
  mean of the n - 4f of them closest to their median (El Mhamdi et al. 2018);
  n >= 4f + 3.
- ``norm_bound``: every update scaled down to norm at most ``max_norm``, then the
  mean (Sun et al. 2019, "Can you really backdoor federated learning?"): a client's
  pull on the model is bounded, not removed; no f.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from fedgen.errors import ConfigError, RoundFailedError
from fedgen.registry import STRATEGIES
from fedgen.strategies.base import Aggregate, Needs, Strategy
from fedgen.strategies.fedavg import FedAvg
from fedgen.strategies.moving_average import EmaWarmup
from fedgen.types import ClientResult, RoundPlan, StateDict


class RobustAggregation(FedAvg):
    """FedAvg with the mean replaced by ``combine`` over the stacked updates."""

    #: The rule's name in recipes and messages.
    rule: ClassVar[str] = ""
    #: A robust rule needs every individual update.
    needs = Needs.INDIVIDUAL
    why_individual = "a robust rule compares the clients' updates with each other"

    class Params(FedAvg.Params):
        """FedAvg's params and ``byzantine``: how many poisoned clients to tolerate."""

        byzantine: int = Field(0, ge=0)

    def __init__(
        self,
        byzantine: int = 0,
        fraction: float = 1.0,
        min_clients: int = 2,
        server_lr: float = 1.0,
        weighted: bool = True,
        ema_decay: float | None = None,
        ema_warmup: EmaWarmup = False,
        sampling: str = "fixed",
        fixed_denominator: bool = False,
        root_seed: int = 0,
    ) -> None:
        if fixed_denominator:
            raise ConfigError(
                f"strategy {self.rule}: fixed_denominator belongs to FedAvg's mean; a robust "
                "rule combines the updates that arrived (remove fixed_denominator)"
            )
        super().__init__(
            fraction=fraction,
            min_clients=min_clients,
            server_lr=server_lr,
            weighted=weighted,
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
            sampling=sampling,
            root_seed=root_seed,
        )
        if byzantine < 0:
            raise ConfigError(f"strategy {self.rule}: byzantine must be >= 0, got {byzantine}")
        self.byzantine = byzantine

    def configure(self, round: int, client_ids: list[int], rng: np.random.Generator) -> RoundPlan:
        """FedAvg's sampling; refuses, before any client trains, a planned cohort too small
        for the tolerance (the plan is fixed by the recipe, so this is round 0's check)."""
        need = self.required_results()
        planned = self.expected_clients(len(client_ids))
        if planned < need:
            raise ConfigError(
                f"strategy {self.rule} tolerates byzantine={self.byzantine} poisoned clients "
                f"only with at least {need} results a round ({self.tolerance()}), but plans "
                f"{planned:g} clients of {len(client_ids)}; raise strategy.params.fraction or "
                f"min_clients to {need}, or lower byzantine"
            )
        return super().configure(round, client_ids, rng)

    def dp_problems(self, what: str, need_independent_sampling: bool) -> list[str]:
        """Refused: client-level DP's analysis bounds a mean's sensitivity, not a rule's
        that selects or ranks updates (its output can move by more than C / m)."""
        return Strategy.dp_problems(self, what, need_independent_sampling)

    def required_results(self) -> int:
        """The fewest results for which the rule tolerates ``byzantine`` poisoned ones."""
        return 2 * self.byzantine + 1

    def tolerance(self) -> str:
        """The rule's condition on n and f, as its paper states it."""
        return "n >= 2f + 1"

    def client_weight(self, num_examples: int) -> float:
        raise self._no_sums()

    def aggregate_sum(
        self,
        round: int,
        weighted_sum: StateDict,
        weight_sum: float,
        num_clients: int,
        num_examples: int,
    ) -> Aggregate:
        raise self._no_sums()

    def aggregate(self, round: int, results: Iterable[ClientResult]) -> Aggregate:
        rows: list[torch.Tensor] = []
        counters: list[torch.Tensor] = []
        names: list[str] = []
        counted: list[str] = []
        #: Every tensor's shape, in the update's order (the delta keeps it).
        shapes: dict[str, torch.Size] = {}
        examples = 0
        for res in results:
            assert res.update is not None  # the loop passes successful results only
            if not shapes:
                shapes = {k: t.shape for k, t in res.update.items()}
                # The rule sees the float tensors only: an integer one (a BatchNorm's
                # step counter, whose delta is the local step count) would dominate
                # norms and distances while being no gradient (Sun et al. bound the
                # model's update). Counters take the coordinate-wise median.
                names = [k for k, t in res.update.items() if t.is_floating_point()]
                counted = [k for k in res.update if k not in names]
            rows.append(_flat(res.update, names))
            counters.append(_flat(res.update, counted))
            examples += res.num_examples
        n = len(rows)
        need = max(self.required_results(), self.min_clients)
        if n < need:
            raise RoundFailedError(
                f"round {round}: {n} usable client updates; {self.rule} with "
                f"byzantine={self.byzantine} needs at least {need} ({self.tolerance()})"
            )
        vector, metrics = self.combine(torch.stack(canonical_order(rows)))
        parts = _unflat(vector, names, shapes)
        if counted:
            median = torch.quantile(torch.stack(counters), 0.5, dim=0)
            parts.update(_unflat(median, counted, shapes))
        delta = {k: parts[k] for k in shapes}
        return Aggregate(delta=delta, num_examples=examples, num_clients=n, metrics=metrics)

    def combine(self, updates: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The robust combination of ``updates`` (n x d, float64) and its metrics."""
        raise NotImplementedError


@STRATEGIES.register("median")
class CoordinateMedian(RobustAggregation):
    """Coordinate-wise median (Yin et al. 2018); an even n takes the mean of the middle two."""

    rule = "median"

    def combine(self, updates: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # torch.median returns the lower middle value; the midpoint is the textbook median.
        return torch.quantile(updates, 0.5, dim=0), {}


@STRATEGIES.register("trimmed_mean")
class TrimmedMean(RobustAggregation):
    """Per coordinate, the mean after dropping the ``byzantine`` largest and smallest."""

    rule = "trimmed_mean"

    def combine(self, updates: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        f = self.byzantine
        ordered = torch.sort(updates, dim=0).values
        return ordered[f : updates.shape[0] - f].mean(dim=0), {}


def _flat(update: StateDict, names: list[str]) -> torch.Tensor:
    """``update``'s tensors ``names`` as one float64 vector (empty for no names)."""
    if not names:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([update[k].to(torch.float64).reshape(-1) for k in names])


def _unflat(vector: torch.Tensor, names: list[str], shapes: dict[str, torch.Size]) -> StateDict:
    """``vector`` cut back into tensors ``names`` of ``shapes`` (``_flat``'s inverse)."""
    out: StateDict = {}
    offset = 0
    for name in names:
        shape = shapes[name]
        size = shape.numel()
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    return out


def canonical_order(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """``rows`` sorted by a digest of their bytes: an order that depends on the updates
    alone, so that ties in a rule (Krum's scores, Bulyan's last picks) are broken the same
    way whatever order the clients' results arrived in."""
    return sorted(rows, key=lambda row: hashlib.sha256(row.numpy().tobytes()).digest())


def krum_scores(updates: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Each update's sum of squared distances to its ``n - f - 2`` nearest others."""
    n = updates.shape[0]
    distances = torch.cdist(updates, updates).pow(2)
    # Its own zero distance sorts first: skip it, then take the n - f - 2 nearest.
    nearest = torch.sort(distances, dim=1).values[:, 1 : n - byzantine - 1]
    return nearest.sum(dim=1)


@STRATEGIES.register("krum")
class Krum(RobustAggregation):
    """The single update closest to its neighbours (Blanchard et al. 2017)."""

    rule = "krum"

    def required_results(self) -> int:
        return 2 * self.byzantine + 3

    def tolerance(self) -> str:
        return "n > 2f + 2"

    def combine(self, updates: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        scores = krum_scores(updates, self.byzantine)
        best = int(torch.argmin(scores))  # ties: the first in canonical order
        return updates[best].clone(), {"selected": 1.0}


@STRATEGIES.register("multi_krum")
class MultiKrum(Krum):
    """The mean of the ``selected`` updates with the best Krum scores (default n - f)."""

    rule = "multi_krum"

    class Params(RobustAggregation.Params):
        """Krum's params and ``selected``: how many updates to average (default n - f)."""

        selected: int | None = Field(None, ge=1)

    # Every key spelled out: the recipe's keys and the constructor's must match
    # (tests/unit/test_params.py), so no **params.
    def __init__(
        self,
        selected: int | None = None,
        byzantine: int = 0,
        fraction: float = 1.0,
        min_clients: int = 2,
        server_lr: float = 1.0,
        weighted: bool = True,
        ema_decay: float | None = None,
        ema_warmup: EmaWarmup = False,
        sampling: str = "fixed",
        fixed_denominator: bool = False,
        root_seed: int = 0,
    ) -> None:
        super().__init__(
            byzantine=byzantine,
            fraction=fraction,
            min_clients=min_clients,
            server_lr=server_lr,
            weighted=weighted,
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
            sampling=sampling,
            fixed_denominator=fixed_denominator,
            root_seed=root_seed,
        )
        if selected is not None and selected < 1:
            raise ConfigError(f"strategy multi_krum: selected must be >= 1, got {selected}")
        self.selected = selected

    def combine(self, updates: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        n = updates.shape[0]
        m = min(self.selected or n - self.byzantine, n)
        scores = krum_scores(updates, self.byzantine)
        chosen = torch.argsort(scores, stable=True)[:m]
        return updates[chosen].mean(dim=0), {"selected": float(m)}


@STRATEGIES.register("bulyan")
class Bulyan(RobustAggregation):
    """Krum-selected set, then a trimmed mean around the median (El Mhamdi et al. 2018)."""

    rule = "bulyan"

    def required_results(self) -> int:
        return 4 * self.byzantine + 3

    def tolerance(self) -> str:
        return "n >= 4f + 3"

    def combine(self, updates: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        n, f = updates.shape[0], self.byzantine
        theta = n - 2 * f
        remaining = list(range(n))
        chosen: list[int] = []
        # Krum over the remaining updates, one pick at a time.
        while len(chosen) < theta:
            pool = updates[remaining]
            # Krum needs its n - f - 2 neighbours; the last picks have fewer.
            scores = krum_scores(pool, min(f, max(len(remaining) - 3, 0)))
            pick = remaining[int(torch.argmin(scores))]
            chosen.append(pick)
            remaining.remove(pick)
        selected = updates[sorted(chosen)]
        beta = theta - 2 * f
        median = torch.quantile(selected, 0.5, dim=0)
        closest = torch.argsort((selected - median).abs(), dim=0, stable=True)[:beta]
        return torch.gather(selected, 0, closest).mean(dim=0), {"selected": float(theta)}


@STRATEGIES.register("norm_bound")
class NormBound(RobustAggregation):
    """Every update scaled to norm at most ``max_norm``, then averaged (Sun et al. 2019)."""

    rule = "norm_bound"

    class Params(RobustAggregation.Params):
        """The robust params and ``max_norm``, the bound on each update's L2 norm."""

        max_norm: float = Field(1.0, gt=0, allow_inf_nan=False)

    def __init__(
        self,
        max_norm: float = 1.0,
        byzantine: int = 0,
        fraction: float = 1.0,
        min_clients: int = 2,
        server_lr: float = 1.0,
        weighted: bool = True,
        ema_decay: float | None = None,
        ema_warmup: EmaWarmup = False,
        sampling: str = "fixed",
        fixed_denominator: bool = False,
        root_seed: int = 0,
    ) -> None:
        super().__init__(
            byzantine=byzantine,
            fraction=fraction,
            min_clients=min_clients,
            server_lr=server_lr,
            weighted=weighted,
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
            sampling=sampling,
            fixed_denominator=fixed_denominator,
            root_seed=root_seed,
        )
        if not max_norm > 0:
            raise ConfigError(f"strategy norm_bound: max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def required_results(self) -> int:
        return 1

    def tolerance(self) -> str:
        return "any n: each client moves the mean by at most max_norm / n"

    def combine(self, updates: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        norms = updates.norm(dim=1, keepdim=True)
        scale = torch.clamp(self.max_norm / norms.clamp_min(1e-300), max=1.0)
        clipped = int((norms.squeeze(1) > self.max_norm).sum())
        # The round's median update norm: what max_norm should sit just above (honest
        # norms grow with local steps; a bound below them slows every client, not only
        # the attackers). Medians resist the attackers' own norms; quantile, not
        # Tensor.median, which gives the lower middle value of an even cohort.
        median = float(torch.quantile(norms.squeeze(1).double(), 0.5))
        figures = {"clipped": float(clipped), "update_norm_median": median}
        return (updates * scale).mean(dim=0), figures
