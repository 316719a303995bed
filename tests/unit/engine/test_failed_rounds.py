"""Rounds without a usable update: a run of them stops and says it failed, not completed."""

from __future__ import annotations

import json

import torch
from tiny_federation import tiny_config

from fedgen.experiment import build_experiment, run_experiment
from fedgen.report.html import write_report


def _cfg(mnist_dir, **extra: object):
    return tiny_config(
        mnist_dir,
        **{
            "faults": "{nan: 1.0}",
            "federation.rounds": 6,
            "eval.every": 0,
            "eval.final": False,
            **extra,
        },
    )


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_rounds_in_a_row_without_a_usable_update_stop_the_run_as_failed(mnist_dir, tmp_path):
    # Execute: every client sends NaN; the run may fail two rounds in a row.
    run = tmp_path / "run"
    summary = run_experiment(
        _cfg(mnist_dir, **{"federation.max_failed_rounds": 2}), run, progress=False
    )
    # Assert: it stopped after two of six rounds, as failed, saying why and what to do.
    assert summary["status"] == "failed"
    assert summary["rounds"] == 2 and summary["planned_rounds"] == 6
    assert summary["failed_rounds"] == 2
    reason = summary["stop_reason"]
    assert "max_failed_rounds=2" in reason and "NaN" in reason
    assert "This run failed" in write_report(run).read_text()
    assert "resume" in reason
    # A resume (the cause fixed, say nodes back up) counts failed rounds afresh: here
    # the clients still send NaN, so it stops again two rounds later.
    again = run_experiment(
        _cfg(mnist_dir, **{"federation.max_failed_rounds": 2}), run, progress=False, resume=True
    )
    assert again["status"] == "failed" and again["rounds"] == 4 and again["failed_rounds"] == 4


def test_a_run_whose_every_round_failed_is_failed_even_under_the_limit(mnist_dir, tmp_path):
    summary = run_experiment(
        _cfg(mnist_dir, **{"federation.rounds": 2}), tmp_path / "run", progress=False
    )
    assert summary["status"] == "failed" and summary["failed_rounds"] == 2
    assert "initial weights" in summary["stop_reason"]


def test_a_run_that_ends_on_failed_rounds_failed(mnist_dir):
    # Prepare: round 0 aggregates; every later round is made to fail.
    fed = build_experiment(
        tiny_config(mnist_dir, **{"federation.rounds": 3, "federation.max_failed_rounds": 2})
    ).federation
    run_round = fed.run_round

    def failing_after_round_0(r: int):
        record = run_round(r)
        if r >= 1:
            record.metrics["round_failed"] = f"round {r}: injected"
        return record

    fed.run_round = failing_after_round_0  # type: ignore[method-assign]
    # Execute
    assert fed.run()
    # Assert: the last two of three planned rounds failed: the run failed, though planned.
    assert fed.next_round == 3 and fed.stop_status == "failed"
    assert "round 2: injected" in (fed.stop_reason or "")


def test_a_healthy_run_counts_no_failed_rounds(mnist_dir, tmp_path):
    summary = run_experiment(
        tiny_config(mnist_dir, **{"federation.rounds": 1, "eval.every": 0, "eval.final": False}),
        tmp_path / "run",
        progress=False,
    )
    assert summary["status"] == "completed" and summary["failed_rounds"] == 0


def test_an_empty_fixed_denominator_round_leaves_a_server_optimizer_where_it_was(mnist_dir):
    # Prepare: FedAvgM over a fixed denominator; every client's update is NaN, so no
    # round has a client to average (a zero mean, not a failed round). The momentum
    # holds a step from earlier rounds.
    fed = build_experiment(
        _cfg(
            mnist_dir,
            **{
                "strategy.name": "fedavgm",
                "strategy.params": "{weighted: false, fixed_denominator: true, min_clients: 1}",
                "federation.rounds": 1,
            },
        )
    ).federation
    floats = {k: v.clone() for k, v in fed.global_state.items() if v.is_floating_point()}
    fed.strategy.moments["momentum"] = {
        k: torch.ones_like(v, dtype=torch.float64) for k, v in floats.items()
    }
    # Execute
    fed.run()
    # Assert: nothing arrived and nothing was added, so neither the model nor the
    # momentum moved (a step on the zero mean would have moved every weight by 0.9).
    assert fed.history[-1]["clients"] == 0
    for k, v in floats.items():
        assert torch.equal(fed.global_state[k], v), k
        assert torch.equal(fed.strategy.moments["momentum"][k], torch.ones_like(v).double()), k


def test_a_client_whose_job_could_not_be_sent_counts_no_bytes_down(mnist_dir, monkeypatch):
    # Prepare: client 0's job cannot be encoded, so it crashes and nothing reaches it.
    from fedgen.engine.backends import inprocess
    from fedgen.errors import FedgenError

    real_run, real_job = inprocess.run_client, inprocess.job_message

    def run_client(ins, *args, **kwargs):
        if ins.client_id == 0:
            raise RuntimeError("job could not be sent")
        return real_run(ins, *args, **kwargs)

    def job_message(ins, *args, **kwargs):
        if ins.client_id == 0:
            raise FedgenError("unencodable job")
        return real_job(ins, *args, **kwargs)

    monkeypatch.setattr(inprocess, "run_client", run_client)
    monkeypatch.setattr(inprocess, "job_message", job_message)
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **{"federation.rounds": 1, "eval.every": 0, "eval.final": False},
            **{"strategy.params": "{fraction: 1.0, min_clients: 1}"},
        )
    ).federation
    # Execute
    fed.run()
    # Assert: the backend's 0 is kept (it was counted as the whole model before);
    # every other client received its job.
    per_client = fed.history[-1]["bytes_by_client"]
    down = dict(zip(per_client["clients"], per_client["down"], strict=True))
    assert down[0] == 0
    assert all(b > 0 for c, b in down.items() if c != 0)


def test_a_held_reply_in_a_plain_round_fails_its_client_not_the_run(mnist_dir, monkeypatch):
    # Prepare: client 0 answers as if it held its update for secure aggregation (a buggy
    # or hostile node), in a round without it: nothing of its update reached the server.
    from fedgen.engine.backends import inprocess

    real_run = inprocess.run_client

    def run_client(ins, *args, **kwargs):
        result, private = real_run(ins, *args, **kwargs)
        if ins.client_id == 0:
            result.update, result.held, result.signature = None, True, None
        return result, private

    monkeypatch.setattr(inprocess, "run_client", run_client)
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **{"federation.rounds": 1, "eval.every": 0, "eval.final": False},
            # Without a ledger no signature check stands in the way.
            **{"strategy.params": "{fraction: 1.0, min_clients: 1}", "ledger": False},
        )
    ).federation
    # Execute
    fed.run()
    # Assert: the round aggregated the others; client 0 is a failure that says why.
    record = fed.history[-1]
    assert record["failures"] == 1
    assert "holds its update for secure aggregation" in record["failed_clients"]["0"]
    assert record["clients"] == len(fed.clients) - 1


def test_a_callback_failing_at_the_start_ends_those_already_started(mnist_dir):
    # Prepare: the second callback cannot start (its disk is full, say).
    from fedgen.engine.federation import Callback

    events: list[str] = []

    class Opens(Callback):
        def on_run_start(self, fed):
            events.append("opened")

        def on_run_end(self, fed, completed):
            events.append(f"closed completed={completed}")

    class Fails(Callback):
        def on_run_start(self, fed):
            raise OSError("No space left on device")

        def on_run_end(self, fed, completed):
            events.append("ended a callback that never started")

    cfg = tiny_config(mnist_dir, **{"federation.rounds": 1, "eval.every": 0})
    fed = build_experiment(cfg, [Opens(), Fails()]).federation
    # Execute / Assert: the first is ended, the failing one is not, nothing trained
    try:
        fed.run()
    except OSError as exc:
        assert "No space left" in str(exc)
    else:
        raise AssertionError("the run started")
    assert events == ["opened", "closed completed=False"] and fed.next_round == 0
