"""Mask expansion: a 32-byte seed -> a vector in Z_(2^k) from an AES-256-CTR keystream.

AES in counter mode is a pseudorandom generator under the standard PRF
assumption on AES; each seed is itself an HKDF output bound to the mask's
purpose and round, so the all-zero counter block is never reused under one
key. A uniform word of ``word_bytes(k)`` bytes reduced mod ``2^k`` (a power
of two dividing ``2^(8 * word)``) is uniform on ``Z_(2^k)``.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedgen.transforms.secagg.fixed_point import modulus_mask, word_bytes

_ZERO_COUNTER = bytes(16)


def expand_mask(seed: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """``length`` pseudorandom elements of ``Z_(2^k)`` as ``uint64`` (deterministic in ``seed``)."""
    word = word_bytes(modulus_bits)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    stream = encryptor.update(bytes(length * word)) + encryptor.finalize()
    words = np.frombuffer(stream, dtype=np.dtype(f"<u{word}"))
    return words.astype(np.uint64) & modulus_mask(modulus_bits)
