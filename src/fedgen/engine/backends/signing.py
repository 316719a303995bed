"""Clients sign what they send: the digest of their update, for the run's ledger.

Each simulated client holds its own Ed25519 key, made at enrolment and kept on
the client's side (``fedgen.engine.audit.RunAudit`` is the simulation's store of
the clients' keys; a worker process is sent only the key of the client it runs).
The server checks the signature on receipt and logs it; ``fedgen ledger verify``
checks it again against the key the client enrolled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedgen.ledger import private_key_from_hex, sign, state_digest, update_message
from fedgen.types import ClientResult


@dataclass(frozen=True)
class ClientKeys:
    """The run id and the private keys (hex) of the clients a backend runs."""

    run_id: str
    private: dict[int, str] = field(repr=False)

    def only(self, client_id: int) -> ClientKeys:
        """These keys cut down to one client's (what a worker running it receives)."""
        return ClientKeys(self.run_id, {client_id: self.private[client_id]})


def sign_result(result: ClientResult, keys: ClientKeys | None, round: int) -> None:
    """Sign ``result``'s update in place, as the client does before sending it."""
    if keys is None or result.update is None:
        return
    key = private_key_from_hex(keys.private[result.client_id])
    digest = state_digest(result.update)
    result.signature = sign(key, update_message(keys.run_id, round, result.client_id, digest))
