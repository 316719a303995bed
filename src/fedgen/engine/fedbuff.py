"""FedBuff: buffered asynchronous aggregation on a simulated clock.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation"
(AISTATS 2022). ``concurrency`` clients train at once, each from the model version
it was sent; the server steps once every ``buffer_size`` (K) arrivals, weighting an
update that is ``s`` server versions stale by ``1 / (1 + s) ** a``. The weighted
updates go to the strategy's own ``aggregate``/``apply`` (FedAvg: the
example-weighted mean, stepped with ``server_lr``: the paper's eta), so the server
halves of the transforms and the ledger run per server step as in a sync round.

One round of the loop is one server step. Time is simulated: a job finishes at its
start time plus ``ClientClock.duration``; arrivals are taken in (finish time, client
id) order, so the run is a pure function of the root seed. As in the paper's
Algorithm 1, nobody waits for the server step: the moment a job finishes, its update
joins the buffer and a job starts for a client drawn from those idle then (the one
that just arrived among them), from the server's current model. During step ``r``
that is version ``r``, so a replacement may itself arrive before the buffer fills
(fresh, s = 0). The arrival that fills the buffer, and any arriving at that same
instant, are replaced after the step, from version ``r + 1``. The loop takes one
update per client a step, so a client whose second job ends before the buffer fills
keeps its place until the next step takes that result first, at the instant the
buffer emptied (its replacement starts then). A client trains when its result
arrives, from the version it was started from: the version states still in flight
and the event queue are kept in the checkpoint, so a resumed run ends bit-identical
to an uninterrupted one.

With equal speeds and ``buffer_size`` = ``concurrency`` = every client, all clients
arrive at the step's instant, every update is fresh (s = 0) and a step is exactly a
synchronous FedAvg round with all clients (the job seeds are the sync loop's). A job
carries the config the strategy gives every client of the round it was sent in
(FedProx's mu, Ditto's settings), as a synchronous round's instructions do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from fedgen.config import FedBuffConfig
from fedgen.engine.client_clock import ClientClock
from fedgen.engine.schedule import (
    Job,
    RoundLoop,
    Schedule,
    Step,
    client_steps,
    refuse_server_stages,
    strategy_client_config,
)
from fedgen.errors import ConfigError
from fedgen.seeding import derive_seed, numpy_rng
from fedgen.strategies.base import Aggregate
from fedgen.strategies.detection import DetectingStrategy
from fedgen.types import ClientInstruction, ClientResult, RoundPlan, StateDict

log = logging.getLogger(__name__)


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedBuff's polynomial staleness weight ``1 / (1 + s) ** a`` (1.0 when fresh)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return 1.0 / (1.0 + staleness) ** exponent


@dataclass(frozen=True)
class InFlight:
    """One dispatched job: who, from which server version, when it ends, its seed."""

    client_id: int
    version: int
    start: float
    finish: float
    seed: int


class FedBuffSchedule(Schedule):
    """A round is one FedBuff server step: the next ``buffer_size`` arrivals.

    Args:
        config: the recipe's ``federation.fedbuff``.
        clock: client compute times (``federation.clock``; equal speeds if absent).
        client_ids: every client of the federation.
        seed: the run's root seed.
    """

    mode = "fedbuff"

    def __init__(
        self, config: FedBuffConfig, clock: ClientClock, client_ids: list[int], seed: int
    ) -> None:
        n = len(client_ids)
        self.concurrency = n if config.concurrency is None else config.concurrency
        if self.concurrency > n:
            raise ConfigError(
                f"federation.fedbuff.concurrency={self.concurrency} but the federation has "
                f"{n} clients; lower it (or null: every client)"
            )
        if config.buffer_size > self.concurrency:
            raise ConfigError(
                f"federation.fedbuff.buffer_size={config.buffer_size} exceeds the "
                f"{self.concurrency} clients in flight: the buffer could never fill; lower it"
            )
        self.buffer_size = config.buffer_size
        self.exponent = config.staleness_exponent
        self.clock = clock
        self.seed = seed
        self.client_ids = sorted(client_ids)
        self.now = 0.0
        self.in_flight: list[InFlight] = []
        #: Server versions some in-flight client started from (version -> state).
        self.versions: dict[int, StateDict] = {}
        self.jobs_done: dict[int, int] = {}
        #: (version, times dispatched from it) of each client's latest job: seeds the next.
        self.last_start: dict[int, tuple[int, int]] = {}
        self.started = False

    def check(self, fed: RoundLoop) -> None:
        refuse_server_stages(fed, self.mode)
        strategy = fed.strategy
        problems = []
        fewest = getattr(strategy, "min_clients", 1)
        if isinstance(fewest, int) and fewest > self.buffer_size:
            problems.append(
                f"strategy min_clients={fewest} exceeds federation.fedbuff.buffer_size="
                f"{self.buffer_size}: no server step could aggregate; lower min_clients"
            )
        required = getattr(strategy, "required_results", None)
        if callable(required) and required() > self.buffer_size:
            # The strategy's sync check compares its planned cohort, which FedBuff has not.
            why = getattr(strategy, "required_why", None)
            if callable(why):
                who, lower = why(), "or lower what it asks"
            else:
                rule = getattr(strategy, "rule", type(strategy).__name__)
                byzantine = getattr(strategy, "byzantine", "?")
                who, lower = f"strategy {rule} with byzantine={byzantine}", "or lower byzantine"
            problems.append(
                f"{who} needs at least {required()} results a server step, but "
                f"federation.fedbuff.buffer_size={self.buffer_size}: no server step could "
                f"aggregate; raise buffer_size to {required()} (and concurrency with it) {lower}"
            )
        if getattr(strategy, "fixed_denominator", False):
            problems.append(
                "strategy fixed_denominator=true divides by a sampled cohort's planned size, "
                "and a FedBuff server step has no cohort (it takes the next buffer_size "
                "arrivals); remove strategy.params.fixed_denominator (FedBuff divides by the "
                "arrivals' weights) or set federation.mode=sync"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        sampler = getattr(getattr(strategy, "inner", strategy), "sampler", None)
        fraction = getattr(sampler, "fraction", 1.0)
        if fraction != 1.0 or getattr(sampler, "name", "fixed") != "fixed":
            # Not refused (the default recipe samples 0.4 of the clients a round): said.
            log.warning(
                "federation.mode=fedbuff ignores strategy.params fraction=%g and sampling=%s: "
                "concurrency (%d) clients train at once, each replaced the moment it "
                "reports",
                fraction,
                getattr(sampler, "name", "fixed"),
                self.concurrency,
            )

    # -- the round -------------------------------------------------------------

    def begin(self, r: int, fed: RoundLoop) -> Step:
        in_flight, last_start = self.in_flight, self.last_start
        if not self.started:
            # The first round dispatches the first jobs, from the initial state.
            in_flight, last_start = self._dispatch(
                fed, [], self.client_ids, r, 0.0, last_start, self.jobs_done, (r,)
            )
        # Clients freed before the buffer fills are sent the current model, version r.
        versions = {**self.versions}
        versions.setdefault(r, fed.global_state)
        jobs_done = dict(self.jobs_done)
        queue = sorted(in_flight, key=lambda j: (j.finish, j.client_id))
        arrivals: list[InFlight] = []
        at = self.now
        while len(arrivals) < self.buffer_size:
            # The loop takes one update per client a step: a client's second job that
            # ends before the buffer fills waits for the next step (from the step's instant).
            arrived = {j.client_id for j in arrivals}
            eligible = [j for j in queue if j.client_id not in arrived]
            job = eligible[0]
            queue.remove(job)
            arrivals.append(job)
            jobs_done[job.client_id] = jobs_done.get(job.client_id, 0) + 1
            at = max(job.finish, self.now)
            # A job started now ends later (durations are > 0): if the jobs still to
            # arrive at this instant fill the buffer, the step happens now, and ``end``
            # sends this client's replacement the new model.
            ties = sum(1 for j in eligible[1:] if max(j.finish, self.now) == at)
            if len(arrivals) + ties >= self.buffer_size:
                continue
            new, last_start = self._dispatch(
                fed,
                queue,
                self._idle(queue),
                r,
                at,
                last_start,
                jobs_done,
                (r, "arrival", len(arrivals) - 1),
            )
            queue = sorted(queue + new, key=lambda j: (j.finish, j.client_id))
        # The arrivals at the step's instant, whose replacements ``end`` sends.
        at_step = [i for i, j in enumerate(arrivals) if max(j.finish, self.now) == at]
        by_version: dict[int, list[InFlight]] = {}
        for job in arrivals:
            by_version.setdefault(job.version, []).append(job)
        # Work carries this step's round, not the start version: clients sign their update
        # for the ledger entry it is logged in (the simulation knows it at arrival).
        # Each job is told what the strategy tells the clients of the round it was sent in.
        jobs = [
            Job(
                RoundPlan(
                    r,
                    [
                        ClientInstruction(j.client_id, j.seed, strategy_client_config(fed, v))
                        for j in group
                    ],
                ),
                versions[v],
                r,
            )
            for v, group in sorted(by_version.items())
        ]
        plan = RoundPlan(r, [ins for job in jobs for ins in job.plan.instructions])
        staleness = {j.client_id: r - j.version for j in arrivals}
        return Step(
            plan,
            jobs,
            {
                "arrivals": arrivals,
                "in_flight": queue,
                "versions": versions,
                "last_start": last_start,
                "jobs_done": jobs_done,
                "time": at,
                "at_step": at_step,
                "staleness": staleness,
            },
        )

    def combine(
        self, r: int, fed: RoundLoop, step: Step, results: Iterator[ClientResult]
    ) -> Aggregate | None:
        staleness: dict[int, int] = step.notes["staleness"]

        def weigh(res: ClientResult) -> ClientResult:
            assert res.update is not None  # the loop passes accepted results only
            w = staleness_weight(staleness[res.client_id], self.exponent)
            if w != 1.0:
                res.update = {k: v * w for k, v in res.update.items()}
            return res

        if isinstance(fed.strategy, DetectingStrategy):
            # Detection judges each update as its client sent it, then the kept ones
            # are weighted for staleness.
            return fed.strategy.aggregate(r, results, scale=weigh)
        return fed.strategy.aggregate(r, map(weigh, results))

    def end(self, r: int, fed: RoundLoop, step: Step, metrics: dict[str, Any]) -> None:
        arrivals: list[InFlight] = step.notes["arrivals"]
        self.now = step.notes["time"]
        self.jobs_done = step.notes["jobs_done"]
        in_flight: list[InFlight] = step.notes["in_flight"]
        last_start: dict[int, tuple[int, int]] = step.notes["last_start"]
        # One at a time in arrival order: those after the one being replaced count as busy.
        for i in step.notes["at_step"]:
            busy = in_flight + arrivals[i + 1 :]
            new, last_start = self._dispatch(
                fed,
                busy,
                self._idle(busy),
                r + 1,
                self.now,
                last_start,
                self.jobs_done,
                (r, "arrival", i),
            )
            in_flight = in_flight + new
        self.in_flight = in_flight
        self.last_start = last_start
        self.started = True
        self.versions = {**step.notes["versions"], r + 1: fed.global_state}
        live = {j.version for j in self.in_flight}
        self.versions = {v: s for v, s in self.versions.items() if v in live}
        stale = [float(s) for s in step.notes["staleness"].values()]
        metrics["sim_time"] = self.now
        metrics["staleness_mean"] = sum(stale) / len(stale)
        metrics["staleness_max"] = max(stale)

    def _idle(self, busy: list[InFlight]) -> list[int]:
        """Clients with no job among ``busy``."""
        taken = {j.client_id for j in busy}
        return [c for c in self.client_ids if c not in taken]

    def _dispatch(
        self,
        fed: RoundLoop,
        busy: list[InFlight],
        idle: list[int],
        version: int,
        now: float,
        last_start: dict[int, tuple[int, int]],
        jobs_done: dict[int, int],
        draw: tuple[str | int, ...],
    ) -> tuple[list[InFlight], dict[int, tuple[int, int]]]:
        """Jobs for idle clients (up to ``concurrency`` in flight) from ``version`` at ``now``.

        ``draw`` names the event (the first dispatch, or the ``i``-th arrival of a step)
        whose generator picks the clients when more are idle than places are free.
        """
        free = self.concurrency - len(busy)
        if free < len(idle):
            rng = numpy_rng(self.seed, "fedbuff", "dispatch", *draw)
            idle = sorted(rng.choice(idle, size=free, replace=False).tolist())
        last = dict(last_start)
        new = []
        for cid in idle:
            v, k = last.get(cid, (-1, 0))
            again = k if v == version else 0
            # A job is named by the version it starts from, as a sync round's client is;
            # a client sent the same version twice (the buffer did not fill) is told apart.
            seed = derive_seed(self.seed, "round", version, "client", cid)
            if again:
                seed = derive_seed(self.seed, "round", version, "client", cid, "again", again)
            last[cid] = (version, again + 1)
            seconds = self.clock.duration(cid, jobs_done.get(cid, 0), client_steps(fed, cid))
            finish = self.clock.finish(now, seconds)
            new.append(InFlight(cid, version, now, finish, seed))
        return new, last

    # -- state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "started": self.started,
            "in_flight": [asdict(j) for j in self.in_flight],
            "versions": {
                str(v): {k: t.clone() for k, t in s.items()} for v, s in self.versions.items()
            },
            "jobs_done": {str(k): v for k, v in self.jobs_done.items()},
            "last_start": {str(k): list(v) for k, v in self.last_start.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.now = float(state["now"])
        self.started = bool(state["started"])
        self.in_flight = [InFlight(**j) for j in state["in_flight"]]
        self.versions = {int(v): dict(s) for v, s in state["versions"].items()}
        self.jobs_done = {int(k): int(v) for k, v in state["jobs_done"].items()}
        self.last_start = {int(k): (int(v[0]), int(v[1])) for k, v in state["last_start"].items()}
