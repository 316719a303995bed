"""The wire between the parties of a vertically split synthesizer, counted in encoded bytes.

Every tensor that crosses between two parties (the server, ``client <i>``) is encoded
as a ``fedgen.wire`` message (``{name: tensor}`` plus sender and receiver), counted
by its encoded length, and decoded into a fresh tensor the receiver owns: no autograd
graph or storage crosses, exactly as a network would have it.

Why not ``fedgen.split.messages.Channel``: it counts ``numel * element_size`` rather
than serialized bytes, carries float tensors only (the row indices clients exchange
are int64) and knows only client-to-server traffic (``up``/``down``), while here a
client also sends to the other clients.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from fedgen.wire import Message, decode, encode

#: The name of the party that holds the shared body.
SERVER = "server"


def party(client_id: int) -> str:
    """The wire name of client ``client_id``."""
    return f"client {client_id}"


@dataclass
class WireChannel:
    """Encodes, counts, optionally records and decodes every message between parties."""

    #: Keep every encoded message (tests search them for raw columns).
    record: bool = False
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: int = 0
    log: list[tuple[str, str, bytes]] = field(default_factory=list)

    def send(
        self, sender: str, receiver: str, arrays: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Deliver ``arrays``: the receiver gets decoded copies (no grad, no shared storage)."""
        data = encode(
            Message({k: v.detach() for k, v in arrays.items()}, {"from": sender, "to": receiver})
        )
        self.sent[sender] += len(data)
        self.received[receiver] += len(data)
        self.messages += 1
        if self.record:
            self.log.append((sender, receiver, data))
        return decode(data).arrays

    def one(self, sender: str, receiver: str, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Deliver one tensor (``send`` of ``{name: tensor}``)."""
        return self.send(sender, receiver, {name: tensor})[name]

    @property
    def total(self) -> int:
        """Encoded bytes of every message so far."""
        return sum(self.sent.values())
