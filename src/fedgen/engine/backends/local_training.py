"""One client's round, as any backend runs it: load, train, diff, transform."""

from __future__ import annotations

import math

import torch

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import LocalWork
from fedgen.engine.backends.signing import sign_result
from fedgen.transforms.base import TransformContext
from fedgen.types import ClientInstruction, ClientResult, StateDict, state_nbytes


def local_steps_for(work: LocalWork, num_examples: int) -> int:
    """Steps for this client: fixed ``local_steps``, or ``local_epochs`` passes over its shard."""
    if work.local_steps is not None:
        return work.local_steps
    assert work.local_epochs is not None  # the config guarantees exactly one is set
    batch = work.task.params.batch_size
    return max(1, math.ceil(work.local_epochs * num_examples / batch))


def run_client(
    ins: ClientInstruction,
    work: LocalWork,
    data: ClientData,
    private_state: StateDict | None,
    num_clients: int,
) -> tuple[ClientResult, StateDict]:
    """Train one client from the global state; return its result and new private state.

    Exceptions propagate; the backend turns them into failure values.
    """
    task = work.task
    fault = work.faults.draw(ins.seed) if work.faults is not None else None
    if work.faults is not None:
        work.faults.before_training(fault)
    task.load_state(work.global_state)
    if task.privacy_engine is not None:
        task.privacy_engine.noise_key = work.noise_key
    if private_state:
        task.load_state(private_state)
    gen = torch.Generator()
    gen.manual_seed(ins.seed)
    steps = local_steps_for(work, data.num_examples)
    metrics = task.train_local(data, steps, gen, ins.config)
    if work.faults is not None:
        work.faults.after_training(fault)
    local = task.federated_state()
    update = {k: local[k] - work.global_state[k] for k in work.global_state}
    ctx = TransformContext(
        round=work.round,
        client_id=ins.client_id,
        seed=ins.seed,
        num_clients=num_clients,
        noise_key=work.noise_key,
    )
    for transform in work.transforms:
        update, t_metrics = transform.on_client(update, ctx)
        metrics.update({f"{type(transform).__name__.lower()}/{k}": v for k, v in t_metrics.items()})
    if work.faults is not None:
        update = work.faults.corrupt(fault, update)
    metrics["steps"] = float(steps)
    result = ClientResult(
        client_id=ins.client_id,
        num_examples=data.num_examples,
        update=update,
        metrics=metrics,
        bytes_up=state_nbytes(update),
    )
    sign_result(result, work.keys, work.round)
    return result, task.private_state()
