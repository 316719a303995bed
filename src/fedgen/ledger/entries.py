"""What a ledger holds: entries of known kinds, their leaf encoding, and signed tree heads.

The entry kinds and their JSON bodies are the contract between the round loop that writes the
ledger and ``verify_run`` that checks it:

==============  =================================================================  =========
kind            body fields                                                        round
==============  =================================================================  =========
``run_start``   run_id (hex), server_public_key (hex), fingerprint, rounds          none
``enrol``       client_id, public_key (hex)                                         none
``round_start`` round, global_digest, cohort (client ids), config (object)          body's
``update``      round, client_id, digest, num_examples, signature (hex); optional   body's
                signed_round (an earlier round an async client was sent its work in)
``failure``     round, client_id (or null for the whole round), reason              body's
``aggregate``   round, digest, secure, sum_digest (hex or null), clients            body's
``checkpoint``  round, file (relative to the run folder), digest                    body's
``resume``      from_round, checkpoint (file), head_size; optional digest (of the   none
                checkpoint resumed from, which must be the one logged for it)
==============  =================================================================  =========

Bodies may carry more fields than these; the named ones must be present and well-typed.
The leaf of an entry is the canonical JSON of ``{"body", "kind", "round"}``, so neither the kind
nor the round of a row can change without changing its leaf hash.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedgen.ledger.digest import canonical_json
from fedgen.ledger.keys import tree_head_message

_HEX = re.compile(r"(?:[0-9a-f]{2})+\Z")
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_SIGNATURE = re.compile(r"[0-9a-f]{128}\Z")


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_client(v: Any) -> bool:
    return (type(v) is int and v >= 0) or (isinstance(v, str) and v != "")


def _is_clients(v: Any) -> bool:
    return isinstance(v, list) and all(_is_client(c) for c in v)


def _is_digest(v: Any) -> bool:
    return isinstance(v, str) and _DIGEST.match(v) is not None


def _is_relative_file(v: Any) -> bool:
    return isinstance(v, str) and v != "" and not v.startswith("/") and ".." not in v.split("/")


_Check = tuple[Callable[[Any], bool], str]
_ROUND: _Check = (_is_count, "an int >= 0")
_CLIENT: _Check = (_is_client, "a client id (an int >= 0 or a non-empty string)")
_CLIENTS: _Check = (_is_clients, "a list of client ids")
_DIGEST_CHECK: _Check = (_is_digest, "a sha256 as 64 lowercase hex characters")
_KEY: _Check = (_is_digest, "an Ed25519 public key as 64 lowercase hex characters")
_TEXT: _Check = (lambda v: isinstance(v, str), "a string")
_FILE: _Check = (_is_relative_file, "a path relative to the run folder, like checkpoints/x")

SCHEMA: dict[str, dict[str, _Check]] = {
    "run_start": {
        "run_id": (lambda v: isinstance(v, str) and _HEX.match(v) is not None, "a hex string"),
        "server_public_key": _KEY,
        "fingerprint": _TEXT,
        "rounds": (_is_count, "an int >= 0"),
    },
    "enrol": {"client_id": _CLIENT, "public_key": _KEY},
    "round_start": {
        "round": _ROUND,
        "global_digest": _DIGEST_CHECK,
        "cohort": _CLIENTS,
        "config": (lambda v: isinstance(v, dict), "a JSON object"),
    },
    "update": {
        "round": _ROUND,
        "client_id": _CLIENT,
        "digest": _DIGEST_CHECK,
        "num_examples": (_is_count, "an int >= 0"),
        "signature": (
            lambda v: isinstance(v, str) and _SIGNATURE.match(v) is not None,
            "an Ed25519 signature as 128 lowercase hex characters",
        ),
    },
    "failure": {
        "round": _ROUND,
        "client_id": (lambda v: v is None or _is_client(v), "a client id or null"),
        "reason": _TEXT,
    },
    "aggregate": {
        "round": _ROUND,
        "digest": _DIGEST_CHECK,
        "secure": (lambda v: isinstance(v, bool), "true or false"),
        "sum_digest": (lambda v: v is None or _is_digest(v), "a sha256 hex digest or null"),
        "clients": _CLIENTS,
    },
    "checkpoint": {"round": _ROUND, "file": _FILE, "digest": _DIGEST_CHECK},
    "resume": {"from_round": _ROUND, "checkpoint": _FILE, "head_size": (_is_count, "an int >= 0")},
}

RUN_KINDS = frozenset({"run_start", "enrol", "resume"})


def body_problems(kind: str, body: Any, round: int | None) -> list[str]:
    """What is wrong with an entry against the contract; empty when nothing is."""
    if kind not in SCHEMA:
        return [f"unknown entry kind {kind!r} (known: {', '.join(SCHEMA)})"]
    if not isinstance(body, dict):
        return [f"a {kind} body must be a JSON object, got {type(body).__name__}"]
    problems = []
    for name, (check, what) in SCHEMA[kind].items():
        if name not in body:
            problems.append(f"{kind} body lacks the field {name!r} ({what})")
        elif not check(body[name]):
            problems.append(f"{kind} field {name!r} must be {what}, got {body[name]!r:.80}")
    if (
        kind == "update"
        and "signed_round" in body
        and not (
            _is_count(body["signed_round"])
            and _is_count(body.get("round"))
            and body["signed_round"] <= body["round"]
        )
    ):
        # An asynchronous client's work was sent in an earlier round, never a later one.
        problems.append(
            f"update field 'signed_round' must be an int >= 0 and at most the entry's round, "
            f"got {body['signed_round']!r:.40}"
        )
    if kind == "aggregate" and not problems and body["secure"] != (body["sum_digest"] is not None):
        problems.append("aggregate sum_digest must be a digest exactly when secure is true")
    if kind in RUN_KINDS:
        if round is not None:
            problems.append(f"a {kind} entry belongs to no round; its round must be null")
    elif "round" in body and round != body["round"]:
        problems.append(f"{kind} entry has round {round} but its body says round {body['round']}")
    return problems


def leaf_data(kind: str, round: int | None, body: dict[str, Any]) -> bytes:
    """The bytes an entry's leaf hash is taken over."""
    return canonical_json({"body": body, "kind": kind, "round": round}).encode("ascii")


@dataclass(frozen=True)
class Entry:
    """One leaf of the log: its 0-based index ``seq``, round (None for run-level kinds), kind,
    body and leaf hash (hex)."""

    seq: int
    round: int | None
    kind: str
    body: dict[str, Any]
    leaf_hash: str

    @property
    def client_id(self) -> int | str | None:
        value = self.body.get("client_id")
        return value if _is_client(value) else None

    def where(self) -> str:
        """Where the entry sits, for messages: ``round 3, client 7 (update, seq 41)``."""
        parts = [] if self.round is None else [f"round {self.round}"]
        if self.client_id is not None:
            parts.append(f"client {self.client_id}")
        place = ", ".join(parts) or "run"
        return f"{place} ({self.kind}, seq {self.seq})"


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: the first ``size`` leaves hash to ``root`` (hex); ``round`` is the
    round it closes (None before round 0) and ``signature`` the server's, over
    ``tree_head_message(log_id, size, root, round)``."""

    size: int
    root: str
    round: int | None
    signature: str

    def message(self, log_id: str) -> bytes:
        return tree_head_message(log_id, self.size, self.root, self.round)

    @property
    def anchor(self) -> tuple[int, str]:
        """``(size, root)``, what a checkpoint stores to pin the log from outside."""
        return (self.size, self.root)

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": self.root,
            "round": self.round,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TreeHead:
        return cls(int(data["size"]), str(data["root"]), data["round"], str(data["signature"]))
