"""Key agreement and key derivation: X25519 (RFC 7748) + HKDF-SHA256 (RFC 5869).

Each client has two X25519 key pairs per round (Bonawitz et al. 2017, Fig. 4):
``c`` keys agree on AES-GCM keys that encrypt shares between two clients, and
``s`` keys agree on the seeds of pairwise masks. HKDF binds every derived key
to its purpose, the round and the (unordered) pair of clients, so keys of one
purpose, round or pair never serve another.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedgen.transforms.secagg.errors import MalformedMessageError, SecAggError

#: Bytes of an X25519 public or private key.
KEY_BYTES = 32
_DOMAIN = b"fedgen-secagg/v1/"

Entropy = Callable[[int], bytes]


def generate_private_key(entropy: Entropy) -> X25519PrivateKey:
    """A fresh X25519 private key from ``entropy`` (``os.urandom`` in production)."""
    return X25519PrivateKey.from_private_bytes(entropy(KEY_BYTES))


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``key``'s public key."""
    return key.public_key().public_bytes_raw()


def derive(secret: bytes, purpose: str, round: int, *ids: int) -> bytes:
    """A 32-byte key from ``secret`` bound to ``purpose``, ``round`` and ``ids``."""
    if not all(type(i) is int and 0 <= i < 2**64 for i in (round, *ids)):
        raise SecAggError(
            f"round and client ids must be ints in [0, 2^64), got {(round, *ids)!r:.60}"
        )
    info = _DOMAIN + purpose.encode() + struct.pack(f">Q{len(ids)}Q", round, *ids)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def agree(
    private: X25519PrivateKey, peer_public: bytes, purpose: str, round: int, a: int, b: int
) -> bytes:
    """The key clients ``a`` and ``b`` share for ``purpose`` in ``round`` (symmetric in a, b)."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
        shared = private.exchange(peer)
    # Not bytes, the wrong length, or a low-order point giving an all-zero secret.
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"invalid public key of client {b!r:.20}: {exc}") from None
    if not (type(a) is int and type(b) is int):
        raise SecAggError(f"client ids must be ints, got {a!r:.20} and {b!r:.20}")
    return derive(shared, purpose, round, min(a, b), max(a, b))


def deterministic_entropy(seed: int) -> Entropy:
    """Reproducible bytes for TESTS ONLY: keys made from it are predictable.

    Production code leaves the entropy at ``os.urandom``.
    """
    rng = random.Random(seed)
    return rng.randbytes
