"""Client selection: which clients take part in a round, as its own component.

Every strategy delegates the choice of a round's cohort to a ``ClientSampler``
(FedAvg and its server-optimizer variants, the robust rules, the clustered
strategy), so sampling is configured, checked and accounted in one place: the
privacy accountant asks the sampler for its rate ``q`` and whether its draws are
Poisson, and secure aggregation asks it for the largest cohort it can draw.

- ``fixed``: exactly ``max(min_clients, round(fraction * N))`` clients, drawn
  without replacement (McMahan et al. 2017's ``C`` fraction);
- ``poisson``: each client independently with probability ``fraction`` (the
  cohort size varies and may be empty), the subsampling client-level DP analyses
  (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").

A recipe chooses one through the strategy's ``sampling``, ``fraction`` and
``min_clients`` params (unchanged keys, so existing recipes and their draws stay).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedgen.errors import ConfigError
from fedgen.registry import SAMPLERS
from fedgen.seeding import derive_seed
from fedgen.types import ClientInstruction, RoundPlan


class ClientSampler(ABC):
    """Chooses a round's cohort from the available client ids.

    Args:
        fraction: share of the clients per round (its meaning is the subclass's).
        min_clients: fewest clients a round may be planned with; fewer available
            clients is a configuration error.
    """

    #: The name a recipe gives in ``strategy.params.sampling``.
    name: ClassVar[str] = ""
    #: True when each client is included independently with probability
    #: ``sample_rate`` (the subsampling the client-level DP accountant analyses).
    independent: ClassVar[bool] = False

    class Params(BaseModel):
        """A sampler's params (the strategy's ``fraction`` and ``min_clients``)."""

        model_config = ConfigDict(extra="forbid")

        fraction: float = Field(1.0, gt=0, le=1)
        min_clients: int = Field(2, ge=1)

    def __init__(self, fraction: float = 1.0, min_clients: int = 2) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"strategy fraction must be in (0, 1], got {fraction}")
        if min_clients < 1:
            raise ConfigError(f"strategy min_clients must be >= 1, got {min_clients}")
        self.fraction = fraction
        self.min_clients = min_clients

    def sample(self, round: int, client_ids: list[int], rng: np.random.Generator) -> list[int]:
        """The cohort of round ``round``, drawn from ``rng`` (the round loop's).

        Raises:
            ConfigError: fewer clients exist than ``min_clients``.
        """
        if len(client_ids) < self.min_clients:
            raise ConfigError(
                f"only {len(client_ids)} clients but min_clients="
                f"{self.min_clients}; lower strategy.params.min_clients"
            )
        return self.draw(client_ids, rng)

    @abstractmethod
    def draw(self, client_ids: list[int], rng: np.random.Generator) -> list[int]:
        """The cohort from ``client_ids`` (already checked against ``min_clients``)."""

    @abstractmethod
    def expected_clients(self, num_clients: int) -> float:
        """The planned cohort size among ``num_clients`` (its expectation if it varies)."""

    @abstractmethod
    def largest_cohort(self, num_clients: int) -> int:
        """The most clients one round can draw among ``num_clients``."""

    def sample_rate(self, num_clients: int) -> float:
        """Probability that a given client takes part in a round."""
        return min(1.0, self.expected_clients(num_clients) / num_clients)

    def describe(self) -> dict[str, Any]:
        """What the run records of its sampling."""
        return {"sampling": self.name, "fraction": self.fraction, "min_clients": self.min_clients}


@SAMPLERS.register("fixed")
class FixedSizeSampler(ClientSampler):
    """Exactly ``max(min_clients, round(fraction * N))`` clients, without replacement,
    listed in ascending id order (McMahan et al. 2017)."""

    name = "fixed"

    def draw(self, client_ids: list[int], rng: np.random.Generator) -> list[int]:
        k = self.largest_cohort(len(client_ids))
        return sorted(rng.choice(client_ids, size=k, replace=False).tolist())

    def expected_clients(self, num_clients: int) -> float:
        return float(self.largest_cohort(num_clients))

    def largest_cohort(self, num_clients: int) -> int:
        return max(self.min_clients, round_half_up(self.fraction * num_clients))


@SAMPLERS.register("poisson")
class PoissonSampler(ClientSampler):
    """Each client independently with probability ``fraction``: the cohort may be
    empty and is never raised to ``min_clients`` (McMahan et al. 2018)."""

    name = "poisson"
    independent = True

    def draw(self, client_ids: list[int], rng: np.random.Generator) -> list[int]:
        picked = rng.random(len(client_ids)) < self.fraction
        return [cid for cid, keep in zip(client_ids, picked, strict=True) if keep]

    def expected_clients(self, num_clients: int) -> float:
        return self.fraction * num_clients

    def largest_cohort(self, num_clients: int) -> int:
        return num_clients

    def sample_rate(self, num_clients: int) -> float:
        return self.fraction


def build_sampler(sampling: str, fraction: float, min_clients: int) -> ClientSampler:
    """The registered sampler ``sampling`` with the strategy's ``fraction`` and ``min_clients``.

    Raises:
        ConfigError: no sampler has that name (the message lists those that exist).
    """
    if sampling not in SAMPLERS:
        raise ConfigError(
            f"strategy sampling must be {' or '.join(repr(n) for n in SAMPLERS.names())}, "
            f"got {sampling!r}"
        )
    sampler: ClientSampler = SAMPLERS.get(sampling)(fraction=fraction, min_clients=min_clients)
    return sampler


def round_plan(
    round: int, chosen: list[int], root_seed: int, config: dict[str, Any] | None = None
) -> RoundPlan:
    """The plan sending ``chosen`` their seeds (derived from the run's root seed) and
    ``config`` (the same instructions for every client)."""
    return RoundPlan(
        round,
        [
            ClientInstruction(
                cid, derive_seed(root_seed, "round", round, "client", cid), dict(config or {})
            )
            for cid in chosen
        ],
    )


def round_half_up(x: float) -> int:
    """Round to nearest, halves up (Python's round() rounds halves to even)."""
    return int(np.floor(x + 0.5))
