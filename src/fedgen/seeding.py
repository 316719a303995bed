"""One root seed; every client, round and evaluation seed derives from it.

Derivation hashes the root seed with a path of names and numbers, so seeds
do not depend on the order in which components ask for them. That is what
lets a resumed run end bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(root: int, *path: str | int) -> int:
    """A 63-bit seed for the component at ``path`` (e.g. ``("round", 3, "client", 7)``)."""
    text = "/".join([str(int(root)), *(str(p) for p in path)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_generator(root: int, *path: str | int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(root, *path)``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(root, *path))
    return gen


def numpy_rng(root: int, *path: str | int) -> np.random.Generator:
    """A NumPy ``Generator`` seeded with ``derive_seed(root, *path)``."""
    return np.random.default_rng(derive_seed(root, *path))


def seed_from(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator``, for an RNG that cannot take a generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextmanager
def global_rng_from(generator: torch.Generator) -> Iterator[None]:
    """Runs the block with torch's global CPU RNG seeded from ``generator``, then restores it.

    Dropout and ``scaled_dot_product_attention``'s dropout take no generator: they draw
    from the global RNG, which no checkpoint holds. Seeded from the client's generator
    (itself derived from the root seed, round and client), they repeat exactly after a
    resume, and the caller's global RNG is left as it was.
    """
    seed = seed_from(generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
