"""One client's round, as any backend runs it: load, train, diff, transform.

Also the two messages of that round (``fedgen.wire``): the job the server sends
(``job_message``) and the reply the client sends back (``reply_message``). A backend
that runs clients in another process encodes them; one that runs them here skips the
encoding but reports the same byte counts, since ``run_client`` sets a result's
``bytes_down`` and ``bytes_up`` to the encoded lengths of these two messages.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from fedgen.data.client_data import ClientData
from fedgen.engine.backends.base import LocalWork
from fedgen.engine.backends.secagg_client import (
    compact_reference,
    hold_update,
    lone_noise,
)
from fedgen.engine.backends.signing import ClientKeys, sign_result
from fedgen.engine.client_side import ClientKit
from fedgen.engine.ditto import ditto_settings, train_personal
from fedgen.engine.downlink import ReceivedDownlink, receive
from fedgen.engine.faults import FaultPlan
from fedgen.engine.proximal import anchored_parameters, proximal_mu, proximal_term
from fedgen.engine.validation import check_update
from fedgen.errors import ClientUpdateError
from fedgen.ledger import canonical_json, state_digest
from fedgen.tasks.base import Task
from fedgen.transforms.base import TransformContext, UpdateTransform, split_transform_private
from fedgen.transforms.codec import decode_arrival
from fedgen.transforms.secagg import SecureAggregation
from fedgen.types import ClientInstruction, ClientResult, StateDict
from fedgen.wire import Message, WireError, decode, encode

#: A job's ``noise_key`` when the client draws its DP noise with a key it made itself
#: (a deployed client: ``fedgen.deploy.client_app``), which the server never holds.
OWN_NOISE_KEY = "own"

#: Prefixes of a reply's array names: the update's tensors and the extras.
UPDATE, EXTRAS = "update/", "extras/"
REPLY_META = frozenset(
    {
        "client_id",
        "num_examples",
        "has_update",
        "held",
        "metrics",
        "failure",
        "signature",
        "private_keys",
    }
)


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
    held: dict[int, dict[str, Any]] | None = None,
) -> tuple[ClientResult, StateDict]:
    """Train one client from the global state; return its result and new private state.

    Under a secure-aggregation stage (``work.secure``) the client checks its update,
    keeps it in ``held`` (its own store) and replies without it (``held=True``).
    Exceptions propagate; the backend turns them into failure values.
    """
    task = work.task
    # What a wire carries, whether or not this backend encodes it: a job that cannot
    # be encoded (a tuple in the config) fails the client before it trains.
    bytes_down = job_message(ins, work, num_clients).nbytes
    fault = work.faults.draw(ins.seed) if work.faults is not None else None
    if work.faults is not None:
        work.faults.before_training(fault)
    # The transforms' own private tensors (error-feedback residuals, the client's copy of
    # the last model it received) stay with the client beside the task's, but the task
    # never loads them.
    private_state, carried = split_transform_private(private_state)
    if work.downlink is not None:
        # Compressed downlink: the client's copy of the model, brought up to this round's
        # from the deltas in its job, is what it starts from (checked by its digest).
        start = receive(
            work.downlink, ins.client_id, carried, task.federated_state(), work.initial_state
        )
        work = replace(work, global_state=start, downlink=None)
    task.load_state(work.global_state)
    # The client's own key (DP-SGD's noise and batches): the run's stays with the server.
    own_key = work.own_noise_key(ins.client_id)
    if own_key is not None and work.noise_binding is not None:
        own_key = hmac.new(own_key, f"job/{work.noise_binding}".encode(), hashlib.sha256).digest()
    if task.privacy_engine is not None:
        task.privacy_engine.noise_key = own_key
    # A client without private state yet starts from the task's initial private tensors,
    # never from those the previous client left in this reused task instance.
    task.load_state(private_state or task.initial_private_state())
    gen = torch.Generator()
    gen.manual_seed(ins.seed)
    steps = local_steps_for(work, data.num_examples)
    # FedProx: the proximal term mu/2 ||w - w_global||^2 on every optimizer step
    # of the task's training; mu 0 (every other strategy) installs nothing.
    mu = proximal_mu(ins)
    anchored = anchored_parameters(task.modules, work.global_state) if mu else []
    with proximal_term(anchored, mu), task.autocast():
        metrics = task.train_local(data, steps, gen, ins.config)
    if task.privacy_engine is not None:
        # DP-SGD noises the gradients, not the losses: a loss on the client's own batches,
        # sent as it is, is a noiseless figure of its examples. It stays with the client.
        metrics = {}
    if work.faults is not None:
        work.faults.after_training(fault)
    local = task.federated_state()
    keys = list(work.global_state)
    # One call for every tensor: a tiny model's per-call overhead is most of its cost.
    update = dict(
        zip(
            keys,
            torch._foreach_sub([local[k] for k in keys], [work.global_state[k] for k in keys]),
            strict=True,
        )
    )
    own_private = task.private_state()
    ditto = ditto_settings(ins)
    if ditto is not None:
        # Ditto: the client's personal model trains after the global step and stays in
        # its private state; the update above is FedAvg's.
        lam, personal_steps = ditto
        with task.autocast():
            personal = train_personal(
                task,
                data,
                work.global_state,
                carried,
                own_private,
                lam,
                personal_steps or steps,
                ins,
            )
        if task.privacy_engine is None:  # its losses too are figures of private batches
            metrics.update(personal)
    ctx = TransformContext(
        round=work.round,
        client_id=ins.client_id,
        seed=ins.seed,
        num_clients=num_clients,
        noise_key=own_key,
        private=carried,
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
        bytes_down=bytes_down,
    )
    if work.secure:
        if held is None:
            raise ValueError("a secure round's client needs a store to hold its update in")
        auxiliary = frozenset(k for t in work.transforms for k in getattr(t, "auxiliary_keys", ()))
        try:
            # A codec's encoding is decoded here for the client's own checks.
            plain = decode_arrival(
                work.transforms, update, work.global_state, work.round, ins.client_id
            )
            compact = compact_reference(work.transforms, work.global_state, work.round)
            if compact is not None:
                # The checks are of the update itself; what is masked is its compact
                # encoding (a shared-support codec), so the masked vector is as small.
                check_update(plain, work.global_state, work.max_update_norm, auxiliary)
            reference = work.global_state if compact is None else compact
            # The noise this client adds if it is left alone in a round of client-level
            # DP, from its own recipe (None: its server adds none, it never goes alone).
            lone = lone_noise(work.transforms, work.global_state, reference, auxiliary)
            held[ins.client_id] = hold_update(
                ins.client_id,
                work.round,
                ins.seed,
                plain if compact is None else update,
                reference,
                work.max_update_norm,
                auxiliary,
                own_key,
                lone if any(lone[1]) else None,
            )
            result.held = True
        except ClientUpdateError as exc:
            # The check the server makes of a plain update, made here before masking.
            result.failure = f"rejected update: {exc}"
        result.update = None
    else:
        sign_result(result, work.keys, work.round)
    # A reply that cannot be encoded (a NaN metric) fails the client, in every backend.
    result.bytes_up = reply_message(result).nbytes
    # The task's private tensors and the transforms' own, kept together by the client.
    return result, {**own_private, **carried}


def answer_job(
    job: bytes,
    task: Task,
    kit: ClientKit,
    private_state: StateDict | None,
    keys: ClientKeys | None,
    expected_client: int | None = None,
    held: dict[int, dict[str, Any]] | None = None,
    own_noise_key: bytes | None = None,
    admit: Callable[[ClientInstruction, LocalWork], None] | None = None,
) -> tuple[bytes, StateDict]:
    """A client's whole answer to an encoded job: its encoded reply and new private state.

    What a process-pool worker and a Flower ClientApp both run. ``task`` is the
    client's own instance (``kit.task`` or a copy); ``expected_client`` is the client
    this node is, when it is one (a job for another client is refused); ``held`` is
    where it keeps its update for a secure round (``run_client``); ``own_noise_key`` the
    DP noise key a deployed client made itself (``work_from_job``); ``admit``, called
    once the job is read and checked and before training, may refuse it by raising (a
    deployed node's own DP-SGD budget). Any error, the client's own, a refusal or a
    malformed job, becomes a failure reply, never an exception.
    """
    client_id = -1 if expected_client is None else expected_client
    try:
        message = decode(job)
        ins, work, num_clients = work_from_job(
            message,
            task,
            kit.transforms,
            kit.faults,
            keys,
            kit.initial_state,
            own_noise_key,
            private_state,
        )
        if expected_client is not None and ins.client_id != expected_client:
            raise WireError(f"a job for client {ins.client_id} reached client {expected_client}")
        client_id = ins.client_id
        if admit is not None:
            admit(ins, work)
        result, private = run_client(
            ins, work, kit.data(client_id), private_state, num_clients, held
        )
        return encode(reply_message(result)), private
    except Exception as exc:  # the client's own error: a failure value for the server
        failed = ClientResult(client_id, 0, failure=f"{type(exc).__name__}: {exc}")
        return encode(reply_message(failed)), private_state or {}


def job_digest(job: Message) -> str:
    """SHA-256 hex of a decoded job: its meta (round, seed, config, steps, transform
    states...) and its arrays. Equal for a job the server rebuilds bit for bit, as a
    resumed run does."""
    h = hashlib.sha256(b"fedgen-job-v1\n")
    h.update(canonical_json(job.meta).encode())
    h.update(state_digest(job.arrays).encode())
    return h.hexdigest()


def job_binding(job: str, private_state: StateDict | None) -> str:
    """What a deployed client's DP noise key is bound to, and its budget records: the
    job's digest (``job_digest``) and the private state the client trains it from."""
    private = state_digest(dict(private_state or {}))
    return hashlib.sha256(f"fedgen-binding-v1\n{job}\n{private}".encode()).hexdigest()


def job_message(
    ins: ClientInstruction, work: LocalWork, num_clients: int, key_at_client: bool = False
) -> Message:
    """What the server sends one client for a round: the global state and its instruction.

    Under downlink compression the arrays are the compressed deltas since the model the
    client last received (or that model whole), described by ``meta["downlink"]``.

    ``meta`` holds the instruction (client id, seed, config), the round, the step
    budget, the client's own DP noise key (hex; ``client_noise_key``, never the run's;
    with ``key_at_client`` only ``OWN_NOISE_KEY``: the client made its key itself, and
    the server, which could derive ``client_noise_key``, must not hold the one it draws
    DP-SGD's noise with) and each transform's ``state_dict()`` (its client half reads
    nothing else that changes between rounds, e.g. an adaptive clip bound). The client's
    private state and signing key are not in it: they are the client's own and never
    cross the wire.
    """
    arrays, downlink = (
        (work.global_state, None) if work.downlink is None else work.downlink.payload(ins.client_id)
    )
    # The client's own noise key, never the run's: with that it could regenerate the
    # server's client-level DP noise and subtract it from the models it receives.
    own_key = work.own_noise_key(ins.client_id)
    noise_key = None if own_key is None else OWN_NOISE_KEY if key_at_client else own_key.hex()
    return Message(
        arrays,
        {
            "client_id": ins.client_id,
            "seed": ins.seed,
            "config": ins.config,
            "round": work.round,
            "local_steps": work.local_steps,
            "local_epochs": work.local_epochs,
            "num_clients": num_clients,
            "noise_key": noise_key,
            "transforms": [t.state_dict() for t in work.transforms],
            "secure": work.secure,
            "max_update_norm": work.max_update_norm,
            "downlink": downlink,
        },
    )


def work_from_job(
    job: Message,
    task: Task,
    transforms: Sequence[UpdateTransform],
    faults: FaultPlan | None,
    keys: ClientKeys | None,
    initial_state: StateDict | None = None,
    own_noise_key: bytes | None = None,
    private_state: StateDict | None = None,
) -> tuple[ClientInstruction, LocalWork, int]:
    """The instruction, the work and the cohort size a client reads from its job.

    ``task``, ``transforms``, ``faults`` and ``initial_state`` (the initial model) are the
    client's own, built from the recipe; the job's transform states are loaded into
    ``transforms``. ``own_noise_key`` is the key a client made itself, used when the job
    says so (``OWN_NOISE_KEY``), bound to the job and ``private_state``, the private
    state the client trains it from (``job_binding``).

    Raises:
        WireError: the job's meta lacks a field or has a transform state too many or
            few, or it asks for the client's own noise key and the client has none.
    """
    meta = job.meta
    try:
        ins = ClientInstruction(meta["client_id"], meta["seed"], meta["config"])
        states = meta["transforms"]
        if not isinstance(states, list):
            raise WireError("the job's transforms must be a list of states")
        if len(states) != len(transforms):
            raise WireError(
                f"the job has {len(states)} transform states, the client has "
                f"{len(transforms)} transforms"
            )
        for transform, state in zip(transforms, states, strict=True):
            transform.load_state_dict(state)
        key = meta["noise_key"]
        if key == OWN_NOISE_KEY:
            if own_noise_key is None:
                raise WireError(
                    "the job asks the client to draw its DP noise with a key of its own, "
                    "and it holds none (a deployed ClientApp makes one at the hello)"
                )
            client_key: bytes | None = own_noise_key
        else:
            client_key = None if key is None else bytes.fromhex(key)
        # Whether the update is masked is the client's recipe's to say, not the job's:
        # a server that could clear the flag would get every update in the clear.
        secure = any(isinstance(t, SecureAggregation) for t in transforms)
        if meta["secure"] is not secure:
            raise WireError(
                f"the job says secure={meta['secure']!r:.10}, and this client's recipe "
                f"{'has' if secure else 'has no'} a secagg transform: refused (a client "
                "sends its update only as its own recipe says)"
            )
        norm = meta["max_update_norm"]
        if norm is not None and (type(norm) not in (int, float) or not norm > 0):
            raise WireError(f"the job's max_update_norm {norm!r:.30} is not a number > 0")
        downlink = meta["downlink"]
        if downlink is not None and not isinstance(downlink, dict):
            raise WireError("the job's downlink must be a mapping or null")
        work = LocalWork(
            task,
            job.arrays if downlink is None else {},
            transforms,
            meta["local_steps"],
            meta["local_epochs"],
            meta["round"],
            None,  # the run's key stays with the server
            faults,
            keys,
            secure=secure,
            max_update_norm=norm,
            downlink=None
            if downlink is None
            else ReceivedDownlink(job.arrays, downlink, ins.client_id),
            initial_state=initial_state,
            client_key=client_key,
            noise_binding=(
                job_binding(job_digest(job), private_state) if key == OWN_NOISE_KEY else None
            ),
        )
        return ins, work, meta["num_clients"]
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"a malformed job message: {type(exc).__name__}: {exc}") from exc


def reply_message(result: ClientResult) -> Message:
    """What a client sends back: its update and extras as arrays, everything else as meta.

    Byte counts are not in it (the receiver measures them, and a message cannot hold
    its own length).
    """
    arrays = {UPDATE + k: v for k, v in (result.update or {}).items()}
    arrays.update({EXTRAS + k: v for k, v in result.extras.items()})
    return Message(
        arrays,
        {
            "client_id": result.client_id,
            "num_examples": result.num_examples,
            "has_update": result.update is not None,
            "held": result.held,
            "metrics": result.metrics,
            "failure": result.failure,
            "signature": result.signature,
            "private_keys": sorted(result.private_keys),
        },
    )


def result_from_reply(reply: Message) -> ClientResult:
    """The ``ClientResult`` a reply message carries (its fields checked later, by the loop).

    Raises:
        WireError: the reply does not have the shape ``reply_message`` gives one.
    """
    meta = reply.meta
    if set(meta) != REPLY_META:
        raise WireError(f"a reply's meta must have the fields {sorted(REPLY_META)}")
    update: StateDict = {}
    extras: StateDict = {}
    for name, tensor in reply.arrays.items():
        if name.startswith(UPDATE):
            update[name.removeprefix(UPDATE)] = tensor
        elif name.startswith(EXTRAS):
            extras[name.removeprefix(EXTRAS)] = tensor
        else:
            raise WireError(f"a reply's array {name[:60]!r} is neither update/ nor extras/")
    has_update = meta["has_update"]
    if type(has_update) is not bool:
        raise WireError("a reply's has_update must be true or false")
    if update and not has_update:
        raise WireError("a reply without an update (has_update false) carries update arrays")
    if type(meta["held"]) is not bool:
        raise WireError("a reply's held must be true or false")
    private = meta["private_keys"]
    if not isinstance(private, list) or not all(isinstance(k, str) for k in private):
        raise WireError("a reply's private_keys must be a list of names")
    return ClientResult(
        client_id=meta["client_id"],
        num_examples=meta["num_examples"],
        update=update if has_update else None,
        metrics=meta["metrics"],
        failure=meta["failure"],
        extras=extras,
        private_keys=frozenset(private),
        signature=meta["signature"],
        held=meta["held"],
    )
