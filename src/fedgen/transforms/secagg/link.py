"""How the server of secure aggregation reaches the clients of a round: a ``ClientLink``.

The server side (``protocol.run_secure_sum``) only ever calls ``ask(phase,
requests)``: it sends each client a request and gets back what each answered
(a client that did not answer is absent). ``LocalLink`` answers from client
halves held in this process, passing every message through a byte-counting
``Channel``; the engine's links carry the same objects as encoded messages to
clients in other processes or on other machines.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from fedgen.transforms.secagg.channel import PHASES, Channel
from fedgen.transforms.secagg.client_half import SecAggClientHalf
from fedgen.transforms.secagg.requests import MaskRequest, ShareBatch

#: The phase whose figures count a request's download (the server's reply to the
#: previous phase's uploads, as Bonawitz et al. number them).
DOWNLOAD_PHASE = {
    "advertise_keys": "advertise_keys",
    "share_keys": "advertise_keys",
    "masked_input": "share_keys",
    "unmasking": "unmasking",
}


class ClientLink(Protocol):
    """The clients of one round as the server reaches them (see module docstring)."""

    #: Bytes sent to the server and to the clients, per phase, summed over clients.
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    #: Seconds the clients spent answering, per phase (0 where the link cannot see).
    client_seconds: dict[str, float]

    def ask(self, phase: str, requests: Mapping[int, object]) -> dict[int, object]:
        """Send ``requests[c]`` to each client ``c``; return the replies that came."""
        ...

    def clipped(self, client_ids: tuple[int, ...]) -> int | None:
        """Coordinates clipped by these clients' encoding, if the link can know it."""
        ...


class LocalLink:
    """Clients whose halves live in this process, reached through ``channel``.

    A client that raises ends the round with its error: in a simulation a
    tampered share is a finding, not a dropout.
    """

    def __init__(self, halves: Mapping[int, SecAggClientHalf], channel: Channel) -> None:
        self.halves = dict(halves)
        self.channel = channel
        self.bytes_up = channel.bytes_up
        self.bytes_down = channel.bytes_down
        self.client_seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def ask(self, phase: str, requests: Mapping[int, object]) -> dict[int, object]:
        replies: dict[int, object] = {}
        down = DOWNLOAD_PHASE[phase]
        for cid, request in requests.items():
            if isinstance(request, MaskRequest):
                # Shares travel one by one, as the server routed them.
                inbox = tuple(self.channel.download(down, m) for m in request.inbox)
                request = MaskRequest(request.round, inbox, request.weight)
                self.channel.bytes_down[down] += request.nbytes - sum(m.nbytes for m in inbox)
            else:
                request = self.channel.download(down, request)  # type: ignore[type-var]
            t0 = time.perf_counter()
            reply = self.halves[cid].answer(request)
            self.client_seconds[phase] += time.perf_counter() - t0
            if isinstance(reply, ShareBatch):
                reply = ShareBatch(
                    reply.client_id,
                    reply.round,
                    tuple(self.channel.upload(phase, s) for s in reply.shares),
                )
            else:
                reply = self.channel.upload(phase, reply)  # type: ignore[type-var]
            replies[cid] = reply
        return replies

    def clipped(self, client_ids: tuple[int, ...]) -> int | None:
        return sum(self.halves[c].clipped for c in client_ids)
