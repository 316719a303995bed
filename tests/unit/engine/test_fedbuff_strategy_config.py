"""FedBuff and the strategy: clients get the strategy's config, and settings FedBuff
cannot honour are refused before round 1; wall-clock refills draw from every idle client,
the moment a result arrives."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from tiny_federation import tiny_config

from fedgen.config import FedBuffConfig
from fedgen.engine.fedbuff_wall import WallClockFedBuff
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.strategies.fedprox import FedProx
from fedgen.types import ClientInstruction, ClientResult

FEDBUFF = {"federation.mode": "fedbuff", "federation.fedbuff": "{buffer_size: 2}"}


@pytest.mark.parametrize(
    ("strategy", "params", "expected"),
    [
        ("fedprox", "{min_clients: 2, mu: 0.25}", {"proximal_mu": 0.25}),
        (
            "ditto",
            "{min_clients: 2, lam: 0.5, personal_steps: 3}",
            {"ditto_lambda": 0.5, "ditto_steps": 3},
        ),
        ("fedavg", "{min_clients: 2}", {}),
    ],
)
def test_fedbuff_jobs_carry_the_strategys_client_config(mnist_dir, strategy, params, expected):
    # Prepare
    fed = build_experiment(
        tiny_config(mnist_dir, **FEDBUFF, **{"strategy.name": strategy, "strategy.params": params})
    ).federation

    # Execute: the first server step's plan (begin changes nothing; nobody trains).
    step = fed.schedule.begin(0, fed)

    # Assert: every instruction the backend runs is told what a sync round's would be.
    sync_plan = fed.strategy.configure(0, sorted(fed.clients), np.random.default_rng(0))
    assert sync_plan.instructions[0].config == expected
    instructions = [ins for job in step.jobs for ins in job.plan.instructions]
    assert len(instructions) == 2
    assert all(ins.config == expected for ins in instructions)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"strategy.params": "{min_clients: 2, weighted: false, fixed_denominator: true}"},
            "fixed_denominator=true divides by a sampled cohort",
        ),
        (
            {
                "strategy.name": "krum",
                "strategy.params": "{min_clients: 2, byzantine: 1}",
                "federation.fedbuff": "{buffer_size: 4}",
            },
            "krum with byzantine=1 needs at least 5 results a server step",
        ),
        (
            {
                "strategy.name": "median",
                "strategy.params": "{min_clients: 2, byzantine: 1}",
                "detection": "{threshold: 3.5}",
            },
            "median with byzantine=1 needs at least 3 results",
        ),
        (
            {"strategy.name": "kld_clustered", "strategy.params": "{num_clusters: 3}"},
            "kld_clustered with num_clusters=3 and min_clients=1 needs at least 3 results",
        ),
    ],
    ids=["fixed-denominator", "krum", "median-behind-detection", "clusters"],
)
def test_fedbuff_refuses_strategy_settings_it_cannot_honour(mnist_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment(tiny_config(mnist_dir, **{**FEDBUFF, **overrides}))


def test_fedbuff_says_it_ignores_client_sampling(mnist_dir, caplog):
    # Not refused (the default recipe samples a fraction of the clients), but said.
    params = "{min_clients: 2, fraction: 0.5}"
    with caplog.at_level("WARNING", logger="fedgen.engine.fedbuff"):
        build_experiment(tiny_config(mnist_dir, **FEDBUFF, **{"strategy.params": params}))
    assert "ignores strategy.params fraction=0.5" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedgen.engine.fedbuff"):
        build_experiment(tiny_config(mnist_dir, **FEDBUFF))
    assert "ignores" not in caplog.text


class QueueBackend:
    """Keeps jobs in flight; they arrive first in, first out."""

    supports_async = True

    def __init__(self) -> None:
        self.queue: list[ClientInstruction] = []
        self.submitted: list[ClientInstruction] = []

    def submit(self, ins: ClientInstruction, work: Any, clients: Any, private: Any) -> None:
        self.queue.append(ins)
        self.submitted.append(ins)

    def arrivals(self, n: int) -> list[ClientResult]:
        now, self.queue = self.queue[:n], self.queue[n:]
        return [ClientResult(ins.client_id, 10, {"w": torch.zeros(1)}) for ins in now]


def fake_round_loop(backend: Any) -> SimpleNamespace:
    """What the wall-clock schedule reads of the round loop: a FedProx strategy, one tensor."""
    return SimpleNamespace(
        backend=backend,
        strategy=FedProx(mu=0.5, min_clients=1),
        global_state={"w": torch.zeros(1)},
        clients={},
        private_states={},
        local_work=lambda state, version: None,
    )


def wall_run(rounds: int, seed: int = 7) -> QueueBackend:
    """``rounds`` wall-clock steps of 6 clients, 2 in flight, one arrival a step."""
    backend = QueueBackend()
    fed = fake_round_loop(backend)
    schedule = WallClockFedBuff(FedBuffConfig(buffer_size=1, concurrency=2), range(6), seed)
    for r in range(rounds):
        step = schedule.begin(r, fed)  # type: ignore[arg-type]
        schedule.end(r, fed, step, {})  # type: ignore[arg-type]
    return backend


def test_wall_clock_refills_draw_from_every_idle_client_deterministically():
    # Execute
    backend = wall_run(30)

    # Assert: all six clients train (not only the first two drawn), two in flight at a
    # time, the draws are the seed's, and every job is told FedProx's mu.
    assert {ins.client_id for ins in backend.submitted} == set(range(6))
    assert len(backend.queue) == 2
    assert [i.client_id for i in wall_run(30).submitted] == [i.client_id for i in backend.submitted]
    assert [i.client_id for i in wall_run(30, seed=8).submitted] != [
        i.client_id for i in backend.submitted
    ]
    assert all(ins.config == {"proximal_mu": 0.5} for ins in backend.submitted)


class EventBackend(QueueBackend):
    """A ``QueueBackend`` that logs every job sent and result read, in order; with
    ``newest_first`` the job sent last comes back first (a fast client)."""

    def __init__(self, newest_first: bool = False) -> None:
        super().__init__()
        self.newest_first = newest_first
        self.events: list[tuple[str, int]] = []

    def submit(self, ins: ClientInstruction, work: Any, clients: Any, private: Any) -> None:
        super().submit(ins, work, clients, private)
        self.events.append(("sent", ins.client_id))

    def arrivals(self, n: int) -> list[ClientResult]:
        if self.newest_first:
            self.queue.reverse()
        out = super().arrivals(n)
        if self.newest_first:
            self.queue.reverse()
        self.events.extend(("read", res.client_id) for res in out)
        return out


def wall_steps(backend: EventBackend, rounds: int) -> tuple[WallClockFedBuff, list[Any]]:
    """``rounds`` wall-clock steps of 3 clients, all in flight, 2 arrivals a step."""
    fed = fake_round_loop(backend)
    schedule = WallClockFedBuff(FedBuffConfig(buffer_size=2, concurrency=3), range(3), 7)
    steps = []
    for r in range(rounds):
        step = schedule.begin(r, fed)  # type: ignore[arg-type]
        fed.global_state = {"w": torch.full((1,), float(r + 1))}  # the server stepped
        schedule.end(r, fed, step, {})  # type: ignore[arg-type]
        steps.append(step)
    return schedule, steps


def test_wall_clock_sends_a_new_job_the_moment_a_result_arrives():
    # Execute: one server step; results come back first in, first out.
    backend = EventBackend()
    schedule, _ = wall_steps(backend, 1)

    # Assert: client 0's place is filled before the second result is read, with the
    # model the server had then (version 0); the arrival that filled the buffer is
    # replaced after the step, with version 1.
    assert backend.events == [
        ("sent", 0),
        ("sent", 1),
        ("sent", 2),
        ("read", 0),
        ("sent", 0),
        ("read", 1),
        ("sent", 1),
    ]
    assert {cid: sent.version for cid, sent in schedule.sent.items()} == {0: 0, 1: 1, 2: 0}


def test_wall_clock_holds_a_clients_second_result_for_the_next_step():
    # Execute: the job sent last comes back first, so client 2's replacement returns
    # before the buffer has filled.
    backend = EventBackend(newest_first=True)
    _, steps = wall_steps(backend, 2)

    # Assert: one update per client a step; the held one leads the next step, stale.
    assert steps[0].notes["arrived"] == [2, 1]
    assert steps[1].notes["arrived"][0] == 2
    assert steps[1].notes["staleness"][2] == 1
    assert all(len(set(s.notes["arrived"])) == 2 for s in steps)
