"""Authenticated encryption of the shares one client sends another through the server.

AES-256-GCM (NIST SP 800-38D) with a random 96-bit nonce. The associated data
binds the ciphertext to the round, the sender and the receiver, so a
ciphertext that is altered, attributed to another sender, delivered to
another receiver or replayed from another round fails authentication
(Bonawitz et al. 2017 check the same ids inside the plaintext; we do both).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedgen.transforms.secagg.errors import SecAggError, ShareTamperedError
from fedgen.transforms.secagg.keys import Entropy

NONCE_BYTES = 12
_AD_PREFIX = b"fedgen-secagg/v1/share"


def associated_data(round: int, sender: int, receiver: int) -> bytes:
    """What a share ciphertext is bound to: protocol, round, sender, receiver."""
    return _AD_PREFIX + struct.pack(">QQQ", round, sender, receiver)


def encrypt(
    key: bytes, plaintext: bytes, round: int, sender: int, receiver: int, entropy: Entropy
) -> bytes:
    """``nonce || AES-GCM(key, plaintext, ad)`` (ciphertext with its 16-byte tag)."""
    nonce = entropy(NONCE_BYTES)
    ad = associated_data(round, sender, receiver)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key: bytes, ciphertext: bytes, round: int, sender: int, receiver: int) -> bytes:
    """The plaintext; raise ``ShareTamperedError`` if anything it is bound to does not match.

    ``SecAggError`` if ``key`` is not a 32-byte key or an id is not a 64-bit number (the
    caller's values, not the wire's).
    """
    if not (isinstance(key, bytes) and len(key) == 32):
        raise SecAggError("share encryption keys are 32 bytes (HKDF output)")
    if not all(type(i) is int and 0 <= i < 2**64 for i in (round, sender, receiver)):
        raise SecAggError(
            f"round and client ids must be ints in [0, 2^64), got {(round, sender, receiver)!r:.60}"
        )
    try:
        if not isinstance(ciphertext, bytes):
            raise ValueError("not bytes")
        nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
        return AESGCM(key).decrypt(nonce, body, associated_data(round, sender, receiver))
    except (InvalidTag, ValueError):
        raise ShareTamperedError(
            f"round {round}: the share ciphertext from client {sender} to client {receiver} "
            "failed authentication (tampered in transit, attributed to the wrong sender, "
            "or replayed from another round); the round is aborted - check the transport "
            "between clients and server"
        ) from None
