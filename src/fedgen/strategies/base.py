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
from typing import Any, ClassVar

import numpy as np

from fedgen.errors import ConfigError
from fedgen.types import ClientResult, RoundPlan, StateDict


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


class Strategy(ABC):
    """Server policy: which clients, with what config; how results are combined.

    A strategy that can combine a round from a weighted sum alone (secure
    aggregation hands the server nothing else) sets ``aggregates_sums = True``
    and overrides ``client_weight`` and ``aggregate_sum``.
    """

    #: True when ``aggregate_sum`` works: the strategy needs no individual update.
    aggregates_sums: ClassVar[bool] = False

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
            f"strategy {type(self).__name__} needs each client's individual update, which "
            "secure aggregation hides from the server; use strategy fedavg, or remove the "
            "secagg transform"
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
