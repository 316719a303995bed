"""FedBuff on the one loop, on real MNIST digits: the sync limit, staleness weights, resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_federation import interrupt_at
from tiny_federation import tiny_config

from fedgen.config import ClockConfig, FedBuffConfig
from fedgen.engine.callbacks import CheckpointCallback
from fedgen.engine.client_clock import ClientClock
from fedgen.engine.fedbuff import FedBuffSchedule, staleness_weight
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, restore_latest

FEDBUFF = {"federation.mode": "fedbuff"}
SKEWED = {
    **FEDBUFF,
    "federation.fedbuff": "{buffer_size: 2, staleness_exponent: 1.0}",
    "federation.clock": "{speeds: lognormal, sigma: 1.0, jitter: 0.3}",
}


def test_staleness_weights_match_the_paper_formula():
    # 1 / (1 + s) ** a, by hand.
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)
    assert staleness_weight(8, 1.0) == pytest.approx(1 / 9)
    assert staleness_weight(5, 0.0) == 1.0
    with pytest.raises(ValueError):
        staleness_weight(-1, 0.5)


def test_fresh_full_buffer_on_equal_speeds_is_synchronous_fedavg(mnist_dir):
    # Prepare: K = concurrency = all 4 clients, equal speeds: every update is fresh.
    sync = build_experiment(tiny_config(mnist_dir)).federation
    buff = build_experiment(
        tiny_config(mnist_dir, **FEDBUFF, **{"federation.fedbuff": "{buffer_size: 4}"})
    ).federation

    # Execute
    assert sync.run() and buff.run()

    # Assert: bit for bit the same model; one sim second per local step, 2 steps a round.
    for k in sync.global_state:
        assert torch.equal(sync.global_state[k], buff.global_state[k]), k
    assert [m["staleness_max"] for m in buff.history] == [0.0, 0.0, 0.0]
    assert [m["sim_time"] for m in buff.history] == [2.0, 4.0, 6.0]


def test_a_server_step_is_the_staleness_weighted_mean_of_its_arrivals(mnist_dir):
    # Prepare: record every raw update the backend returns and the state before each step.
    fed = build_experiment(tiny_config(mnist_dir, **SKEWED, **{"federation.rounds": 6})).federation
    raw: dict[int, list] = {}
    original = fed.backend.run

    def recording(plan, work, clients, private):
        for res in original(plan, work, clients, private):
            # Every client of one backend call started from one version: find which.
            version = next(v for v, state in versions.items() if state is work.global_state)
            raw.setdefault(plan.round, []).append(
                (res.client_id, res.num_examples, version, dict(res.update))
            )
            yield res

    fed.backend.run = recording
    before = []
    versions = {}
    for r in range(6):
        versions[r] = fed.global_state
        before.append({k: v.clone() for k, v in fed.global_state.items()})
        record = fed.run_round(r)
        fed.next_round += 1
        fed.history.append(record.metrics)

        # Assert: x + sum n_i w(s_i) delta_i / sum n_i, with s_i = r - start version.
        arrivals = raw[r]
        total = sum(n for _, n, _, _ in arrivals)
        for key, x in before[r].items():
            expected = (
                x.to(torch.float64)
                + sum(
                    n * staleness_weight(r - v, 1.0) * upd[key].to(torch.float64)
                    for _, n, v, upd in arrivals
                )
                / total
            )
            torch.testing.assert_close(fed.global_state[key].to(torch.float64), expected)
        stale = [r - v for _, _, v, _ in arrivals]
        assert record.metrics["staleness_max"] == max(stale)
        assert record.metrics["staleness_mean"] == pytest.approx(sum(stale) / len(stale))
    # Heavy-tailed speeds make some update stale, and simulated time only moves forward.
    assert max(m["staleness_max"] for m in fed.history) >= 1
    times = [m["sim_time"] for m in fed.history]
    assert times == sorted(times)


def test_a_client_that_arrives_early_starts_again_at_once_from_the_current_model():
    # Prepare: 3 clients, one local step each finishing at t=1, 3 and 10 (client 2 is the
    # straggler); the buffer takes 2 arrivals, all 3 clients train at once.
    clock = ClientClock(ClockConfig(), range(3), seed=0)
    clock.step_seconds = {0: 1.0, 1: 3.0, 2: 10.0}
    schedule = FedBuffSchedule(FedBuffConfig(buffer_size=2, concurrency=3), clock, [0, 1, 2], 0)
    fed = SimpleNamespace(strategy=SimpleNamespace(), global_state={"w": torch.zeros(1)})
    fed.local_steps = 1

    # Execute: the first server step (the global model becomes version 1 at t=3).
    step = schedule.begin(0, fed)  # type: ignore[arg-type]
    fed.global_state = {"w": torch.ones(1)}
    metrics: dict = {}
    schedule.end(0, fed, step, metrics)  # type: ignore[arg-type]

    # Assert: client 0 arrived at t=1 and was sent version 0 (the server's model until the
    # buffer filled) at once, not at t=3; client 1 filled the buffer and was sent version 1.
    assert [(j.client_id, j.finish) for j in step.notes["arrivals"]] == [(0, 1.0), (1, 3.0)]
    assert metrics["sim_time"] == 3.0
    started = {j.client_id: (j.start, j.version) for j in schedule.in_flight}
    assert started == {0: (1.0, 0), 1: (3.0, 1), 2: (0.0, 0)}
    assert sorted(schedule.versions) == [0, 1]  # version 0 stays while jobs train from it

    # Execute: the next step.
    step = schedule.begin(1, fed)  # type: ignore[arg-type]
    schedule.end(1, fed, step, metrics)  # type: ignore[arg-type]

    # Assert: client 0's second job (done at t=2) joins the next buffer (one update per
    # client a step), one version stale; the step ends when client 1 is back, at t=6.
    assert [j.client_id for j in step.notes["arrivals"]] == [0, 1]
    assert step.notes["staleness"] == {0: 1, 1: 0}
    assert metrics["sim_time"] == 6.0


def test_heterogeneous_speeds_with_a_full_buffer_finish_sooner_than_sync(mnist_dir):
    # Prepare: K = concurrency = all 4 clients, lognormal speeds with per-job jitter.
    clock_cfg = "{speeds: lognormal, sigma: 1.0, jitter: 0.5}"
    sync_cfg = tiny_config(mnist_dir, **{"federation.clock": clock_cfg})
    buff_cfg = tiny_config(
        mnist_dir,
        **FEDBUFF,
        **{"federation.fedbuff": "{buffer_size: 4}", "federation.clock": clock_cfg},
    )
    sync = build_experiment(sync_cfg).federation
    buff = build_experiment(buff_cfg).federation

    # Execute
    assert sync.run() and buff.run()

    # Assert: a hand-run of the event clock. Nobody waits for the step: a client's job k
    # starts when its job k-1 is done, or (if that came before the buffer could take it)
    # at step k-2's instant; step k ends when every client's job k is taken.
    clock = ClientClock(buff_cfg.federation.clock, range(4), seed=buff_cfg.seed)
    finish = dict.fromkeys(range(4), 0.0)
    steps = [0.0, 0.0]  # the instants of steps k-2 and k-1
    expected = []
    for k in range(3):
        for c in range(4):
            finish[c] = max(finish[c], steps[-2]) + clock.duration(c, k, 2)
        steps.append(max(*finish.values(), steps[-1]))
        expected.append(steps[-1])
    times = [m["sim_time"] for m in buff.history]
    assert times == pytest.approx(expected)
    # The synchronous run waits for the slowest client every round.
    assert times[-1] < sync.history[-1]["sim_time"]


def test_resumed_fedbuff_run_ends_bit_identical(mnist_dir, tmp_path):
    cfg = tiny_config(mnist_dir, **SKEWED, **{"federation.rounds": 6})
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    interrupt_at(first.task, 2 * 3 + 1)  # in round 3 (2 arrivals a step)
    assert first.run() is False
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(second, tmp_path, cfg) == 2
    assert second.run()
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in ref.history]
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in second.history] == strip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"federation.fedbuff": "{buffer_size: 5}"}, "buffer could never fill"),
        ({"federation.fedbuff": "{concurrency: 9}"}, "federation has 4 clients"),
        ({"federation.fedbuff": "{buffer_size: 0}"}, "buffer_size"),
        ({"federation.fedbuff": "{staleness_exponent: -1}"}, "staleness_exponent"),
        ({"federation.fedbuff": "{buffer: 2}"}, "buffer"),
        ({"federation.clock": "{speeds: gamma}"}, "speeds"),
        ({"federation.fedbuff": "{buffer_size: 1}"}, "min_clients=2"),
        ({"federation.mode": "sync", "federation.fedbuff": "{buffer_size: 2}"}, "mode is 'sync'"),
        ({"federation.mode": "fedbuf"}, "federation.mode"),
    ],
)
def test_bad_fedbuff_values_are_refused_by_name(mnist_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment(tiny_config(mnist_dir, **{**FEDBUFF, **overrides}))


def test_heavy_tailed_clock_is_seeded_and_profiles_follow_device_speeds():
    a = ClientClock(ClockConfig(speeds="lognormal", sigma=1.0), range(12), seed=3)
    b = ClientClock(ClockConfig(speeds="lognormal", sigma=1.0), range(12), seed=3)
    c = ClientClock(ClockConfig(speeds="lognormal", sigma=1.0), range(12), seed=4)
    assert a.step_seconds == b.step_seconds != c.step_seconds
    times = sorted(a.step_seconds.values())
    assert times[-1] / times[0] > 3  # heavy-tailed: a straggler several times slower
    p = ClientClock(ClockConfig(speeds="profiles"), range(7), seed=0)
    # The published profiles' slowest device (480 MHz x 1) vs the fastest (15.6 GHz x 8).
    assert max(p.step_seconds.values()) / min(p.step_seconds.values()) == pytest.approx(
        15600 * 8 / 480
    )


def test_fedbuff_run_folder_logs_each_server_step_and_its_ledger_verifies(mnist_dir, tmp_path):
    import json

    from fedgen.experiment import run_experiment
    from fedgen.ledger import verify_run

    cfg = tiny_config(mnist_dir, **SKEWED, **{"eval.every": 0, "eval.final": False})
    run_experiment(cfg, tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "sim_time" in x]
    assert [x["round"] for x in steps] == [0, 1, 2]
    assert all("staleness_max" in x for x in steps)
    report = verify_run(tmp_path)
    assert report.ok, report.lines()


def test_a_synchronous_round_lasts_as_long_as_its_slowest_client(mnist_dir):
    cfg = tiny_config(mnist_dir, **{"federation.clock": "{speeds: lognormal, sigma: 1.0}"})
    fed = build_experiment(cfg).federation
    assert fed.run()
    clock = ClientClock(cfg.federation.clock, range(4), seed=cfg.seed)
    slowest = max(clock.step_seconds.values()) * 2  # 2 local steps, all 4 clients a round
    assert [m["sim_time"] for m in fed.history] == pytest.approx(
        [slowest, 2 * slowest, 3 * slowest]
    )


def test_a_job_ends_after_it_starts_even_below_the_float_spacing_of_a_long_clock():
    # Prepare: a straggler whose step takes 1e16 s (the clock's float spacing there is 2 s)
    # and a client whose step takes a millisecond: sent at 1e16, it would end at its start.
    clock = ClientClock(ClockConfig(), range(2), seed=0)
    clock.step_seconds = {0: 1e-3, 1: 1e16}
    schedule = FedBuffSchedule(FedBuffConfig(buffer_size=2, concurrency=2), clock, [0, 1], 0)
    fed = SimpleNamespace(strategy=SimpleNamespace(), global_state={"w": torch.zeros(1)})
    fed.local_steps = 1
    metrics: dict = {}
    for r in range(3):
        # Execute
        step = schedule.begin(r, fed)  # type: ignore[arg-type]
        schedule.end(r, fed, step, metrics)  # type: ignore[arg-type]
        # Assert: every job in flight ends strictly after it was sent (the schedule's
        # invariant: a job sent at an instant does not arrive at that instant).
        assert all(j.finish > j.start for j in schedule.in_flight), schedule.in_flight


def test_a_clock_whose_job_time_overflows_is_refused_with_what_to_lower():
    clock = ClientClock(ClockConfig(seconds_per_step=1e300), range(1), seed=0)
    with pytest.raises(ConfigError, match=r"no finite duration.*lower seconds_per_step"):
        clock.duration(0, 0, 10**9)


def test_detection_behind_fedbuff_judges_updates_before_their_staleness_weight():
    # Prepare: seven near-equal updates; client 4's is 8 server steps stale, so FedBuff
    # weighs it by 1 / 3 (exponent 0.5).
    from fedgen.engine.schedule import Step
    from fedgen.strategies.detection import DetectingStrategy, OutlierDetector
    from fedgen.strategies.fedavg import FedAvg
    from fedgen.types import ClientResult, RoundPlan

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(50, generator=gen)
    results = [
        ClientResult(i, 10, update={"w": base + 0.05 * torch.randn(50, generator=gen)})
        for i in range(7)
    ]
    strategy = DetectingStrategy(FedAvg(weighted=False), OutlierDetector(), exclude=True)
    clock = ClientClock(ClockConfig(), range(7), seed=0)
    schedule = FedBuffSchedule(FedBuffConfig(buffer_size=7), clock, list(range(7)), 0)
    step = Step(RoundPlan(0, []), [], {"staleness": {i: 8 if i == 4 else 0 for i in range(7)}})
    # Execute
    agg = schedule.combine(0, SimpleNamespace(strategy=strategy), step, iter(results))  # type: ignore[arg-type]
    # Assert: nobody flagged, all seven aggregated, client 4's update weighted by 1/3.
    assert agg is not None and agg.metrics["detect/flagged"] == 0 and agg.num_clients == 7
    expected = sum(r.update["w"] for r in results if r.client_id != 4)  # type: ignore[index]
    assert results[4].update is not None
    expected = (expected + results[4].update["w"]) / 7  # already weighted in place
    assert torch.allclose(agg.delta["w"].float(), expected.float(), atol=1e-6)
