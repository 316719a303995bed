"""FedBuff on the wall clock over real worker processes, on real MNIST digits.

Timing is real, so the checks are properties every run has, not figures: each
server step takes ``buffer_size`` arrivals, clients sent an older model arrive
stale and are weighted so, nobody waits for a cohort, the ledger verifies (each
update signed for the round its work was sent in), and a resumed run continues.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment, run_experiment
from fedgen.ledger import verify_run

torch.set_num_threads(1)

WALL = {
    "federation.mode": "fedbuff",
    "federation.fedbuff": "{buffer_size: 2, concurrency: 4, timing: wall}",
    "strategy.params": "{min_clients: 1}",
    "eval.every": 0,
    "eval.final": "false",
}
POOL = {"backend.name": "process_pool", "backend.params": "{workers: 2}"}


def test_wall_clock_fedbuff_steps_on_real_arrivals_resumes_and_its_ledger_verifies(
    mnist_dir, tmp_path
):
    # Prepare: 4 clients in flight on 2 workers, a server step every 2 arrivals; the
    # two clients queued behind the first two train from the initial model.
    short = tiny_config(mnist_dir, **WALL, **POOL, **{"federation.rounds": 2})
    longer = tiny_config(mnist_dir, **WALL, **POOL, **{"federation.rounds": 4})
    # Execute: two rounds, then resumed to four (jobs in flight are not checkpointed:
    # the resumed run sends fresh ones from the checkpointed model).
    run_experiment(short, tmp_path / "run", progress=False)
    run_experiment(longer, tmp_path / "run", progress=False, resume=True)
    # Assert
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [m["round"] for m in history] == [0, 1, 2, 3]
    assert all(m["clients"] == 2 and "round_failed" not in m for m in history)
    assert history[0]["staleness_max"] == 0 and history[1]["staleness_max"] >= 1
    assert all(m["in_flight"] >= 2 for m in history)  # nobody waited for a cohort
    assert history[1]["wall_time"] > history[0]["wall_time"] > 0
    report = verify_run(tmp_path / "run")
    assert report.ok, report.problems
    ledger_text = (tmp_path / "run" / "ledger.sqlite").read_bytes()
    assert b"signed_round" in ledger_text  # a stale update, signed for its own round


def test_wall_clock_timing_needs_a_backend_that_keeps_jobs_in_flight(mnist_dir):
    with pytest.raises(ConfigError, match="timing=wall needs a backend"):
        build_experiment(tiny_config(mnist_dir, **WALL))
