"""Ed25519 keys and the domain-separated messages they sign.

Every signed message starts with a tag naming what it is (``fedgen-update-v1``,
``fedgen-tree-head-v1``) followed by canonical JSON of all the fields it binds, so a signature
made for one run, round, client or log cannot be replayed as another, nor one kind of message
as another. Keys travel as the hex of their raw 32 bytes (RFC 8032 §5.1.5).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedgen.ledger.digest import canonical_json
from fedgen.ledger.errors import LedgerError

UPDATE_TAG = b"fedgen-update-v1\n"
TREE_HEAD_TAG = b"fedgen-tree-head-v1\n"


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key from the operating system's randomness."""
    return Ed25519PrivateKey.generate()


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key as 64 hex characters."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Decode a public key written by ``public_key_hex``.

    Raises:
        LedgerError: ``text`` is not 64 hex characters.
    """
    raw = _hex_bytes(text, 32, "an Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def private_key_hex(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte private key as hex: a secret, store it like one."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def private_key_from_hex(text: str) -> Ed25519PrivateKey:
    """Decode a private key written by ``private_key_hex``.

    Raises:
        LedgerError: ``text`` is not 64 hex characters.
    """
    return Ed25519PrivateKey.from_private_bytes(_hex_bytes(text, 32, "an Ed25519 private key"))


def write_private_key(path: str | Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as hex to a new file readable by its owner only (mode 0600).

    Raises:
        LedgerError: the file exists already or cannot be written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise LedgerError(
            f"cannot create the key file {path}: {err}; remove it or pick another "
            f"path (a signing key is never overwritten)"
        ) from err
    with os.fdopen(fd, "w") as f:
        f.write(private_key_hex(key) + "\n")


def read_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a key written by ``write_private_key``.

    Raises:
        LedgerError: the file is missing, unreadable or holds no key.
    """
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise LedgerError(f"cannot read the signing key {path}: {err}") from err
    return private_key_from_hex(text)


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    """Sign ``message``; the 64-byte signature as hex."""
    return key.sign(message).hex()


def verify_signature(public_key: str | Ed25519PublicKey, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (hex) is ``public_key``'s signature over ``message``.

    A malformed key or signature is simply not a valid signature: it returns False.
    """
    try:
        key = public_key_from_hex(public_key) if isinstance(public_key, str) else public_key
        key.verify(_hex_bytes(signature, 64, "an Ed25519 signature"), message)
    except (LedgerError, InvalidSignature):
        return False
    return True


def update_message(run_id: str, round: int, client_id: int | str, digest: str) -> bytes:
    """What a client signs for its update of ``round`` in run ``run_id``.

    ``digest`` is the ``state_digest`` of the update the client sends.
    """
    fields = {"client_id": client_id, "digest": digest, "round": round, "run_id": run_id}
    return UPDATE_TAG + canonical_json(fields).encode("ascii")


def tree_head_message(log_id: str, size: int, root: str, round: int | None) -> bytes:
    """What the server signs for a tree head: the log, its size, root hash (hex) and round."""
    fields = {"log_id": log_id, "root": root, "round": round, "size": size}
    return TREE_HEAD_TAG + canonical_json(fields).encode("ascii")


def _hex_bytes(text: object, length: int, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * length:
        raise LedgerError(f"expected {what} as {2 * length} hex characters, got {text!r:.80}")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != length:
        raise LedgerError(f"expected {what} as hex, got {text!r:.80}")
    return raw
