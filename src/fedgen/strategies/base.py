"""The Strategy contract: the server's policy, blind to what the model generates.

As in Flower's strategies, a strategy picks clients and their config
(``configure``) and combines results (``aggregate``); as in pfl-research the
combination is a running sum, so memory is O(model) not O(cohort). The round
loop runs the server halves of the update transforms on the aggregate
between ``aggregate`` and ``apply``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from fedgen.errors import ConfigError
from fedgen.strategies.sampling import ClientSampler
from fedgen.types import ClientResult, RoundPlan, StateDict


class Needs(Enum):
    """What a strategy's aggregation needs of a round's updates.

    Validation asks a strategy this (``Strategy.needs``) instead of checking its class:
    secure aggregation hands the server one sum, so it composes only with ``SUM``.
    """

    #: A weighted sum of the updates (and the sum of the weights) is enough.
    SUM = "a weighted sum of the updates"
    #: Every client's own update (to compare, rank, cluster or clip them one by one).
    INDIVIDUAL = "each client's individual update"


@dataclass
class Aggregate:
    """The combined update of one round, before it is applied to the global state.

    ``private_updates`` maps a client id to the new values of some of its private
    tensors (a clustered strategy's per-cluster heads and tails); after ``apply``
    the round loop stores them in the federation's private states, where the
    backend loads them over the global state. Update transforms run on ``delta``
    only.
    """

    delta: StateDict
    num_examples: int
    num_clients: int
    metrics: dict[str, float] = field(default_factory=dict)
    private_updates: dict[int, StateDict] = field(default_factory=dict)
    #: Per tensor of ``delta``, the coordinates (True) that already carry the round's
    #: DP noise, drawn by the only client of a secure round
    #: (``fedgen.engine.secure_stage``): the server halves add none there. None: none.
    noised: StateDict | None = None


class Strategy(ABC):
    """Server policy: which clients, with what config; how results are combined.

    Client selection is delegated to ``sampler`` (``fedgen.strategies.sampling``). A
    strategy declares what its aggregation needs (``needs``): one that can combine a
    round from a weighted sum alone (secure aggregation hands the server nothing else)
    sets ``needs = Needs.SUM`` and overrides ``client_weight`` and ``aggregate_sum``;
    one that needs individual updates says why in ``why_individual``. Client-level DP
    asks ``dp_problems`` whether the strategy's aggregate has a bounded sensitivity.
    """

    #: What ``aggregate`` needs of a round's updates (see ``Needs``).
    needs: ClassVar[Needs] = Needs.INDIVIDUAL
    #: Why the strategy needs individual updates, for messages (``needs`` INDIVIDUAL).
    why_individual: ClassVar[str] = "it combines the updates one by one"
    #: Who takes part in each round.
    sampler: ClientSampler

    @property
    def aggregates_sums(self) -> bool:
        """True when ``aggregate_sum`` works: the strategy needs no individual update."""
        return self.needs is Needs.SUM

    def dp_problems(self, what: str, need_independent_sampling: bool) -> list[str]:
        """Why client-level DP (``what``) is unsound with this strategy, each with its fix;
        [] when each clipped client moves the aggregate by at most C / m (m the planned
        cohort), anything the server then does being post-processing.

        Default: refused, since a strategy that does not declare the bound has none.
        """
        return [
            f"{what} needs a strategy whose aggregate one clipped client moves by a bounded "
            f"amount (an unweighted fixed-denominator mean); {type(self).__name__} "
            f"declares no such bound ({self.why_individual}); use strategy fedavg or a "
            "server optimizer (fedavgm, fedadam, fedyogi, fedadagrad)"
        ]

    @abstractmethod
    def configure(self, round: int, client_ids: list[int], rng: np.random.Generator) -> RoundPlan:
        """Choose the clients of round ``round`` and their instructions."""

    @abstractmethod
    def aggregate(self, round: int, results: Iterable[ClientResult]) -> Aggregate:
        """Combine the successful results (failures were filtered out by the loop)."""

    @abstractmethod
    def apply(self, round: int, global_state: StateDict, aggregate: Aggregate) -> StateDict:
        """The next global state from the current one and the (server-transformed) aggregate."""

    def client_weight(self, num_examples: int) -> float:
        """The weight of one client's update in the sum ``aggregate_sum`` divides.

        Raises:
            ConfigError: the strategy needs individual updates (see ``aggregates_sums``).
        """
        raise self._no_sums()

    def aggregate_sum(
        self,
        round: int,
        weighted_sum: StateDict,
        weight_sum: float,
        num_clients: int,
        num_examples: int,
    ) -> Aggregate:
        """Combine a round from ``sum_u client_weight(u) * update_u`` over its ``num_clients``.

        Raises:
            ConfigError: the strategy needs individual updates (see ``aggregates_sums``).
            RoundFailedError: too few clients to aggregate the round.
        """
        raise self._no_sums()

    def _no_sums(self) -> ConfigError:
        return ConfigError(
            f"strategy {type(self).__name__} needs {Needs.INDIVIDUAL.value} "
            f"({self.why_individual}), which secure aggregation hides from the server; use "
            "strategy fedavg (or fedavgm, fedadam, ...), or remove the secagg transform"
        )

    def evaluation_state(self, global_state: StateDict) -> StateDict:
        """The weights to sample and evaluate with (default: the global state itself)."""
        return global_state

    def client_evaluation_state(
        self, client_id: int, global_state: StateDict, private: StateDict
    ) -> StateDict:
        """The weights to evaluate client ``client_id``'s own model with (split learning:
        the evaluation state with the client's private tensors on top)."""
        return {**self.evaluation_state(global_state), **private}

    @property
    def averaging(self) -> bool:
        """Whether evaluation uses a moving average rather than the weights as trained."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """The strategy's own state (e.g. server optimizer moments) for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state but was given {sorted(state)}")
