"""Federated averaging (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data"), with a server learning rate as in
Reddi et al. 2021 ("Adaptive Federated Optimization", FedAvg with eta_g)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.errors import ConfigError, RoundFailedError
from fedgen.registry import STRATEGIES
from fedgen.strategies.base import Aggregate, Needs, Strategy
from fedgen.strategies.moving_average import EmaWarmup, effective_decay, ema_update
from fedgen.strategies.sampling import PoissonSampler, build_sampler, round_plan
from fedgen.types import ClientResult, RoundPlan, StateDict


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    """Example-weighted mean of client deltas, applied with server learning rate ``server_lr``.

    Args:
        fraction: share of the clients sampled each round (at least ``min_clients``).
        min_clients: fewest clients to sample, and fewest successful results
            needed to aggregate a round.
        server_lr: step size on the mean delta (1.0 is plain FedAvg).
        weighted: weight clients by example count (True) or equally (False).
        ema_decay: if set, also keep an exponential moving average of the global
            state over rounds and sample/evaluate with it (Polyak averaging of the
            server model; for GAN generators see Yazici et al. 2019, "The Unusual
            Effectiveness of Averaging in GAN Training"). Training is unaffected.
        ema_warmup: the decay of update t is ``min(ema_decay, (1 + t) / (10 + t))``
            (``fedgen.strategies.moving_average``): 0.1 at first, 0.7 at round 20, and
            0.9 from round 80 on, so early rounds fade fast. ``"debias"``: the
            average is the trained rounds' models weighted ``ema_decay ** age`` and
            normalised, none left on the start and the decay never capped (under
            client-level DP a slow decay of it averaged out more noise:
            ``benchmarks/results/privacy.md``).
        sampling: ``"fixed"`` draws exactly ``max(min_clients, round(fraction * N))``
            clients without replacement; ``"poisson"`` includes each client
            independently with probability ``fraction`` (the cohort size varies, may be
            empty, and is never raised to ``min_clients``). Client-level DP accounts
            Poisson sampling, so it needs ``"poisson"``.
        fixed_denominator: divide the unweighted sum by the planned cohort size (the
            expected ``fraction * N`` for Poisson, ``k`` for fixed sampling) instead of
            the number of results: McMahan et al. 2018's fixed-denominator estimator,
            through which one client moves the mean by at most C / (q N). Every round
            then aggregates, however few clients return (none gives a zero update), so
            ``min_clients`` no longer fails rounds. Needs ``weighted=False``.
        root_seed: the run's root seed, which client seeds derive from; the experiment
            builder passes it (not a recipe key).
    """

    class Params(BaseModel):
        """The recipe's ``strategy.params`` (see Args; ``root_seed`` is not one)."""

        model_config = ConfigDict(extra="forbid")

        fraction: float = Field(1.0, gt=0, le=1)
        min_clients: int = Field(2, ge=1)
        server_lr: float = Field(1.0, gt=0, allow_inf_nan=False)
        weighted: bool = True
        ema_decay: float | None = Field(None, ge=0, lt=1)
        ema_warmup: EmaWarmup = False
        sampling: Literal["fixed", "poisson"] = "fixed"
        fixed_denominator: bool = False

    def __init__(
        self,
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
        if server_lr <= 0:
            raise ConfigError(f"strategy server_lr must be > 0, got {server_lr}")
        self.sampler = build_sampler(sampling, fraction, min_clients)
        self.min_clients = min_clients
        self.server_lr = server_lr
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"strategy ema_decay must be in [0, 1) or null, got {ema_decay}")
        if fixed_denominator and weighted:
            raise ConfigError(
                "strategy fixed_denominator=true needs an unweighted mean: set "
                "strategy.params.weighted=false"
            )
        self.weighted = weighted
        self.fixed_denominator = fixed_denominator
        self._denominator: float | None = None
        self.ema_decay = ema_decay
        self.ema: StateDict | None = None
        self.ema_warmup = ema_warmup
        self.ema_updates = 0
        self.root_seed = root_seed

    @property
    def fraction(self) -> float:
        """The sampler's share of clients per round."""
        return self.sampler.fraction

    @property
    def sampling(self) -> str:
        """The sampler's name (``fixed`` or ``poisson``)."""
        return self.sampler.name

    def configure(self, round: int, client_ids: list[int], rng: np.random.Generator) -> RoundPlan:
        expected = self.expected_clients(len(client_ids))
        poisson = isinstance(self.sampler, PoissonSampler)
        # Round 0 only: later the pool may shrink (DP-SGD's clients with no rounds left),
        # which the loop's own check ends cleanly; the recipe is what is refused here.
        if round == 0 and poisson and not self.fixed_denominator and expected < self.min_clients:
            # Poisson cohorts are never raised to min_clients: most rounds would fail and
            # keep the old model, and ten in a row end the run. Refused before any trains.
            raise ConfigError(
                f"strategy {type(self).__name__}: Poisson sampling at fraction "
                f"{self.sampler.fraction:g} plans {expected:g} of {len(client_ids)} clients a "
                f"round, fewer than min_clients={self.min_clients} (rounds with fewer results "
                "fail); raise strategy.params.fraction, lower min_clients, or set "
                "fixed_denominator: true (weighted: false)"
            )
        chosen = self.sampler.sample(round, client_ids, rng)
        self._denominator = self.expected_clients(len(client_ids))
        return round_plan(round, chosen, self.root_seed, self.client_config(round))

    def client_config(self, round: int) -> dict[str, Any]:
        """What every client of round ``round`` is told besides its seed (none here)."""
        return {}

    def expected_clients(self, num_clients: int) -> float:
        """The planned cohort size: ``fraction * N`` (Poisson) or the fixed sample size."""
        return self.sampler.expected_clients(num_clients)

    def sample_rate(self, num_clients: int) -> float:
        """Probability that a given client takes part in a round."""
        return self.sampler.sample_rate(num_clients)

    #: FedAvg divides a weighted sum, so secure aggregation can hand it the sum alone.
    needs = Needs.SUM

    def dp_problems(self, what: str, need_independent_sampling: bool) -> list[str]:
        """Client-level DP's conditions on the mean (McMahan et al. 2018): unweighted,
        divided by the planned cohort, and (for the accountant) Poisson sampling."""
        problems = []
        if self.weighted:
            problems.append(
                f"{what} with example-weighted FedAvg is unsound (a client with many examples "
                "moves the mean by more than C/(qN)); set strategy.params.weighted=false"
            )
        if not self.fixed_denominator:
            problems.append(
                f"{what} needs the fixed-denominator mean (divide by the expected cohort, not "
                "by who returned); set strategy.params.fixed_denominator=true"
            )
        if need_independent_sampling and not self.sampler.independent:
            problems.append(
                f"{what}: the accountant assumes Poisson client sampling, but strategy samples "
                "a fixed number of clients; set strategy.params.sampling=poisson"
            )
        return problems

    def client_weight(self, num_examples: int) -> float:
        """``num_examples`` (weighted) or 1.0 (unweighted, fixed denominator)."""
        return float(num_examples) if self.weighted else 1.0

    def aggregate(self, round: int, results: Iterable[ClientResult]) -> Aggregate:
        # Running sums: one accumulator the size of the model, whatever the cohort.
        total: StateDict = {}
        weight_sum = 0.0
        examples = clients = 0
        for res in results:
            assert res.update is not None  # the loop passes successful results only
            w = self.client_weight(res.num_examples)
            if total.keys() == res.update.keys():
                # One call for every tensor (a tiny model's per-call overhead is most of
                # its cost); each add computes in the accumulator's float64.
                torch._foreach_add_(list(total.values()), [res.update[k] for k in total], alpha=w)
            else:
                for key, value in res.update.items():
                    if key in total:
                        total[key].add_(value, alpha=w)
                    else:
                        total[key] = value.to(torch.float64) * w
            weight_sum += w
            examples += res.num_examples
            clients += 1
        return self.aggregate_sum(round, total, weight_sum, clients, examples)

    def aggregate_sum(
        self,
        round: int,
        weighted_sum: StateDict,
        weight_sum: float,
        num_clients: int,
        num_examples: int,
    ) -> Aggregate:
        """The mean from a running (or secure) sum: divided by the weight sum or fixed cohort."""
        if self.fixed_denominator:
            if self._denominator is None:
                raise RoundFailedError(
                    f"round {round}: fixed_denominator needs configure() before aggregate()"
                )
            denominator = self._denominator
        elif num_clients < self.min_clients or weight_sum <= 0:
            raise RoundFailedError(
                f"round {round}: {num_clients} usable client updates, fewer than "
                f"min_clients={self.min_clients}"
            )
        else:
            denominator = weight_sum
        delta = {k: v / denominator for k, v in weighted_sum.items()}
        return Aggregate(delta=delta, num_examples=num_examples, num_clients=num_clients)

    def apply(self, round: int, global_state: StateDict, aggregate: Aggregate) -> StateDict:
        new_state = {}
        for key, value in global_state.items():
            if key in aggregate.delta and value.is_floating_point():
                step = self.server_step(key, aggregate.delta[key]).to(value.dtype)
                new_state[key] = value + step
            else:
                new_state[key] = value
        if self.ema_decay is not None:
            d = effective_decay(self.ema_decay, self.ema_updates, self.ema_warmup)
            self.ema = ema_update(self.ema, global_state, new_state, d)
            self.ema_updates += 1
        return new_state

    def server_step(self, key: str, delta: torch.Tensor) -> torch.Tensor:
        """The change of tensor ``key`` from the round's mean delta (here ``server_lr *
        delta``; the server optimizers of ``fedgen.strategies.fedopt`` override it)."""
        return self.server_lr * delta

    def evaluation_state(self, global_state: StateDict) -> StateDict:
        return self.ema if self.ema is not None else global_state

    @property
    def averaging(self) -> bool:
        return self.ema is not None

    def state_dict(self) -> dict[str, Any]:
        if self.ema is None:
            return {}
        return {"ema": {k: v.clone() for k, v in self.ema.items()}, "ema_updates": self.ema_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = dict(state["ema"]) if "ema" in state else None
        self.ema_updates = int(state.get("ema_updates", 0))
