"""A client's side of the secure-aggregation stage, as any backend runs it.

After training, a client of a secure round keeps its update (``hold_update``: it
checks the update as the server would, then exports a ``SecAggClientHalf``) and
answers the server's requests one encoded message at a time (``answer_phase``).
What it keeps between messages is its own: a simulation holds it beside the
client's private state, a Flower ClientApp in its node's ``Context``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedgen.engine.validation import check_update
from fedgen.errors import ClientUpdateError
from fedgen.privacy.noise_key import keyed_seed
from fedgen.seeding import derive_seed
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.codec import UpdateCodec, encoded_key
from fedgen.transforms.secagg.client_half import SecAggClientHalf
from fedgen.transforms.secagg.codec import from_message, to_message
from fedgen.transforms.secagg.errors import SecAggError
from fedgen.transforms.secagg.messages import UnmaskResponse
from fedgen.transforms.secagg.requests import LoneRelease
from fedgen.types import StateDict
from fedgen.wire import Message, WireError, decode, encode

log = logging.getLogger(__name__)

#: What an auxiliary tensor looks like to ``sum_noise_std`` (a float of shape (1,)).
_AUX = torch.zeros(1)


def hold_update(
    client_id: int,
    round: int,
    client_seed: int,
    update: StateDict,
    reference: StateDict,
    max_norm: float | None,
    auxiliary: frozenset[str],
    noise_key: bytes | None = None,
    lone: LoneNoise | None = None,
) -> dict[str, Any]:
    """The client's own check of ``update`` before masking, then the half that holds it.

    ``noise_key`` is the client's own DP noise key (``client_noise_key``, or the one a
    deployed client made): it seeds the noise the client adds if it is left alone in a
    round of client-level DP (``LoneRequest``); None seeds it from ``client_seed``, the
    ``noise_seed: root`` mode. ``lone`` is that noise, as the client's own recipe sets
    it (``lone_noise``); the client refuses any other (None: it never releases alone).

    Raises:
        ClientUpdateError: the update has other tensors than ``reference``, NaN or Inf,
            or a norm over ``max_norm`` (the client fails, as the server would fail it).
    """
    check_update(update, reference, max_norm, auxiliary)
    # Flattened in the order the server unflattens the sum by (``vector_layout``).
    names, _ = vector_layout(reference, auxiliary)
    values = torch.cat([update[k].detach().reshape(-1).double() for k in names]).numpy()
    seed = derive_seed(client_seed, "secagg", "rounding")
    noise_seed = (
        derive_seed(client_seed, "secagg", "lone-noise")
        if noise_key is None
        else keyed_seed(noise_key, client_seed, "secagg", "lone-noise")
    )
    half = SecAggClientHalf(
        client_id,
        round,
        np.ascontiguousarray(values),
        seed,
        noise_seed=noise_seed,
        lone_noise=lone,
    )
    return half.export()


def compact_reference(
    transforms: Sequence[UpdateTransform], reference: StateDict, round: int
) -> StateDict | None:
    """What a secure round masks when the pipeline's codec is linear over a support every
    client shares (``random_mask``): its encoding's arrays, shaped as encoding a zero
    update gives them, so clients mask the compact values and the server decodes the
    sum. None for any other pipeline (the decoded, full-size update is masked)."""
    codec = next(
        (t for t in transforms if isinstance(t, UpdateCodec) and t.linear_shared_support), None
    )
    if codec is None:
        return None
    ctx = TransformContext(round=round, client_id=None, seed=0, num_clients=0)
    zeros = {k: torch.zeros_like(v) for k, v in reference.items()}
    encoded, _ = codec.on_client(zeros, ctx)
    return encoded


#: A lone release's noise: the held vector's segments (one per tensor, their lengths, in
#: ``vector_layout``'s order) and each one's standard deviation.
LoneNoise = tuple[tuple[int, ...], tuple[float, ...]]


def lone_noise(
    transforms: Sequence[UpdateTransform],
    global_state: StateDict,
    held: StateDict,
    auxiliary: frozenset[str],
) -> LoneNoise:
    """The noise the server halves add to each tensor of a held vector (the round's sum
    units: ``sum_noise_std``), which a round's only client adds itself.

    ``held`` is what the vector holds (the update's tensors, or a shared-support codec's
    encoding, whose arrays hold some of a model tensor's values as they are and get that
    tensor's noise). Two transforms' noises on one tensor add in quadrature.
    """
    names, shapes = vector_layout(held, auxiliary)
    stds = []
    for name in names:
        key = encoded_key(name)
        if key is not None and key in global_state:
            name, value = key, global_state[key]
        else:
            value = held.get(name, _AUX)
        stds.append(math.sqrt(sum(t.sum_noise_std(name, value) ** 2 for t in transforms)))
    return tuple(math.prod(shape) for shape in shapes), tuple(stds)


def vector_layout(
    reference: StateDict, auxiliary: frozenset[str]
) -> tuple[list[str], list[torch.Size]]:
    """The tensors of a masked vector, in order: the model's, then each side-channel
    tensor of the transforms (shape (1,), e.g. adaptive clipping's bit), sorted."""
    names = [*reference, *sorted(auxiliary)]
    shapes = [reference[k].shape for k in reference] + [torch.Size([1])] * len(auxiliary)
    return names, shapes


def answer_phase(
    request: bytes, held: dict[str, Any] | None, client_id: int
) -> tuple[bytes, dict[str, Any] | None]:
    """The client's encoded reply to one encoded request, and what it keeps after it.

    A request it cannot answer (none held, malformed, tampered, out of order) gets an
    error reply, said in this client's log too; the server counts the client as
    dropped. Nothing is raised.
    """
    try:
        if held is None:
            raise SecAggError(f"client {client_id} holds no update for a secure round")
        half = SecAggClientHalf.restore(held)
        if half.client_id != client_id:
            raise SecAggError(f"a request for client {client_id} reached client {half.client_id}")
        reply = half.answer(from_message(decode(request)))
        # After revealing its shares (or releasing alone) the client's round is over: it
        # keeps nothing.
        kept = None if isinstance(reply, UnmaskResponse | LoneRelease) else half.export()
        return encode(to_message(reply)), kept
    except (SecAggError, WireError, ClientUpdateError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        log.warning("client %d refuses a secure-aggregation request: %s", client_id, text)
        # A refused round is over for this client: it forgets its keys and update.
        return encode(Message({}, {"error": text})), None
