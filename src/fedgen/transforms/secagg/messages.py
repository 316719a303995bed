"""The messages of the protocol, as they cross the wire: plain values and bytes.

Each message counts its own size (``nbytes``) as a compact binary encoding
would send it: 4-byte client ids and round numbers, raw 32-byte X25519 public
keys, ciphertexts and vectors as they are. Transport framing (TLS, HTTP) is
not counted, for secure and plain aggregation alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from fedgen.transforms.secagg.errors import MalformedMessageError
from fedgen.transforms.secagg.keys import KEY_BYTES
from fedgen.transforms.secagg.shamir import SHARE_BYTES

ID_BYTES = 4
ROUND_BYTES = 4
#: Client ids and round numbers travel as ``ID_BYTES``-byte unsigned integers.
MAX_ID = 2 ** (8 * ID_BYTES)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Client -> server, phase 0: the client's two public keys for this round."""

    client_id: int
    round: int
    encryption_key: bytes  # c_u^PK: agrees share-encryption keys
    mask_key: bytes  # s_u^PK: agrees pairwise-mask seeds

    @property
    def nbytes(self) -> int:
        return ID_BYTES + ROUND_BYTES + 2 * KEY_BYTES


@dataclass(frozen=True)
class KeyDirectory:
    """Server -> client, phase 0: the public keys of the client's neighbours."""

    round: int
    keys: Mapping[int, tuple[bytes, bytes]]  # neighbour -> (encryption key, mask key)

    @property
    def nbytes(self) -> int:
        return ROUND_BYTES + len(self.keys) * (ID_BYTES + 2 * KEY_BYTES)


@dataclass(frozen=True)
class EncryptedShare:
    """Client -> server -> client, phase 1: shares of the sender's secrets for one receiver."""

    sender: int
    receiver: int
    round: int
    ciphertext: bytes

    @property
    def nbytes(self) -> int:
        return 2 * ID_BYTES + ROUND_BYTES + len(self.ciphertext)


@dataclass(frozen=True)
class MaskedInput:
    """Client -> server, phase 2: the masked, fixed-point update as little-endian words."""

    client_id: int
    round: int
    payload: bytes

    @property
    def nbytes(self) -> int:
        return ID_BYTES + ROUND_BYTES + len(self.payload)


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> client, phase 3: which of its neighbours survived and which dropped."""

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return ROUND_BYTES + ID_BYTES * (len(self.survivors) + len(self.dropped))


@dataclass(frozen=True)
class UnmaskResponse:
    """Client -> server, phase 3: self-mask shares of survivors, key shares of dropouts."""

    client_id: int
    round: int
    self_mask_shares: Mapping[int, bytes]  # owner -> share of b_owner
    key_shares: Mapping[int, bytes]  # owner -> share of s_owner^SK

    @property
    def nbytes(self) -> int:
        count = len(self.self_mask_shares) + len(self.key_shares)
        return ID_BYTES + ROUND_BYTES + count * (ID_BYTES + SHARE_BYTES)


# -- what a decoder of the wire format would refuse ----------------------------------


def is_id(value: object) -> bool:
    """True for an int a 4-byte id or round field can hold (a bool is not one)."""
    return type(value) is int and 0 <= value < MAX_ID


def problem(message: object, kind: type) -> str | None:
    """Why ``message`` cannot be a ``kind`` off the wire (a field's type, length or range).

    None when every field is what the encoding carries: ids and rounds in
    ``[0, MAX_ID)``, public keys of ``KEY_BYTES`` bytes, shares of ``SHARE_BYTES``,
    ciphertexts and payloads as bytes, mappings keyed by ids. Receivers ask before they
    read a field: a hostile peer or relay can put anything in a message.
    """
    if type(message) is not kind:
        return f"expected {kind.__name__}, got {type(message).__name__}"
    for field in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, field.name)
        if field.name in ("client_id", "sender", "receiver", "round") and not is_id(value):
            return f"{field.name} {_short(value)} is not a {ID_BYTES}-byte number"
    if isinstance(message, AdvertiseKeys):
        if not (
            _is_bytes(message.encryption_key, KEY_BYTES) and _is_bytes(message.mask_key, KEY_BYTES)
        ):
            return f"public keys must be {KEY_BYTES} bytes each"
    elif isinstance(message, KeyDirectory):
        keys = message.keys
        if not isinstance(keys, Mapping):
            return f"keys is {_short(keys)}, not a mapping"
        for client, pair in keys.items():
            if not is_id(client):
                return f"key directory names client {_short(client)}"
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and all(_is_bytes(k, KEY_BYTES) for k in pair)
            ):
                return f"client {client}'s public keys must be two {KEY_BYTES}-byte strings"
    elif isinstance(message, EncryptedShare):
        if not isinstance(message.ciphertext, bytes):
            return f"ciphertext is {_short(message.ciphertext)}, not bytes"
    elif isinstance(message, MaskedInput):
        if not isinstance(message.payload, bytes):
            return f"payload is {_short(message.payload)}, not bytes"
    elif isinstance(message, UnmaskRequest):
        for name in ("survivors", "dropped"):
            ids = getattr(message, name)
            if not (isinstance(ids, tuple) and all(is_id(i) for i in ids)):
                return f"{name} is {_short(ids)}, not a tuple of client ids"
    elif isinstance(message, UnmaskResponse):
        for name in ("self_mask_shares", "key_shares"):
            shares = getattr(message, name)
            if not isinstance(shares, Mapping):
                return f"{name} is {_short(shares)}, not a mapping"
            for owner, share in shares.items():
                if not (is_id(owner) and _is_bytes(share, SHARE_BYTES)):
                    return f"{name} maps {_short(owner)} to {_short(share)}, not an id to a share"
    return None


def check(message: object, kind: type, receiver: str) -> None:
    """Raise ``MalformedMessageError`` naming ``receiver`` if ``problem`` finds one."""
    found = problem(message, kind)
    if found is not None:
        raise MalformedMessageError(
            f"{receiver} refuses a malformed {kind.__name__} ({found}); the round is "
            "aborted - check the encoding and transport between clients and server"
        )


def _is_bytes(value: object, length: int) -> bool:
    return isinstance(value, bytes) and len(value) == length


def _short(value: object, limit: int = 40) -> str:
    try:
        text = repr(value)
    except Exception:  # an int past the digit limit, a hostile __repr__
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
