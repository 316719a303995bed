"""Process-pool backend: clients train in parallel worker processes on one machine.

Small generative models on CPU run fastest with one thread per process
(thread start-up dominates their small kernels), so the way to use several
cores is several processes. Each worker holds its own copy of the task and
of the client shards, sent once at start; per client it receives only the
global state and returns only the update, as a real client would. Results
are identical to the in-process backend: each client's randomness comes from
its own seed, not from which worker runs it.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.local_training import run_client
from fedgen.errors import ConfigError
from fedgen.registry import BACKENDS
from fedgen.tasks.base import Task
from fedgen.types import ClientResult, RoundPlan, StateDict

log = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}


def _init_worker(task: Task, clients: dict[int, ClientData], threads: int) -> None:
    torch.set_num_threads(threads)
    # torch sends tensors to spawned processes through shared memory, so every
    # worker's unpickled task would alias the same parameter storage and the
    # workers would train on each other's weights. A private copy per worker
    # keeps clients independent (the read-only client shards may stay shared).
    _WORKER["task"] = copy.deepcopy(task)
    _WORKER["clients"] = clients


def _run_in_worker(
    ins: Any,
    global_state: StateDict,
    transforms: Any,
    local_steps: int | None,
    local_epochs: float | None,
    round_: int,
    private: StateDict | None,
    num_clients: int,
    noise_key: bytes | None,
) -> tuple[ClientResult, StateDict]:
    work = LocalWork(
        _WORKER["task"], global_state, transforms, local_steps, local_epochs, round_, noise_key
    )
    return run_client(ins, work, _WORKER["clients"][ins.client_id], private, num_clients)


@BACKENDS.register("process_pool")
class ProcessPoolBackend(Backend):
    """Runs clients on ``workers`` processes (default: one per core).

    Args:
        workers: number of worker processes.
        threads: torch threads per worker.
        client_timeout: seconds after which a client counts as failed (None: wait).
    """

    def __init__(
        self, workers: int | None = None, threads: int = 1, client_timeout: float | None = None
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1 or threads < 1:
            raise ConfigError("backend.params.workers and threads must be >= 1")
        self.threads = threads
        self.client_timeout = client_timeout
        self._pool: ProcessPoolExecutor | None = None
        self._bound: tuple[Task, dict[int, ClientData]] | None = None

    def _ensure_pool(self, task: Task, clients: dict[int, ClientData]) -> ProcessPoolExecutor:
        if self._pool is None or self._bound is None or self._bound[0] is not task:
            self.close()
            # spawn, not fork: forking a process whose OpenMP runtime already
            # started threads can deadlock the child.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(task, clients, self.threads),
            )
            self._bound = (task, clients)
        return self._pool

    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        pool = self._ensure_pool(work.task, clients)
        futures: list[tuple[Any, Future[tuple[ClientResult, StateDict]]]] = [
            (
                ins,
                pool.submit(
                    _run_in_worker,
                    ins,
                    work.global_state,
                    list(work.transforms),
                    work.local_steps,
                    work.local_epochs,
                    work.round,
                    private_states.get(ins.client_id),
                    len(clients),
                    work.noise_key,
                ),
            )
            for ins in plan.instructions
        ]
        broken = False
        for ins, fut in futures:
            n = clients[ins.client_id].num_examples
            try:
                result, private = fut.result(timeout=self.client_timeout)
            except FutureTimeout:
                fut.cancel()
                yield ClientResult(
                    ins.client_id, n, failure=f"timed out after {self.client_timeout:g} s"
                )
                broken = True  # a stuck worker cannot be reused safely
                continue
            except BrokenProcessPool as exc:
                yield ClientResult(ins.client_id, n, failure=f"worker process died: {exc}")
                broken = True
                continue
            except Exception as exc:  # the client's own error, raised in the worker
                log.warning("client %d failed in round %d: %r", ins.client_id, plan.round, exc)
                yield ClientResult(ins.client_id, n, failure=f"{type(exc).__name__}: {exc}")
                continue
            if private:
                private_states[ins.client_id] = private
            yield result
        if broken:
            self.close()

    def close(self) -> None:
        """Stop the workers (called at the end of a run and after a broken round)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self._bound = None
