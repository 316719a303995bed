"""The round loop's side of the ledger: keys, digests, and what each round logs.

``RunAudit`` holds the run id, the server's signing key and, standing in for
the clients' own devices in simulation, each client's signing key (made at
enrolment; a worker is sent only the key of the client it runs). The round
loop asks it to check each update's signature on receipt and fills a
``RoundAudit`` per round; ``LedgerCallback`` (``fedgen.engine.ledger_callback``)
appends those to ``ledger.sqlite`` and signs the tree heads.

The private keys live in the key store (``fedgen.engine.keystore``), outside
the run folder: whoever holds the folder cannot re-sign a rewritten history.
Checkpoints keep only the run id and the last tree head. The ledger itself
names every round's cohort, so under client-level DP it is as private as the
checkpoints, not publishable like ``metrics.jsonl``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgen.engine.backends.signing import ClientKeys
from fedgen.engine.keystore import NEW_RUN_ADVICE, KeyStore
from fedgen.errors import CheckpointError
from fedgen.ledger import (
    LedgerError,
    generate_key,
    private_key_from_hex,
    private_key_hex,
    public_key_from_hex,
    public_key_hex,
    state_digest,
    update_message,
    verify_signature,
)
from fedgen.types import ClientResult


@dataclass
class RoundAudit:
    """What one round logs: the state sent, who was asked, what came back, what resulted."""

    round: int
    global_digest: str
    cohort: list[int]
    config: dict[str, Any]
    #: (client id, update digest, examples, signature) of each accepted update.
    updates: list[tuple[int, str, int, str]] = field(default_factory=list)
    #: The round a client signed its update for, where it is not this round (an
    #: asynchronous client sent its work in an earlier one).
    signed_rounds: dict[int, int] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    aggregate_digest: str | None = None
    #: The digest of the unmasked sum under secure aggregation, else None.
    sum_digest: str | None = None
    #: Whose updates the aggregate holds (under secure aggregation: the survivors).
    aggregated: list[int] = field(default_factory=list)
    #: Why the round kept the previous state, when it did.
    round_failure: str | None = None


class RunAudit:
    """Signing keys of one run: the server's and, in simulation, every client's."""

    def __init__(self, client_ids: list[int], store: KeyStore | None = None) -> None:
        self.store = store or KeyStore()
        self.run_id = secrets.token_hex(16)
        self.server_key: Ed25519PrivateKey = generate_key()
        client_keys = {c: generate_key() for c in client_ids}
        self._client_private = {c: private_key_hex(k) for c, k in client_keys.items()}
        #: Each client's public key, as enrolled in the ledger.
        self.client_public = {c: public_key_hex(k) for c, k in client_keys.items()}
        #: The tree head (size, root) after the last logged round, kept in checkpoints
        #: so a ledger cut back to an earlier valid prefix is caught (anchors).
        self.anchor: tuple[int, str] | None = None
        #: True once keys came from a checkpoint (a resumed run).
        self.restored = False

    @property
    def server_public(self) -> str:
        return public_key_hex(self.server_key)

    def client_keys(self) -> ClientKeys:
        """The keys backends sign with, on the clients' behalf."""
        return ClientKeys(self.run_id, dict(self._client_private))

    def made_by_server(self, client_id: int) -> bool:
        """Whether ``client_id``'s enrolled key is one this server made (in a deployment:
        a client no node held when the run enrolled it), not the client's own."""
        return client_id in self._client_private

    def enrol(self, client_id: int, public_hex: str) -> None:
        """Enrol a key that the client made itself (a deployed client): the server then
        holds only its public half, and the simulation's key for it is dropped."""
        if client_id not in self.client_public:
            raise ValueError(f"client {client_id} is not in this run")
        public_key_from_hex(public_hex)  # refuses a malformed key before it is logged
        self._client_private.pop(client_id, None)
        self.client_public[client_id] = public_hex

    def check_signature(self, result: ClientResult, round: int) -> tuple[str, str] | None:
        """``(digest, signature)`` of a correctly signed update; None if the signature is
        missing or does not verify under the client's enrolled key."""
        if result.update is None or result.signature is None:
            return None
        public = self.client_public.get(result.client_id)
        if public is None:
            return None
        digest = state_digest(result.update)
        message = update_message(self.run_id, round, result.client_id, digest)
        if not verify_signature(public, message, result.signature):
            return None
        return digest, result.signature

    def save_keys(self) -> None:
        """Put this run's private keys in the key store, unless they are there already
        (a resumed run's keys came from it)."""
        if self.store.has(self.run_id):
            return
        self.store.save_keys(
            self.run_id,
            {
                "server_key": private_key_hex(self.server_key),
                "client_keys": {str(c): k for c, k in self._client_private.items()},
                # Keys deployed clients made themselves: the store has their public half.
                "client_public": {
                    str(c): k
                    for c, k in self.client_public.items()
                    if c not in self._client_private
                },
            },
        )

    # -- checkpoints ---------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The run id and last tree head; the keys stay in the key store."""
        return {
            "run_id": self.run_id,
            "anchor": list(self.anchor) if self.anchor is not None else None,
        }

    def load_state_dict(self, state: Any) -> None:
        """Take the checkpoint's run id and fetch its keys from the key store.

        Raises ``CheckpointError`` when they are missing or unusable.
        """
        try:
            run_id = str(state["run_id"])
            anchor = state.get("anchor")
            keys = self.store.load_keys(run_id)
            server = private_key_from_hex(keys["server_key"])
            clients = {int(c): private_key_from_hex(k) for c, k in keys["client_keys"].items()}
            enrolled = {int(c): str(k) for c, k in keys.get("client_public", {}).items()}
            for public in enrolled.values():
                public_key_from_hex(public)
        except (KeyError, TypeError, ValueError, AttributeError, LedgerError) as exc:
            raise CheckpointError(
                f"the ledger keys of this run are unusable ({exc}); " + NEW_RUN_ADVICE
            ) from exc
        if set(clients) | set(enrolled) != set(self.client_public):
            raise CheckpointError(
                "the checkpoint's ledger keys are for other clients; resume with the run "
                "folder's own config.yaml"
            )
        self.run_id = str(run_id)
        self.server_key = server
        self._client_private = {c: private_key_hex(k) for c, k in clients.items()}
        self.client_public = {c: public_key_hex(k) for c, k in clients.items()} | enrolled
        self.anchor = (int(anchor[0]), str(anchor[1])) if anchor else None
        self.restored = True
