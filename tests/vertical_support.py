"""What the vertical synthesizers' tests share (``tests/`` is on ``sys.path``, see
``tiny_federation``): searching encoded wire messages for raw table values (no client's
rows or columns may cross)."""

from __future__ import annotations

import numpy as np

#: fair's numeric columns that client 0 of the tests' split holds.
NUMERIC = ["age", "yrs_married", "children"]


def found(log: list[bytes], patterns: np.ndarray) -> int:
    """How many rows of ``patterns`` (uint32 words) occur in the messages, at any 4-byte
    aligned position (every array of a wire message starts 8-byte aligned): windows of
    the messages' words are hashed (a polynomial mod 2**64) and hits compared in full."""
    width = patterns.shape[1]
    coeffs = np.random.default_rng(0).integers(1, 2**63, size=width, dtype=np.uint64) | 1
    wanted = {}
    for i, h in enumerate((patterns.astype(np.uint64) * coeffs).sum(axis=1).tolist()):
        wanted.setdefault(h, []).append(i)
    keys = np.fromiter(wanted, dtype=np.uint64)
    hits = set()
    for data in log:
        words = np.frombuffer(data[: len(data) // 4 * 4], dtype=np.uint32)
        if len(words) < width:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(words, width)
        hashes = np.zeros(len(windows), dtype=np.uint64)
        for j in range(width):  # column by column: no (N, width) uint64 copy
            hashes += windows[:, j].astype(np.uint64) * coeffs[j]
        for at in np.flatnonzero(np.isin(hashes, keys)):
            for i in wanted[int(hashes[at])]:
                if np.array_equal(windows[at], patterns[i]):
                    hits.add(i)
    return len(hits)


def raw_patterns(exp) -> list[np.ndarray]:
    """What a leak would look like: each record's encoded block of every client, and
    client 0's numeric values of each record as float32 and float64."""
    clients = exp.data.clients
    numeric = clients[0].rows[NUMERIC].to_numpy()
    return [
        *(np.ascontiguousarray(c.encoded.numpy(), np.float32).view(np.uint32) for c in clients),
        np.ascontiguousarray(numeric, np.float32).view(np.uint32),
        np.ascontiguousarray(numeric, np.float64).view(np.uint32),
    ]
