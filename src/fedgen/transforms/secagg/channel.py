"""The wire between clients and server: counts bytes per phase and direction.

Every message of a simulated round passes through one ``Channel``; a test
subclass can override ``deliver`` to tamper with, swap or replay messages
the way a network or a malicious relay could.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol, TypeVar


class Message(Protocol):
    @property
    def nbytes(self) -> int: ...


M = TypeVar("M", bound=Message)

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmasking")


class Channel:
    """Carries messages and counts ``bytes_up`` (to the server) and ``bytes_down`` per phase."""

    def __init__(self) -> None:
        self.bytes_up: dict[str, int] = defaultdict(int)
        self.bytes_down: dict[str, int] = defaultdict(int)

    def upload(self, phase: str, message: M) -> M:
        """A client sends ``message`` to the server."""
        self.bytes_up[phase] += message.nbytes
        return self.deliver(phase, message)

    def download(self, phase: str, message: M) -> M:
        """The server sends ``message`` to a client."""
        self.bytes_down[phase] += message.nbytes
        return self.deliver(phase, message)

    def deliver(self, phase: str, message: M) -> M:
        """What arrives at the other end: the message itself, on an honest wire."""
        return message
