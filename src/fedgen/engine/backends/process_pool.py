"""Process-pool backend: clients train in parallel worker processes on one machine.

Small generative models on CPU run fastest with one thread per process
(thread start-up dominates their small kernels), so the way to use several
cores is several processes. A worker receives no server object: it builds its
own task, update pipeline, fault plan and client shards from the run's
``ClientSide`` (``fedgen.engine.client_side``; from a recipe, the recipe itself),
once, when it starts. Per client it receives the job message
(``local_training.job_message``: the global state and the instruction) and
sends back the reply message (``reply_message``: the update, metrics, failure,
signature), both encoded with ``fedgen.wire`` as they would cross a network; a
result's ``bytes_down`` and ``bytes_up`` are those encodings' lengths. Results
are identical to the in-process backend: each client's randomness comes from
its own seed, not from which worker runs it.

With ``vectorize: true`` an idle worker takes a share of the queued clients of a round
at once (the queue divided by the workers, at most a vectorized chunk) and trains them
as one batched computation (``fedgen.engine.backends.vectorized``), one worker per core:
the batching of the vectorized backend and the cores of the pool together. Messages are
still one job and one reply per client; what cannot vectorize trains client by client
in the worker, as the vectorized backend does.

A worker keeps no client between jobs (any worker may run any client), so the
client's own belongings, its private state and signing key, travel beside the
job as a second encoded message, its *custody*, and its new private state comes
back the same way. A real client would keep them; they are not counted as traffic.

The pool is fedgen's own rather than ``concurrent.futures``' because a
federation needs three things that executor cannot give:

- a client's timeout counts from when *that client* starts on a worker, not
  from when the server begins waiting for its result;
- a stuck worker is killed and replaced, and the round goes on;
- workers never outlive the run: each one dies with its parent, even when the
  parent is killed with SIGKILL (``parent_watch``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import Backend, LocalWork
from fedgen.engine.backends.local_training import (
    answer_job,
    job_message,
    reply_message,
    result_from_reply,
)
from fedgen.engine.backends.parent_watch import die_with_parent
from fedgen.engine.backends.signing import ClientKeys
from fedgen.engine.backends.vectorized import auto_chunk, trained_together
from fedgen.engine.client_side import ClientBuildError, ClientKit, ClientSide, LocalClientSide
from fedgen.errors import ConfigError
from fedgen.registry import BACKENDS, BUILTIN_MODULES
from fedgen.tasks.base import Task
from fedgen.transforms.secagg.codec import from_message, to_message
from fedgen.types import ClientInstruction, ClientResult, RoundPlan, StateDict
from fedgen.wire import Message, WireError, decode, encode

log = logging.getLogger(__name__)


def _start_context() -> ForkServerContext | SpawnContext:
    """How workers start: forked from a fork server where the platform has one, else
    spawned.

    Never forked from the server itself: forking a process whose OpenMP runtime already
    started threads can deadlock the child. A fork server is a clean process that
    imported torch and fedgen's components once and ran nothing; a worker forked from it is
    ready in a fraction of a second, where a spawned one imports torch afresh (about
    3 CPU-seconds: it was most of a pool's start and of replacing a stuck worker).
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # One fork server per process, started by its first worker; later pools reuse it.
        # It imports what any worker may need, whatever the recipe of the pool that starts
        # it: this module and every module that registers a built-in component.
        ctx.set_forkserver_preload([__name__, *BUILTIN_MODULES])
        return ctx
    return mp.get_context("spawn")


def _worker_main(
    conn: Connection, side: ClientSide, threads: int, parent: int, environ: dict[str, str]
) -> None:
    """A worker's life: train the clients it is sent, one at a time, until told to stop."""
    die_with_parent(parent)
    # A fork server keeps the environment it started with; a worker gets the server's
    # as it is now, as a spawned one would (e.g. FEDGEN_DATA_DIR set after the first pool).
    os.environ.clear()
    os.environ.update(environ)
    try:
        kit = side.open()
    except Exception as exc:  # a recipe this worker cannot build: say why, then stop
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    # After building: a recipe's own thread setting must not override the worker's.
    torch.set_num_threads(threads)
    task = kit.task
    if isinstance(side, LocalClientSide):
        # torch sends tensors to worker processes through shared memory, so every
        # worker's unpickled task would alias the same parameter storage and the
        # workers would train on each other's weights. A private copy per worker
        # keeps clients independent (the read-only client shards may stay shared).
        task = copy.deepcopy(task)
    # Clients are sent only to ready workers, so start-up never eats a client's timeout.
    conn.send(("ready",))
    while True:
        try:
            said = conn.recv()
            if said is None:
                return
            # ("job",): one client; ("jobs", n): n clients to train together.
            count = said[1] if said[0] == "jobs" else 1
            pairs = [(conn.recv_bytes(), conn.recv_bytes()) for _ in range(count)]
        except (EOFError, OSError):
            return  # the server closed the pipe
        trainer = task if count == 1 else trained_together(task, kit, pairs)
        for job, custody in pairs:
            reply, kept = _train(job, custody, trainer, kit)
            try:
                conn.send_bytes(reply)
                conn.send_bytes(kept)
            except (BrokenPipeError, OSError):
                return


def _train(job: bytes, custody: bytes, task: Task, kit: ClientKit) -> tuple[bytes, bytes]:
    """One client's round in a worker: its encoded reply and its encoded custody."""
    try:
        held = decode(custody)
        keys = None
        if held.meta:
            keys = ClientKeys(held.meta["run_id"], {held.meta["client_id"]: held.meta["key"]})
    except (WireError, KeyError, TypeError) as exc:
        failed = ClientResult(-1, 0, failure=f"malformed custody: {type(exc).__name__}: {exc}")
        return encode(reply_message(failed)), encode(Message())
    kept: dict[int, dict[str, Any]] = {}
    reply, private = answer_job(job, task, kit, held.arrays or None, keys, held=kept)
    # What the client keeps for a secure round comes back beside its private state.
    meta = {} if not kept else {"held": encode(to_message(kept.popitem()[1])).hex()}
    return reply, encode(Message(private, meta))


@dataclass
class _Pending:
    """One client's job, queued or running: what to send and where its result goes."""

    key: int
    ins: ClientInstruction
    work: LocalWork
    num_clients: int
    #: The client's example count, for a failure value (the server knows it).
    examples: int
    #: Where its new private state is kept (the run's, by client id).
    private_states: dict[int, StateDict]


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    #: False until the worker has started up and said so.
    ready: bool = False
    #: The jobs it is training (one, or a vectorized batch) and when they started.
    jobs: list[_Pending] = field(default_factory=list)
    started: float = 0.0
    #: Bytes of each of those clients' job messages.
    sent: list[int] = field(default_factory=list)


@BACKENDS.register("process_pool")
class ProcessPoolBackend(Backend):
    """Runs clients on ``workers`` processes (default: one per core).

    Args:
        workers: number of worker processes.
        threads: torch threads per worker.
        client_timeout: seconds a client may run, from its own start (None: wait).
        vectorize: each worker trains its share of a round's clients as one batched
            computation (module docstring).
    """

    class Params(BaseModel):
        """The recipe's ``backend.params`` of ``process_pool``."""

        model_config = ConfigDict(extra="forbid")

        #: Worker processes (default: one per core).
        workers: int | None = Field(None, ge=1)
        #: torch threads per worker.
        threads: int = Field(1, ge=1)
        #: Seconds a client may train, counted from when it starts on a worker; past it
        #: the client counts as failed and its worker is killed and replaced. None: wait.
        client_timeout: float | None = Field(None, gt=0)
        #: Each worker trains its share of a round's clients together (vmap).
        vectorize: bool = False

    def __init__(
        self,
        workers: int | None = None,
        threads: int = 1,
        client_timeout: float | None = None,
        vectorize: bool = False,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1 or threads < 1:
            raise ConfigError("backend.params.workers and threads must be >= 1")
        if client_timeout is not None and client_timeout <= 0:
            raise ConfigError("backend.params.client_timeout must be > 0 seconds (or null)")
        if vectorize and client_timeout is not None:
            raise ConfigError(
                "backend.params.vectorize trains a worker's clients together, so one "
                "client's time cannot be told apart: unset client_timeout or vectorize"
            )
        self.vectorize = vectorize
        self.threads = threads
        self.client_timeout = client_timeout
        self._pool: list[_Worker] = []
        #: Workers that died starting up since one last started well.
        self._startup_deaths = 0
        #: The client side the workers were built from, and its fingerprint.
        self._bound: tuple[ClientSide, tuple[object, ...]] | None = None
        #: Jobs not yet started; results arrived and not yet read (by key, and in order).
        self._todo: list[_Pending] = []
        self._done: dict[int, ClientResult] = {}
        self._arrived: list[int] = []
        self._next_key = 0
        self._ctx = _start_context()

    # -- workers -------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        assert self._bound is not None
        ours, theirs = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(theirs, self._bound[0], self.threads, os.getpid(), dict(os.environ)),
            name="fedgen-client-worker",
            # A daemon is also terminated when this process exits normally.
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def _ensure_pool(self, side: ClientSide) -> None:
        fingerprint = side.fingerprint()
        if self._bound is None or self._bound[1] != fingerprint:
            self.close()
            self._bound = (side, fingerprint)
        while len(self._pool) < self.workers:
            self._pool.append(self._start_worker())

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (stuck or dead) and start a fresh one in its place."""
        _stop(worker, kill=True)
        self._pool[self._pool.index(worker)] = self._start_worker()

    def start(self, side: ClientSide) -> None:
        """Start the workers for ``side`` and wait until each has built its clients.

        A round starts them itself; this lets a caller (a benchmark, a timing test)
        keep start-up out of what it measures.
        """
        self._ensure_pool(side)
        while starting := [w for w in self._pool if not w.ready]:
            ready = wait([w.conn for w in starting])
            for worker in starting:
                if worker.conn in ready:
                    self._hear_ready(worker)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._pool if w.process.pid is not None]

    # -- a round -------------------------------------------------------------

    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        # A round abandoned before all its results were read (the consumer raised) leaves
        # workers busy with its clients; their replies belong to no current round.
        self._abandon()
        keys = [self.submit(ins, work, clients, private_states) for ins in plan.instructions]
        for key in keys:
            while key not in self._done:
                self._pump()
            self._arrived.remove(key)
            yield self._done.pop(key)

    # -- jobs in flight (also what an asynchronous schedule uses) -------------

    supports_async = True

    def submit(
        self,
        ins: ClientInstruction,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> int:
        """Queue one client's job; it starts on the next idle worker. Returns its key."""
        side = work.client_side
        if side is None:
            raise ConfigError(
                "backend process_pool needs the run's client side (LocalWork.client_side): "
                "its workers build their clients from it"
            )
        self._ensure_pool(side)
        self._next_key += 1
        n = clients[ins.client_id].num_examples
        self._todo.append(_Pending(self._next_key, ins, work, len(clients), n, private_states))
        return self._next_key

    def arrivals(self, count: int) -> list[ClientResult]:
        """The next ``count`` results to arrive (fewer if fewer jobs are left), in order."""
        while len(self._arrived) < count and (self._todo or self._busy()):
            self._pump()
        keys, self._arrived = self._arrived[:count], self._arrived[count:]
        return [self._done.pop(k) for k in keys]

    def _busy(self) -> list[_Worker]:
        return [w for w in self._pool if w.jobs]

    def _abandon(self) -> None:
        """Forget every job not yet read: queued ones, running ones (their workers are
        replaced) and results that arrived unread."""
        for worker in self._busy():
            self._replace(worker)
        self._todo.clear()
        self._done.clear()
        self._arrived.clear()

    def _finish(self, job: _Pending, result: ClientResult) -> None:
        self._done[job.key] = result
        self._arrived.append(job.key)

    def _fail(self, job: _Pending, reason: str, down: int = 0, up: int = 0) -> None:
        ins = job.ins
        self._finish(
            job,
            ClientResult(ins.client_id, job.examples, failure=reason, bytes_up=up, bytes_down=down),
        )

    def _take(self) -> list[_Pending]:
        """The next jobs for an idle worker: one, or under ``vectorize`` its share of the
        queued jobs of the same round (the queue divided by the workers, at most a chunk)."""
        first = self._todo.pop(0)
        if not self.vectorize:
            return [first]
        share = -(-(len(self._todo) + 1) // len(self._pool))
        limit = min(share, auto_chunk(first.work.task))
        taken = [first]
        while len(taken) < limit and self._todo and self._todo[0].work is first.work:
            taken.append(self._todo.pop(0))
        return taken

    def _send(self, worker: _Worker, jobs: list[_Pending]) -> None:
        """Encode ``jobs`` and start them on ``worker`` (those that cannot go fail)."""
        messages: list[tuple[_Pending, bytes, bytes]] = []
        for queued in jobs:
            try:
                data = encode(job_message(queued.ins, queued.work, queued.num_clients))
                custody = _custody(queued.ins.client_id, queued.private_states, queued.work.keys)
            except WireError as exc:
                self._fail(queued, f"the client's job cannot be encoded: {exc}")
                continue
            messages.append((queued, data, custody))
        if not messages:
            return
        try:
            worker.conn.send(("job",) if len(messages) == 1 else ("jobs", len(messages)))
            for _, data, custody in messages:
                worker.conn.send_bytes(data)
                worker.conn.send_bytes(custody)
        except (BrokenPipeError, OSError) as exc:
            for queued, _, _ in messages:
                self._fail(queued, f"worker process died before the client started: {exc}")
            self._replace(worker)
            return
        worker.jobs = [queued for queued, _, _ in messages]
        worker.sent = [len(data) for _, data, _ in messages]
        worker.started = time.monotonic()

    def _pump(self) -> None:
        """Start queued jobs on idle workers, then wait for one event and handle it."""
        for worker in self._pool:
            if worker.ready and not worker.jobs and self._todo:
                self._send(worker, self._take())
        busy = self._busy()
        starting = [w for w in self._pool if not w.ready]
        if not (busy or starting):
            return
        ready = wait([w.conn for w in busy + starting], timeout=self._wait_timeout(busy))
        for worker in starting:
            if worker.conn in ready:
                self._hear_ready(worker)
        now = time.monotonic()
        for worker in busy:
            if worker.conn in ready:
                self._hear_replies(worker)
            elif self.client_timeout is not None and now - worker.started > self.client_timeout:
                for job, sent in zip(worker.jobs, worker.sent, strict=True):
                    self._fail(job, f"timed out after {self.client_timeout:g} s", sent)
                worker.jobs, worker.sent = [], []
                # A worker stuck in a client cannot be trusted with the next one.
                self._replace(worker)

    def _hear_replies(self, worker: _Worker) -> None:
        """Read the replies of every job ``worker`` is training (it sends them together)."""
        jobs, sent = worker.jobs, worker.sent
        worker.jobs, worker.sent = [], []
        for i, (job, down) in enumerate(zip(jobs, sent, strict=True)):
            ins = job.ins
            try:
                reply, kept = worker.conn.recv_bytes(), worker.conn.recv_bytes()
            except (EOFError, OSError):
                code = worker.process.exitcode
                worker.process.join(timeout=1)
                code = worker.process.exitcode if code is None else code
                for lost, lost_down in zip(jobs[i:], sent[i:], strict=True):
                    self._fail(lost, f"worker process died (exit code {code})", lost_down)
                self._replace(worker)
                return
            try:
                result = result_from_reply(decode(reply))
                returned = decode(kept)
                private = returned.arrays
                if "held" in returned.meta:
                    self.held[ins.client_id] = from_message(
                        decode(bytes.fromhex(returned.meta["held"]))
                    )
            except (WireError, ValueError, TypeError) as exc:
                self._fail(job, f"malformed reply: {exc}", down, len(reply))
                continue
            # Kept whatever the result: a client that rejected its own update (a secure
            # round's check) still trained its private tensors, as inprocess and a
            # deployed client keep them.
            if private:
                job.private_states[ins.client_id] = private
            if result.failure is not None:
                log.warning(
                    "client %d failed in round %d: %s",
                    ins.client_id,
                    job.work.round,
                    result.failure,
                )
                self._fail(job, result.failure, down, len(reply))
                continue
            result.bytes_down, result.bytes_up = down, len(reply)
            self._finish(job, result)

    def _hear_ready(self, worker: _Worker) -> None:
        """Read a starting worker's first message; replace it if it died starting up."""
        try:
            said = worker.conn.recv()
        except (EOFError, OSError):
            log.warning("a worker died while starting (exit code %s)", worker.process.exitcode)
            self._startup_deaths += 1
            if self._startup_deaths > 3 * self.workers:
                # Not a bad worker but a bad start (e.g. a child that cannot
                # import the parent's main module): replacing it again would loop forever.
                self.close()
                raise ClientBuildError(
                    f"{self._startup_deaths} worker processes died while starting; run "
                    "with backend inprocess to see the error in this process"
                ) from None
            self._replace(worker)
            return
        if said[0] == "failed":
            # Every worker builds from the same description: a fresh one would fail too.
            self.close()
            raise ClientBuildError(f"a worker could not build its clients: {said[1]}")
        worker.ready = True
        self._startup_deaths = 0

    def _wait_timeout(self, busy: list[_Worker]) -> float | None:
        if self.client_timeout is None or not busy:
            return None
        now = time.monotonic()
        return max(0.0, min(w.started + self.client_timeout - now for w in busy)) + 0.01

    def close(self) -> None:
        """Stop the workers (called when the run loop stops)."""
        for worker in self._pool:
            _stop(worker, kill=bool(worker.jobs))
        self._pool = []
        self._bound = None
        self._todo.clear()
        self._done.clear()
        self._arrived.clear()


def _custody(
    client_id: int, private_states: dict[int, StateDict], keys: ClientKeys | None
) -> bytes:
    """The client's own belongings a worker needs to run it: private state, signing key."""
    # Only this client's signing key travels to the worker that runs it.
    # The client id rides along so the worker need not decode the job a second time.
    meta = (
        {}
        if keys is None
        else {"run_id": keys.run_id, "client_id": client_id, "key": keys.private[client_id]}
    )
    return encode(Message(private_states.get(client_id) or {}, meta))


def _stop(worker: _Worker, kill: bool) -> None:
    """End one worker: politely when idle, with SIGKILL when it is busy or does not listen."""
    if not kill:
        with contextlib.suppress(BrokenPipeError, OSError):
            worker.conn.send(None)
        worker.process.join(timeout=2)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join(timeout=5)
    worker.conn.close()
