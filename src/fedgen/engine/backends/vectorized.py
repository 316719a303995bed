"""Vectorized in-process backend: a round's clients train as one batched computation.

Following the model-ensembling recipe of ``torch.func`` (``stack_module_state``,
``functional_call``, ``vmap``, ``grad``), the tensors of a group of clients are
stacked along a new leading dimension, with their optimizer states (Adam moments,
SGD momentum) stacked alike, and the task's functional step
(``Task.functional_training``, ``fedgen.tasks.functional``) is mapped over them with
``vmap``: one call trains the whole group, so small per-client batches become one
large batch with per-client weights. Each client still draws its batches and noise
from its own generator (seeded by its instruction), exactly as ``train_local`` does,
so the model equals the sequential backend's to float tolerance (the oracle test).
A task whose clients keep their optimizer between rounds (the table tasks' Adam
moments and step counts, private tensors) resumes each client's stacked state from
them and hands the new state back as the client's private tensors
(``FunctionalTraining.kept`` / ``resume``).

Clients with fewer local steps (``local_epochs`` over unequal shards) are grouped,
not masked: a group is ordered by steps, longest first, and step ``s`` maps only
over the clients that still train, the first rows of the stack.

Everything after training (the update as ``local - global``, the update
transforms, signing, byte counts, the new private state, failures as values) is the
sequential path's own: each trained client goes through
``local_training.run_client`` with a task that hands back its vectorized result
instead of training again, so results are the other backends' to the byte.

What cannot vectorize runs through the sequential path, and the log says why:
a task without a functional step, DP-SGD (Opacus clips per sample inside
``train_local``), fault injection (it wraps ``train_local``), a compressed downlink
(each client starts from its own copy of the model), a client config key
the functional step does not honour, or an error in the batched computation. With
``fallback: false`` the first of these (but a group's own error) is a ``ConfigError``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.func import vmap

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import LocalWork
from fedgen.engine.backends.inprocess import InProcessBackend
from fedgen.engine.backends.local_training import local_steps_for, work_from_job
from fedgen.engine.backends.stacking import (
    Nest,
    pad_and_stack,
    rows,
    stack,
    write_rows,
)
from fedgen.engine.client_side import ClientKit
from fedgen.errors import ConfigError
from fedgen.modality import TensorKind
from fedgen.registry import BACKENDS
from fedgen.tasks.base import Task
from fedgen.tasks.functional import FunctionalTraining, ModuleTensors
from fedgen.types import ClientInstruction, ClientResult, RoundPlan, StateDict
from fedgen.wire import decode

log = logging.getLogger(__name__)

#: A client's vectorized outcome: its trained tensors, the optimizer state it keeps
#: (private tensors), and its mean losses; or its error.
Outcome = tuple[StateDict, StateDict, dict[str, float]] | Exception


def why_not_vectorized(work: LocalWork) -> str | None:
    """Why this round's work cannot train vectorized, or None when it can."""
    task = work.task
    if task.privacy_engine is not None:
        return "DP-SGD clips each example's gradient inside train_local (Opacus)"
    if work.faults is not None:
        return "fault injection wraps train_local"
    if work.downlink is not None:
        # Each client starts from its own copy of the model, rebuilt from compressed
        # deltas inside run_client; the stacked start would be the server's model.
        return "under a compressed downlink each client starts from its own copy of the model"
    if task.params.compute_dtype != "float32":
        # torch.autocast does not reach every op vmap batches (a vmap-ed Linear computes
        # in float32 under it), so a group would not compute in the dtype asked for.
        return (
            f"task.params.compute_dtype {task.params.compute_dtype} (autocast) does not "
            "reach into vmap's batched operations"
        )
    if task.functional_training() is None:
        return task.why_no_functional_training()
    return None


@dataclass
class _Group:
    """Consecutive instructions of a plan that train together (or one that cannot)."""

    instructions: list[ClientInstruction]
    #: Why these clients train sequentially, or None: vectorized.
    sequential: str | None


@BACKENDS.register("vectorized")
class VectorizedBackend(InProcessBackend):
    """Trains up to ``chunk_size`` clients at a time as one ``vmap``-ed computation.

    A kind of in-process backend: what its clients hold between a round's messages (a
    secure-aggregation stage's halves) is the in-process store, and what does not
    vectorize runs through ``InProcessBackend.run``.

    Args:
        chunk_size: clients per batched computation; None: as many as keep a chunk's
            stacked tensors and optimizer state (about three copies of the model per
            client) within ``chunk_megabytes``, between 1 and 256. Memory grows with it;
            past the CPU's cache, so does the time of the elementwise optimizer steps,
            while larger batches help small models: measured here, 7 clients of the
            default cGAN (0.35M parameters) and 100 of a 23k-parameter one.
        chunk_megabytes: the budget of the automatic chunk size.
        fallback: when a round cannot vectorize, train it sequentially and log why
            (True), or raise ``ConfigError`` saying why (False).
    """

    class Params(BaseModel):
        """The recipe's ``backend.params`` of ``vectorized``."""

        model_config = ConfigDict(extra="forbid")

        #: Clients per batched computation (None: from ``chunk_megabytes``).
        chunk_size: int | None = Field(None, ge=1)
        #: Memory budget of a chunk's stacked tensors and optimizer state, in MB.
        chunk_megabytes: float = Field(32.0, gt=0, allow_inf_nan=False)
        #: Train sequentially (and log why) what cannot vectorize; false: raise instead.
        fallback: bool = True

    def __init__(
        self, chunk_size: int | None = None, chunk_megabytes: float = 32.0, fallback: bool = True
    ) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError("backend.params.chunk_size must be >= 1 (or null: automatic)")
        if not chunk_megabytes > 0:
            raise ConfigError("backend.params.chunk_megabytes must be > 0")
        self.chunk_size = chunk_size
        self.chunk_megabytes = chunk_megabytes
        self.fallback = fallback
        #: Reasons already logged (each once per run, not once per round).
        self._said: set[str] = set()

    def run(
        self,
        plan: RoundPlan,
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> Iterator[ClientResult]:
        functional = work.task.functional_training()
        if functional is not None and functional.slower_on_cpu:
            self._say_once(functional.slower_on_cpu)
        for group in self._groups(plan, work):
            sub = RoundPlan(plan.round, group.instructions)
            if group.sequential is not None:
                self._refuse_or_say(group.sequential)
                yield from super().run(sub, work, clients, private_states)
                continue
            outcomes = self._train_group(group.instructions, work, clients, private_states)
            replay = replace(work, task=_replaying(work.task, outcomes))
            yield from super().run(sub, replay, clients, private_states)

    def _refuse_or_say(self, reason: str) -> None:
        if not self.fallback:
            raise ConfigError(
                f"backend vectorized cannot vectorize this round: {reason}; set "
                "backend.params.fallback=true to train such clients sequentially, or use "
                "backend inprocess/process_pool"
            )
        self._say_once(f"training sequentially: {reason}")

    def _say_once(self, message: str) -> None:
        """Log ``message`` the first time this run says it (not once per round)."""
        if message not in self._said:
            self._said.add(message)
            log.warning("backend vectorized: %s", message)

    def _groups(self, plan: RoundPlan, work: LocalWork) -> list[_Group]:
        """Consecutive instructions with the same config, cut into chunks; plan order kept."""
        reason = why_not_vectorized(work)
        if reason is not None:
            return [_Group(list(plan.instructions), reason)]
        functional = work.task.functional_training()
        assert functional is not None  # why_not_vectorized said it has one
        chunk = self.chunk_size or auto_chunk(work.task, self.chunk_megabytes)
        groups: list[_Group] = []
        key: object = None
        for ins in plan.instructions:
            unknown = sorted(set(ins.config) - functional.config_keys)
            if unknown:
                reason = f"the functional step does not honour client config keys {unknown}"
                groups.append(_Group([ins], reason))
                key = None
                continue
            this = json.dumps(ins.config, sort_keys=True, default=repr)
            last = groups[-1] if groups else None
            if (
                last is not None
                and last.sequential is None
                and this == key
                and len(last.instructions) < chunk
            ):
                last.instructions.append(ins)
            else:
                groups.append(_Group([ins], None))
            key = this
        return groups

    def _train_group(
        self,
        instructions: list[ClientInstruction],
        work: LocalWork,
        clients: dict[int, ClientData],
        private_states: dict[int, StateDict],
    ) -> dict[int, Outcome]:
        """Train one group of clients together; each client's trained tensors or error."""
        task = work.task
        outcomes: dict[int, Outcome] = {}
        members = []
        for ins in instructions:
            data = clients[ins.client_id]
            if data.num_examples == 0:  # its batches would raise; let that be its failure
                outcomes[ins.client_id] = ValueError(
                    f"client {ins.client_id} holds no examples; use a partitioner "
                    "with min_size >= 1 or fewer clients"
                )
            else:
                members.append(ins)
        if not members:
            return outcomes
        try:
            outcomes.update(_train_together(task, members, work, clients, private_states))
        except Exception as exc:  # the batched computation failed: each client on its own
            reason = f"the batched computation failed ({type(exc).__name__}: {exc})"
            self._refuse_or_say(reason)
            outcomes.update({ins.client_id: _Sequential() for ins in members})
        return outcomes


def auto_chunk(task: Task, megabytes: float = 32.0) -> int:
    """Clients whose stacked tensors and Adam moments (3 model copies) fit ``megabytes``."""
    trainable, _ = _split_frozen(task)
    per_client = 3 * sum(
        value.numel() * value.element_size()
        for tensors in trainable.values()
        for value in tensors.values()
    )
    return max(1, min(256, int(megabytes * 2**20 // max(per_client, 1))))


class _Sequential(Exception):
    """Marks a client whose vectorized training failed: it trains with ``train_local``."""


def trained_together(task: Task, kit: ClientKit, jobs: list[tuple[bytes, bytes]]) -> Task:
    """``task`` as a process-pool worker's batch of encoded ``(job, custody)`` pairs sees it.

    The clients whose jobs can vectorize (``why_not_vectorized``; the first such job's
    config) train together here, from their jobs' global state and their custody's
    private state; the returned task hands each one its result when the worker then
    answers its job (``local_training.answer_job``), as ``VectorizedBackend.run``
    replays them through ``run_client``. The others (and all, should the batched
    computation fail) train with ``task.train_local`` when their job is answered. A job
    that cannot be read is left for its answer to report.
    """
    members: list[ClientInstruction] = []
    private_states: dict[int, StateDict] = {}
    clients: dict[int, ClientData] = {}
    first: LocalWork | None = None
    config: dict[str, Any] = {}
    for job, custody in jobs:
        try:
            ins, work, _ = work_from_job(
                decode(job), task, kit.transforms, kit.faults, None, kit.initial_state
            )
            data = kit.data(ins.client_id)
            private = decode(custody).arrays
        except Exception:  # answer_job reports a malformed job as the client's failure
            continue
        if first is None:
            if why_not_vectorized(work) is not None:
                continue
            functional = task.functional_training()
            assert functional is not None
            if set(ins.config) - functional.config_keys:
                continue
            first, config = work, ins.config
        elif ins.config != config:
            continue
        if data.num_examples == 0:  # its batches would raise: train_local says so
            continue
        members.append(ins)
        clients[ins.client_id] = data
        if private:
            private_states[ins.client_id] = private
    outcomes: dict[int, Outcome] = {}
    if first is not None and members:
        try:
            outcomes = _train_together(task, members, first, clients, private_states)
        except Exception as exc:  # the batched computation failed: each client on its own
            log.warning("process pool: batched computation failed (%r); sequential", exc)
    return _replaying(task, outcomes)


def _train_together(
    task: Task,
    members: list[ClientInstruction],
    work: LocalWork,
    clients: dict[int, ClientData],
    private_states: dict[int, StateDict],
) -> dict[int, Outcome]:
    """The vectorized training of ``members`` (same config): tensors and mean losses."""
    functional = task.functional_training()
    assert functional is not None
    config = dict(members[0].config)
    batch_size = int(task.params.batch_size)
    # Longest first: the clients still training at any step are the first rows.
    order = sorted(
        members, key=lambda ins: -local_steps_for(work, clients[ins.client_id].num_examples)
    )
    steps = [local_steps_for(work, clients[ins.client_id].num_examples) for ins in order]
    generators, batches = [], []
    for ins in order:
        gen = torch.Generator()
        gen.manual_seed(ins.seed)
        generators.append(gen)
        batches.append(functional.source(clients[ins.client_id], batch_size, gen))
    current, frozen = _split_frozen(task)  # read once for the group, not once per client
    # Clients without private state of their own all start from the same tensors: built
    # once, not once per client.
    shared = _start_tensors(task, work.global_state, None, current)
    starts = [
        shared
        if not private_states.get(ins.client_id)
        else _start_tensors(task, work.global_state, private_states[ins.client_id], current)
        for ins in order
    ]
    tensors: Nest = stack(starts)
    state: Nest = vmap(partial(functional.init_state, config=config))(tensors)
    fresh = functional.kept(state)
    if fresh:  # each client's optimizer resumes where its last round left it
        own = [private_states.get(ins.client_id) or {} for ins in order]
        kept = {}
        for key, value in fresh.items():
            fresh_rows = value.unbind(0)
            kept[key] = torch.stack([own[i].get(key, fresh_rows[i]) for i in range(len(order))])
        state = functional.resume(state, kept)
    loss_sums: dict[str, torch.Tensor] = {}
    for s in range(steps[0]):
        count = sum(1 for n in steps if n > s)
        draws = [functional.draw(batches[i], generators[i]) for i in range(count)]
        inputs, masks = pad_and_stack(draws)
        head, head_state = rows(tensors, count), rows(state, count)
        # A task's own batched arithmetic when it has one (cheaper than vmap for small
        # networks); a frozen base is shared, not stacked, which only vmap handles.
        batched = (
            None
            if frozen
            else functional.batched_step(head, head_state, inputs, masks, s + 1, config)
        )
        if batched is None:
            one_step = partial(_client_step, functional, frozen, s + 1, config)
            batched = vmap(one_step)(head, head_state, inputs, masks)
        new_tensors, new_state, losses = batched
        tensors = write_rows(tensors, new_tensors)
        state = write_rows(state, new_state)
        for name, value in losses.items():
            total = loss_sums.setdefault(name, torch.zeros(len(order), dtype=torch.float64))
            total[:count] += value.detach().to(torch.float64)
    # Each stacked tensor split into its clients' rows by one call (views).
    names = [f"{m}.{k}" for m, module in tensors.items() for k in module]
    split = [value.unbind(0) for module in tensors.values() for value in module.values()]
    kept_rows = {k: v.unbind(0) for k, v in functional.kept(state).items()}
    counts = torch.tensor(steps).clamp(min=1)
    means = {name: (total / counts).tolist() for name, total in loss_sums.items()}
    outcomes: dict[int, Outcome] = {}
    for i, ins in enumerate(order):
        flat = dict(zip(names, [client_rows[i] for client_rows in split], strict=True))
        metrics = {name: mean[i] for name, mean in means.items()}
        outcomes[ins.client_id] = (flat, {k: v[i] for k, v in kept_rows.items()}, metrics)
    return outcomes


def _client_step(
    functional: FunctionalTraining,
    frozen: ModuleTensors,
    step: int,
    config: dict[str, Any],
    tensors: ModuleTensors,
    state: Nest,
    inputs: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
) -> tuple[ModuleTensors, Nest, dict[str, torch.Tensor]]:
    """One client's step under ``vmap``; a frozen base is shared, never stacked."""
    full = {m: {**frozen.get(m, {}), **own} for m, own in tensors.items()}
    new, new_state, losses = functional.step(full, state, inputs, masks, step, config)
    trained = {m: {k: new[m][k] for k in own} for m, own in tensors.items()}
    return trained, new_state, losses


def _split_frozen(task: Task) -> tuple[ModuleTensors, ModuleTensors]:
    """Per module, the tensors a client trains (federated or private), and the frozen base."""
    trainable: ModuleTensors = {}
    frozen: ModuleTensors = {}
    for name, module in task.modules.items():
        for key, value in module.state_dict().items():
            kind = task.tensor_kind(name, key)
            (frozen if kind == TensorKind.FROZEN else trainable).setdefault(name, {})[key] = value
    return trainable, frozen


def _start_tensors(
    task: Task,
    global_state: StateDict,
    private: StateDict | None,
    current: dict[str, StateDict],
) -> ModuleTensors:
    """A client's tensors before training, as ``run_client`` loads them: the global state,
    then its private state (or the task's initial private tensors) on top, else the
    task's ``current`` tensors (per trained module, its trainable keys' state dict)."""
    own = {k: v for k, v in (private or {}).items() if _is_task_key(k, current)}
    loaded = {**global_state, **(own or task.initial_private_state())}
    start: ModuleTensors = {}
    for name, tensors in current.items():
        start[name] = {k: loaded.get(f"{name}.{k}", v).detach() for k, v in tensors.items()}
    return start


def _is_task_key(full_key: str, trainable: Mapping[str, Container[str]]) -> bool:
    """Whether ``<module>.<key>`` is a tensor of the task (a transform's own is not)."""
    name, _, key = full_key.partition(".")
    return key in trainable.get(name, ())


def _replaying(task: Task, outcomes: dict[int, Outcome]) -> Task:
    """``task`` as ``run_client`` sees it, handing back each client's vectorized result.

    A shallow copy of the task (same modules) whose ``train_local`` takes the client's
    result instead of training and whose ``federated_state`` and ``private_state`` are
    that result's tensors; ``run_client`` then does the rest as for any client. The
    loads that ``run_client`` asks for before training (global state, private state)
    are kept, not done: a vectorized client needs none of them, and the task's
    ``load_state`` walks every submodule (most of a tiny model's time per client). A
    client whose batched computation failed gets them, then the real ``train_local``;
    one whose own error was recorded raises it.
    """
    replay = copy.copy(task)
    kinds = {
        f"{name}.{key}": task.tensor_kind(name, key)
        for name, module in task.modules.items()
        for key in module.state_dict()
    }
    pending: list[StateDict] = []
    result: dict[TensorKind, StateDict] = {}

    def load_state(state: StateDict) -> None:
        pending.append(state)

    def train_local(
        data: ClientData, steps: int, generator: torch.Generator, config: dict[str, Any]
    ) -> dict[str, float]:
        loads = list(pending)
        pending.clear()
        result.clear()
        # A client with no vectorized outcome (a pool worker's batch) trains itself.
        outcome = outcomes.pop(data.client_id, _Sequential())
        if isinstance(outcome, _Sequential):
            for state in loads:
                task.load_state(state)
            metrics = task.train_local(data, steps, generator, config)
            result[TensorKind.FEDERATED] = task.federated_state()
            result[TensorKind.PRIVATE] = task.private_state()
            return metrics
        if isinstance(outcome, Exception):
            raise outcome
        tensors, kept, metrics = outcome
        # Views into the group's stack: private tensors outlive it, so they are copied.
        result[TensorKind.FEDERATED] = {
            k: v for k, v in tensors.items() if kinds[k] == TensorKind.FEDERATED
        }
        result[TensorKind.PRIVATE] = {
            k: v.clone() for k, v in tensors.items() if kinds[k] == TensorKind.PRIVATE
        } | {k: v.clone() for k, v in kept.items()}
        return dict(metrics)

    replay.load_state = load_state  # type: ignore[method-assign]
    replay.train_local = train_local  # type: ignore[method-assign]
    replay.federated_state = lambda: dict(result[TensorKind.FEDERATED])  # type: ignore[method-assign]
    replay.private_state = lambda: dict(result[TensorKind.PRIVATE])  # type: ignore[method-assign]
    return replay
