"""Values that cross the client/server boundary and the round loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientInstruction:
    """What the server asks one client to do this round."""

    client_id: int
    seed: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundPlan:
    """Who takes part in round ``round`` and with which config."""

    round: int
    instructions: list[ClientInstruction]

    @property
    def client_ids(self) -> list[int]:
        return [ins.client_id for ins in self.instructions]


@dataclass
class ClientResult:
    """What a client sends back: an update (delta from the global state) or a failure.

    ``update`` holds only the federated tensors, as ``local - global``.
    ``failure`` is a one-line reason when the client crashed, timed out or sent a
    malformed update; such a result carries no update and is never aggregated.

    ``extras`` carries side information a strategy may use but never applies to the
    model (split learning: the server-side activations HuSCF-GAN clusters clients
    by); ``private_keys`` names the keys of ``update`` that a personalising strategy
    may keep per client instead of sharing (split learning: the client's own head
    and tail blocks). Server-side validation and FedAvg ignore both.

    ``bytes_up`` / ``bytes_down`` count what this client actually sent / received
    this round, failed or not; every backend sets both. ``bytes_down`` = 0 means
    nothing reached the client (its job could not be encoded); the split backend
    counts the client's own blocks plus the activations and gradients sent down to it.
    """

    client_id: int
    num_examples: int
    update: StateDict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    private_keys: frozenset[str] = frozenset()
    #: The client's Ed25519 signature (hex) over ``fedgen.ledger.update_message`` of
    #: this update's digest, when the run keeps a ledger; None otherwise.
    signature: str | None = None
    #: True when the client keeps its update for a secure-aggregation stage that runs
    #: after training (``fedgen.engine.secure_stage``): the result then carries none.
    held: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None and (self.update is not None or self.held is True)


def state_nbytes(state: StateDict) -> int:
    """Bytes of the tensors in ``state`` as sent uncompressed."""
    return sum(t.numel() * t.element_size() for t in state.values())
