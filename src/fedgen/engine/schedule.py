"""Schedules: what one round of the one loop is (synchronous, FedBuff, gossip).

``Federation`` alone iterates rounds (DESIGN.md); a schedule only says, for round
``r``, which clients train from which state (``begin``), how their accepted results
become the next state (``combine``), and what it keeps once the round is over
(``end``). The synchronous schedule is the classic round: the strategy picks a
cohort that trains from the global state, and the strategy aggregates.

``begin`` must not change the schedule's state: an interrupted round is dropped,
and the state a checkpoint saved after the last complete round stays valid.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedgen.data.client_data import ClientData
from fedgen.engine.client_clock import ClientClock
from fedgen.errors import ConfigError
from fedgen.privacy.noise_key import keyed_seed
from fedgen.seeding import numpy_rng
from fedgen.strategies.base import Aggregate, Strategy
from fedgen.tasks.base import Task
from fedgen.transforms.base import UpdateTransform
from fedgen.types import ClientResult, RoundPlan, StateDict


class RoundLoop(Protocol):
    """What a schedule reads of the round loop (``fedgen.engine.federation.Federation``).

    A protocol, so the loop can hold its schedule without an import cycle.
    """

    task: Task
    clients: dict[int, ClientData]
    strategy: Strategy
    seed: int
    local_steps: int | None
    local_epochs: float | None
    transforms: list[UpdateTransform]
    privacy: Any
    secagg: Any
    global_state: StateDict
    backend: Any
    private_states: dict[int, StateDict]
    noise_key: bytes | None

    @property
    def withholds_cohort(self) -> bool:
        """True under client-level DP: nobody but the server may learn the cohort."""
        ...

    def local_work(self, start: StateDict, round: int) -> Any:
        """The ``LocalWork`` of clients sent ``start`` in ``round``."""
        ...


@dataclass
class Job:
    """Clients that train from one start state (one ``Backend.run`` call)."""

    plan: RoundPlan
    #: The federated tensors these clients start from; their updates are relative to it.
    start: StateDict
    #: The round the clients were sent their work in (``LocalWork.round``).
    round: int
    #: Results that already arrived (a wall-clock schedule keeps jobs in flight across
    #: rounds): the loop checks these instead of running the job.
    results: list[ClientResult] | None = None


@dataclass
class Step:
    """What round ``r`` runs: every instruction (for the ledger and metrics) and the jobs."""

    plan: RoundPlan
    jobs: list[Job]
    #: Schedule-private facts ``end`` needs (e.g. FedBuff's arrivals).
    notes: dict[str, Any]


class Schedule(ABC):
    """One round of the loop, as a plan, a combination and a commit (see the module doc)."""

    #: The recipe's ``federation.mode``.
    mode: str = "sync"

    def check(self, fed: RoundLoop) -> None:  # noqa: B027 - optional hook
        """Refuse a federation this schedule cannot run (raises ``ConfigError``)."""

    @abstractmethod
    def begin(self, r: int, fed: RoundLoop) -> Step:
        """Who trains in round ``r`` and from which state; changes nothing."""

    @abstractmethod
    def combine(
        self, r: int, fed: RoundLoop, step: Step, results: Iterator[ClientResult]
    ) -> Aggregate | None:
        """The round's aggregate for the server halves and ``strategy.apply``; or None when
        the schedule has set ``fed.global_state`` itself (no server: gossip)."""

    def end(self, r: int, fed: RoundLoop, step: Step, metrics: dict[str, Any]) -> None:  # noqa: B027
        """Commit the round (after the new state is in ``fed``); add the schedule's metrics."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue bit-identically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restore what ``state_dict`` returned."""


def cohort_rng(fed: RoundLoop, r: int) -> np.random.Generator:
    """The generator that samples round ``r``'s cohort.

    Under client-level DP it is keyed by the run's secret noise key: amplification by
    sampling assumes nobody can tell who was sampled, and a cohort drawn from the root
    seed could be recomputed from ``config.yaml``. Otherwise from the root seed alone,
    so a run without DP reruns identically from its config.
    """
    if fed.withholds_cohort and fed.noise_key is not None:
        return np.random.default_rng(keyed_seed(fed.noise_key, fed.seed, "sample", r))
    return numpy_rng(fed.seed, "sample", r)


class SynchronousSchedule(Schedule):
    """The classic round: ``strategy.configure`` picks a cohort, the strategy aggregates.

    With a ``clock``, a round lasts as long as its slowest client (the barrier), and
    ``sim_time`` adds up those rounds.
    """

    mode = "sync"

    def __init__(self, clock: ClientClock | None = None) -> None:
        self.clock = clock
        self.sim_time = 0.0
        self.jobs_done: dict[int, int] = {}

    def begin(self, r: int, fed: RoundLoop) -> Step:
        pool = sorted(fed.clients)
        if fed.privacy is not None:
            pool = fed.privacy.eligible(pool)  # clients with DP-SGD rounds left
        plan = fed.strategy.configure(r, pool, cohort_rng(fed, r))
        return Step(plan, [Job(plan, fed.global_state, r)], {})

    def combine(
        self, r: int, fed: RoundLoop, step: Step, results: Iterator[ClientResult]
    ) -> Aggregate | None:
        return fed.strategy.aggregate(r, results)

    def end(self, r: int, fed: RoundLoop, step: Step, metrics: dict[str, Any]) -> None:
        if self.clock is None:
            return
        longest = 0.0
        for cid in step.plan.client_ids:
            job = self.jobs_done.get(cid, 0)
            longest = max(longest, self.clock.duration(cid, job, client_steps(fed, cid)))
            self.jobs_done[cid] = job + 1
        self.sim_time += longest
        metrics["sim_time"] = self.sim_time

    def state_dict(self) -> dict[str, Any]:
        if self.clock is None:
            return {}
        return {
            "sim_time": self.sim_time,
            "jobs_done": {str(k): v for k, v in self.jobs_done.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sim_time = float(state.get("sim_time", 0.0))
        self.jobs_done = {int(k): int(v) for k, v in state.get("jobs_done", {}).items()}


def client_steps(fed: RoundLoop, client_id: int) -> int:
    """Local steps of one job of ``client_id`` (as ``local_steps_for`` counts them)."""
    if fed.local_steps is not None:
        return fed.local_steps
    assert fed.local_epochs is not None  # Federation checks that exactly one is set
    batch = int(fed.task.params.batch_size)
    return max(1, math.ceil(fed.local_epochs * fed.clients[client_id].num_examples / batch))


def refuse_server_stages(fed: RoundLoop, mode: str) -> None:
    """Asynchronous and gossip schedules run no secure aggregation or client-level DP.

    Both stages assume a synchronous cohort: secure aggregation masks one round's
    cohort together, and the accountant charges sampled rounds. Raises ``ConfigError``.
    """
    if fed.secagg is not None:
        raise ConfigError(
            f"federation.mode={mode} cannot run secure aggregation (it masks one synchronous "
            "cohort together); remove the secagg transform or set federation.mode=sync"
        )
    if fed.privacy is not None:
        raise ConfigError(
            f"federation.mode={mode} has no privacy accounting for its rounds; remove the "
            "DP transform / dpsgd section or set federation.mode=sync"
        )


def strategy_client_config(fed: RoundLoop, round: int) -> dict[str, Any]:
    """What the strategy tells every client sent work in ``round`` besides its seed.

    The config a synchronous round's ``strategy.configure`` puts in each instruction
    (``FedAvg.client_config``: FedProx's ``proximal_mu``, Ditto's ``ditto_lambda``);
    {} for a strategy that tells its clients nothing.
    """
    config = getattr(fed.strategy, "client_config", None)
    return {} if config is None else dict(config(round))
