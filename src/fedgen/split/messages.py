"""What crosses between a split-learning client and the server: activations and gradients.

Every crossing is an explicit ``Message`` sent through a ``Channel``. Sending
detaches and copies the tensor, so no autograd graph or storage is shared
across the boundary; the receiver re-attaches ``requires_grad`` where it needs
the gradient. The channel counts bytes each way, can record every message
(for the privacy tests) and can simulate a client dropping off the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from fedgen.errors import FedgenError

Kind = Literal["activation", "gradient"]
Direction = Literal["up", "down"]  # up: client -> server


class ClientDroppedError(FedgenError):
    """A client left mid-iteration: its message never arrived (a failure value, not a crash)."""


@dataclass(frozen=True)
class Message:
    """One tensor on the wire, with who sent it and what it is."""

    kind: Kind
    direction: Direction
    network: str
    client_id: int
    tensor: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


@dataclass
class Channel:
    """The wire: copies tensors, counts bytes, optionally records and drops messages.

    ``drop_after[c] = k`` simulates client ``c`` disconnecting after its ``k``-th
    message (either direction): every later message to or from it raises
    ``ClientDroppedError``.
    """

    record: bool = False
    drop_after: dict[int, int] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    #: Bytes each client sent (``up``) and received (``down``), by client id.
    up_by_client: dict[int, int] = field(default_factory=dict)
    down_by_client: dict[int, int] = field(default_factory=dict)
    log: list[Message] = field(default_factory=list)
    _sent: dict[int, int] = field(default_factory=dict)

    def send(
        self, kind: Kind, direction: Direction, network: str, client_id: int, tensor: torch.Tensor
    ) -> Message:
        """Deliver ``tensor``: the receiver gets a detached copy (no grad, no shared storage)."""
        count = self._sent.get(client_id, 0)
        limit = self.drop_after.get(client_id)
        if limit is not None and count >= limit:
            raise ClientDroppedError(
                f"client {client_id} dropped out: its {kind} ({network}, {direction}) never arrived"
            )
        self._sent[client_id] = count + 1
        if not tensor.is_floating_point():
            raise FedgenError(
                f"only float activations/gradients may cross the wire, got {tensor.dtype}"
            )
        msg = Message(kind, direction, network, client_id, tensor.detach().clone())
        if direction == "up":
            self.bytes_up += msg.nbytes
            self.up_by_client[client_id] = self.up_by_client.get(client_id, 0) + msg.nbytes
        else:
            self.bytes_down += msg.nbytes
            self.down_by_client[client_id] = self.down_by_client.get(client_id, 0) + msg.nbytes
        if self.record:
            self.log.append(msg)
        return msg

    def reset_counters(self) -> None:
        """Zero the byte counters and the message log (the drop schedule stays)."""
        self.bytes_up = self.bytes_down = 0
        self.up_by_client.clear()
        self.down_by_client.clear()
        self.log.clear()


def received(msg: Message, needs_grad: bool) -> torch.Tensor:
    """The tensor as the receiver holds it: a fresh leaf, ``requires_grad`` if asked."""
    return msg.tensor.requires_grad_(needs_grad) if needs_grad else msg.tensor
