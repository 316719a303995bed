"""The secret that seeds differential-privacy noise.

DP noise protects only if whoever sees the released model cannot predict it. Seeded
from the root seed, which every run folder's ``config.yaml`` records, it could be
regenerated and subtracted, and the guarantee would be void. So an experiment draws
a 256-bit noise key from the operating system's CSPRNG (``secrets``) when it starts,
and every noise draw (client-level DP noise, the adaptive-clipping count noise,
DP-SGD's noise) is seeded with HMAC-SHA256(key, where it is drawn). The key is kept
in checkpoints only, so a resumed run stays bit-identical to an uninterrupted one;
two fresh runs with the same root seed draw different noise. The server's draws repeat
when a round is trained again, which is safe only because no round leaves the server
before its checkpoint (client-level DP requires ``checkpoint.every: 1``,
``fedgen.assembly.privacy``): a round lost in a crash was released to no one.
Checkpoints are therefore as secret as the server's state (written owner-readable only).

The key stays with the server. A client gets its own key, HMAC-SHA256(key, its id)
(``client_noise_key``), for the noise it draws itself (DP-SGD): from it no client can
recompute the server's client-level noise, and subtract it from the models it receives,
nor another client's. In a simulation the server can derive every client's key, so
DP-SGD's noise is secret from everyone but the server; a deployed client
(``fedgen.deploy.client_app``) makes its own key instead, which the server never holds.

The vertical backend keys the clients' shared draws with it too (record order and
conditions, which the server must not be able to recompute:
``fedgen.engine.backends.vertical.clients_seed``).

``noise_seed: root`` in the config seeds the noise from the root seed instead, for
experiments that must rerun identically from the config alone (the run then protects
against nobody who holds its config).

The generators are torch's Mersenne Twister seeded with 63 secret bits: unpredictable
to someone without the key, but not a cryptographically secure generator; a
deployment facing a strong adversary should draw its noise from a CSPRNG.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import torch

from fedgen.seeding import torch_generator

#: Bytes of a noise key (256 bits, as HMAC-SHA256 wants).
KEY_BYTES = 32


def new_noise_key() -> bytes:
    """A fresh secret key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def keyed_seed(key: bytes, *path: str | int) -> int:
    """A 63-bit seed for the draw at ``path``, unpredictable without ``key``."""
    text = "/".join(str(p) for p in path).encode()
    digest = hmac.new(key, text, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def client_noise_key(key: bytes | None, client_id: int) -> bytes | None:
    """Client ``client_id``'s own key, derived from the run's; None in ``root`` mode."""
    if key is None:
        return None
    return hmac.new(key, f"client/{client_id}".encode(), hashlib.sha256).digest()


def keyed_run_id(key: bytes) -> str:
    """A name for the run (32 hex digits), stable while the key is, revealing nothing of it."""
    return hmac.new(key, b"run-id", hashlib.sha256).hexdigest()[:32]


def noise_generator(key: bytes | None, seed: int, *path: str | int) -> torch.Generator:
    """The generator for the noise drawn at (``seed``, ``path``).

    ``seed`` is the public seed of where the draw happens (a round's server seed, a
    client's round seed); with ``key`` None the noise derives from it alone (the
    ``noise_seed: root`` mode).
    """
    if key is None:
        return torch_generator(seed, *path)
    return torch.Generator().manual_seed(keyed_seed(key, seed, *path))


def key_to_state(key: bytes | None) -> str | None:
    """The key as checkpoints store it (hex: checkpoints load with ``weights_only``)."""
    return None if key is None else key.hex()


def key_from_state(value: object) -> bytes | None:
    """Inverse of ``key_to_state``; raises ``ValueError`` on anything else."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 * KEY_BYTES:
        raise ValueError(f"a noise key is {2 * KEY_BYTES} hex digits, not {value!r:.20}")
    return bytes.fromhex(value)
