"""The messages of the protocol, as they cross the wire: plain values and bytes.

Each message counts its own size (``nbytes``) as a compact binary encoding
would send it: 4-byte client ids and round numbers, raw 32-byte X25519 public
keys, ciphertexts and vectors as they are. Transport framing (TLS, HTTP) is
not counted, for secure and plain aggregation alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedgen.transforms.secagg.keys import KEY_BYTES
from fedgen.transforms.secagg.shamir import SHARE_BYTES

ID_BYTES = 4
ROUND_BYTES = 4


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
