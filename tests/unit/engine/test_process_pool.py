"""The process pool: per-client timeouts, stuck workers replaced, workers die with the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from tiny_federation import tiny_config

from fedgen.experiment import build_experiment
from fedgen.transforms.base import TransformContext, UpdateTransform


class Slow(UpdateTransform):
    """Chosen clients hang for ``seconds`` after training (a stuck device)."""

    def __init__(self, clients: set[int], seconds: float) -> None:
        self.clients = clients
        self.seconds = seconds

    def on_client(self, update, ctx: TransformContext):
        if ctx.client_id in self.clients:
            time.sleep(self.seconds)
        return update, {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it does no work, but count it as gone only
    # once reaped, which the backend does when it replaces a worker.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_timeout_counts_from_each_clients_start_and_stuck_workers_are_replaced(mnist_dir):
    # Prepare: two workers, clients 0 and 1 hang 10 s, the timeout is 6 s. Both start
    # at once, so both must time out at about 6 s; counted from when the server began
    # waiting for client 1 (after client 0 timed out, at 6 s), client 1 would pass.
    cfg = tiny_config(
        mnist_dir,
        **{
            "backend.name": "process_pool",
            "backend.params": "{workers: 2, client_timeout: 6.0}",
            "strategy.params": "{fraction: 1.0, min_clients: 1}",
            "data.num_clients": 2,
        },
    )
    fed = build_experiment(cfg).federation
    fed.transforms.append(Slow({0, 1}, seconds=10.0))
    fed.client_side = None  # workers get the harness's objects, Slow included
    fed.backend.start(fed._local_side())  # workers ready before timing
    first_pids = set(fed.backend.worker_pids)
    # Execute
    t0 = time.monotonic()
    record = fed.run_round(0)
    elapsed = time.monotonic() - t0
    # Assert
    failed = record.metrics["failed_clients"]
    assert set(failed) == {"0", "1"}, failed
    assert all("timed out" in v for v in failed.values())
    assert elapsed < 10.0, f"the round waited {elapsed:.1f} s for hung clients"
    # The stuck workers were killed and replaced: their processes are gone.
    assert all(not _alive(pid) for pid in first_pids)
    assert len(fed.backend.worker_pids) == 2
    # The replacements train the next round normally (untimed: the machine may be busy).
    fed.transforms.pop()
    fed.backend.client_timeout = None
    assert fed.run_round(1).metrics["failures"] == 0
    fed.backend.close()


def test_a_worker_that_dies_is_a_failure_and_is_replaced(mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        **{
            "backend.name": "process_pool",
            "backend.params": "{workers: 1}",
            "strategy.params": "{fraction: 1.0, min_clients: 1}",
        },
    )
    fed = build_experiment(cfg).federation
    fed.transforms.append(_Exit({2}))
    fed.client_side = None  # workers get the harness's objects, _Exit included
    record = fed.run_round(0)
    fed.backend.close()
    assert record.metrics["failed_clients"] == {"2": "worker process died (exit code 3)"}
    assert record.metrics["clients"] == 3


class _Exit(UpdateTransform):
    """Chosen clients' processes vanish mid-round (killed by the device's OS)."""

    def __init__(self, clients: set[int]) -> None:
        self.clients = clients

    def on_client(self, update, ctx: TransformContext):
        if ctx.client_id in self.clients:
            os._exit(3)
        return update, {}


def test_workers_exit_within_seconds_when_the_server_is_killed(mnist_dir, tmp_path):
    # Prepare: a server process whose clients hang for a minute in round 0.
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        sys.path.insert(0, {str(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))!r})
        from pathlib import Path
        from tiny_federation import tiny_config
        from fedgen.experiment import build_experiment
        from test_process_pool import Slow
        cfg = tiny_config(Path({str(mnist_dir)!r}), **{{
            "backend.name": "process_pool", "backend.params": "{{workers: 2}}"}})
        fed = build_experiment(cfg).federation
        fed.transforms.append(Slow(set(range(4)), seconds=60.0))
        fed.client_side = None
        fed.backend.start(fed._local_side())
        print(" ".join(map(str, fed.backend.worker_pids)), flush=True)
        fed.run_round(0)
        """
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert server.stdout is not None
    pids = [int(p) for p in server.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    time.sleep(2.0)  # the workers are now inside the hung clients
    # Execute: kill -9 the server, as a user stopping a run would.
    server.send_signal(signal.SIGKILL)
    server.wait()
    # Assert: the workers follow within seconds, not after their minute of work.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "workers outlived their server"


def test_a_round_abandoned_midway_leaves_nothing_for_the_next(mnist_dir):
    # Prepare: a round of 4 clients on 2 workers whose consumer stops after the first
    # result (the others queued or training), then the next round on the same pool.
    from fedgen.types import ClientInstruction, RoundPlan

    cfg = tiny_config(
        mnist_dir,
        **{"backend.name": "process_pool", "backend.params": "{workers: 2}", "threads": 1},
    )
    fed = build_experiment(cfg).federation
    pool = fed.backend
    work = fed.local_work(fed.global_state, 0)
    first = RoundPlan(0, [ClientInstruction(c, 100 + c) for c in range(4)])
    second = RoundPlan(1, [ClientInstruction(c, 200 + c) for c in (2, 3)])
    try:
        abandoned = pool.run(first, work, fed.clients, {})
        assert next(abandoned).client_id == 0
        abandoned.close()  # the consumer raised, say
        # Execute
        got = list(pool.run(second, work, fed.clients, {}))
        # Assert: the second round's own results, trained from its own seeds (as the
        # in-process backend trains them: the pool equals it bit for bit, see
        # test_federation.py), not replies left over from the first round.
        fresh = build_experiment(tiny_config(mnist_dir)).federation
        want = list(fresh.backend.run(second, work, fresh.clients, {}))
    finally:
        pool.close()
    assert [r.client_id for r in got] == [2, 3]
    for a, b in zip(got, want, strict=True):
        assert a.ok and b.ok
        assert all(torch.equal(a.update[k], b.update[k]) for k in a.update)


def test_a_client_that_rejects_its_own_secure_update_keeps_its_private_tensors(mnist_dir):
    # Prepare: FedPer's personal layers in a secure round whose norm bound every update
    # exceeds: each client trains, then refuses to mask its own update.
    overrides = {
        "task.params": "{batch_size: 16, generator_width: 8, discriminator_width: 8, "
        "personal: [generator.embed, discriminator.head]}",
        "transforms": "[{name: clip, params: {max_norm: 1.0}}, {name: secagg}]",
        "federation.max_update_norm": "1.0e-9",
    }
    kept = {}
    for backend in ("inprocess", "process_pool"):
        fed = build_experiment(tiny_config(mnist_dir, **overrides, **{"backend.name": backend}))
        fed = fed.federation
        # Execute
        record = fed.run_round(0)
        assert record.metrics["failures"] == len(fed.clients)  # every update refused
        kept[backend] = fed.private_states
        fed.backend.close()
    # Assert: the process pool keeps what the clients trained, as inprocess does.
    assert sorted(kept["process_pool"]) == sorted(kept["inprocess"]) != []
    for cid, state in kept["inprocess"].items():
        assert all(torch.equal(state[k], kept["process_pool"][cid][k]) for k in state)
