"""Gossip averaging without a server: decentralized parallel SGD on a graph.

Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A
Case Study for Decentralized Parallel Stochastic Gradient Descent" (NeurIPS 2017).
Every client keeps its own model. One round of the loop: every client trains
locally from its own model, then replaces it by the mixing-matrix-weighted mean of
its own and its neighbours' trained models (``fedgen.engine.topology``). There is
no server aggregation: the strategy is not used, and the "global" state the loop
evaluates, samples and checkpoints is the plain average of the client models.
``consensus_distance`` (mean squared distance of the client models to that
average) is reported per round. A recipe that asks the strategy for anything (a
robust rule, detection, FedProx's mu, Ditto, a moving average, a server step size,
client sampling) is refused before round 1, as gossip would ignore it. A round in
which no client's update arrived fails (every client keeps its model), so
``federation.max_failed_rounds`` stops a run whose clients all fail.

With a clock, each client starts a round once it and its neighbours finished the
previous one (``T_i(t) = max_{j in N(i) + i} T_j(t-1) + d_i(t)``): no global
barrier, but a slow client still holds back its neighbours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedgen.config import GossipConfig
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
from fedgen.engine.topology import average, consensus_distance, mix, mixing_matrix, neighbours
from fedgen.errors import ConfigError, RoundFailedError
from fedgen.seeding import derive_seed, numpy_rng
from fedgen.strategies.base import Aggregate, Strategy
from fedgen.strategies.detection import DetectingStrategy
from fedgen.strategies.fedavg import FedAvg
from fedgen.types import ClientInstruction, ClientResult, RoundPlan, StateDict


class GossipSchedule(Schedule):
    """A round is one local training job and one mixing step on every client.

    Args:
        config: the recipe's ``federation.gossip``.
        clock: client compute times, or None (no ``sim_time``).
        client_ids: every client (a graph node each, in sorted order).
        seed: the run's root seed (draws the random regular graph).
    """

    mode = "gossip"

    def __init__(
        self, config: GossipConfig, clock: ClientClock | None, client_ids: list[int], seed: int
    ) -> None:
        self.client_ids = sorted(client_ids)
        self.adj = neighbours(
            config.topology,
            len(self.client_ids),
            numpy_rng(seed, "gossip", "topology"),
            config.degree,
        )
        self.w = mixing_matrix(self.adj, config.weights)
        self.clock = clock
        self.seed = seed
        #: Each client's own model (federated tensors), by client id; empty before round 1.
        self.models: dict[int, StateDict] = {}
        self.finish: dict[int, float] = {}

    def check(self, fed: RoundLoop) -> None:
        refuse_server_stages(fed, self.mode)
        if fed.transforms:
            raise ConfigError(
                "federation.mode=gossip has no server to run the transforms' server halves; "
                "remove the transforms or set federation.mode=sync"
            )
        problems = ignored_strategy_settings(fed)
        if problems:
            raise ConfigError(
                "federation.mode=gossip uses no strategy setting (every client trains from its "
                "own model and averages with its neighbours by federation.gossip's topology "
                "and weights), so it would ignore: "
                + "; ".join(problems)
                + ". Set strategy: {name: fedavg, params: {}} or federation.mode=sync"
            )

    def begin(self, r: int, fed: RoundLoop) -> Step:
        models = self.models or {cid: fed.global_state for cid in self.client_ids}
        jobs = [
            Job(
                RoundPlan(
                    r, [ClientInstruction(cid, derive_seed(self.seed, "round", r, "client", cid))]
                ),
                models[cid],
                r,
            )
            for cid in self.client_ids
        ]
        plan = RoundPlan(r, [job.plan.instructions[0] for job in jobs])
        return Step(plan, jobs, {"models": models})

    def combine(
        self, r: int, fed: RoundLoop, step: Step, results: Iterator[ClientResult]
    ) -> Aggregate | None:
        models: dict[int, StateDict] = step.notes["models"]
        # A client whose job failed mixes the model it had.
        trained = dict(models)
        arrived = 0
        for res in results:
            assert res.update is not None  # the loop passes accepted results only
            start = models[res.client_id]
            trained[res.client_id] = {
                k: (v + res.update[k].to(v.dtype)) if k in res.update else v
                for k, v in start.items()
            }
            arrived += 1
        if not arrived:
            # Nothing was trained: a failed round, as a sync round without a usable update
            # (the loop counts it for max_failed_rounds); every model stays as it was.
            raise RoundFailedError(
                f"round {r}: no client's update arrived (all {len(models)} clients failed); "
                "every client keeps its model"
            )
        mixed = mix([trained[c] for c in self.client_ids], self.w)
        step.notes["mixed"] = dict(zip(self.client_ids, mixed, strict=True))
        step.notes["consensus_before"] = consensus_distance(list(trained.values()))
        step.notes["consensus"] = consensus_distance(mixed)
        fed.global_state = average(mixed)
        return None

    def end(self, r: int, fed: RoundLoop, step: Step, metrics: dict[str, Any]) -> None:
        if "mixed" in step.notes:  # else the round failed: the models stay as they were
            self.models = step.notes["mixed"]
            metrics["consensus_distance"] = step.notes["consensus"]
            metrics["consensus_distance_before_mixing"] = step.notes["consensus_before"]
        # A failed round still took its clients' time.
        if self.clock is None:
            return
        previous = dict(self.finish)
        for i, cid in enumerate(self.client_ids):
            ready = max(
                [previous.get(cid, 0.0)]
                + [previous.get(self.client_ids[j], 0.0) for j in self.adj[i]]
            )
            self.finish[cid] = ready + self.clock.duration(cid, r, client_steps(fed, cid))
        metrics["sim_time"] = max(self.finish.values())

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": {
                str(c): {k: t.clone() for k, t in m.items()} for c, m in self.models.items()
            },
            "finish": {str(c): t for c, t in self.finish.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.models = {int(c): dict(m) for c, m in state["models"].items()}
        self.finish = {int(c): float(t) for c, t in state["finish"].items()}


def ignored_strategy_settings(fed: RoundLoop) -> list[str]:
    """The recipe's strategy settings gossip would ignore, each with its fix ([]: none).

    Gossip never calls the strategy: no server aggregates, steps or averages a model,
    every client trains every round, and clients are told nothing but their seed.
    ``weighted`` and ``min_clients`` are ignored too, but no value of theirs asks for
    anything (the defaults cannot be turned off), so they are not refused.
    """
    strategy: Strategy = fed.strategy
    problems = []
    if isinstance(strategy, DetectingStrategy):
        problems.append(
            "the detection section (it screens the updates a server aggregates); remove it"
        )
        strategy = strategy.inner
    told = strategy_client_config(fed, 0)
    if type(strategy) is not FedAvg:
        what = (
            f"what it tells its clients: {', '.join(sorted(told))}"
            if told
            else "its server aggregation and step"
        )
        problems.append(f"strategy {type(strategy).__name__} ({what}); use strategy fedavg")
        return problems
    if strategy.ema_decay is not None:
        problems.append(
            f"strategy.params.ema_decay={strategy.ema_decay} (no server model is averaged over "
            "rounds); remove it"
        )
    if strategy.server_lr != 1.0:
        problems.append(
            f"strategy.params.server_lr={strategy.server_lr} (no server steps); remove it"
        )
    if strategy.sampling != "fixed" or strategy.fraction != 1.0:
        problems.append(
            f"strategy.params.fraction={strategy.fraction}, sampling={strategy.sampling} (every "
            "client trains every round); remove them"
        )
    if strategy.fixed_denominator:
        problems.append("strategy.params.fixed_denominator (nothing is averaged); remove it")
    return problems
