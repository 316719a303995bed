"""The Merkle tree of a transparency log, as RFC 9162 §2.1 defines it (RFC 6962 §2.1 alike).

Leaves hash as ``SHA-256(0x00 || data)``, interior nodes as ``SHA-256(0x01 || left || right)``;
a tree of ``n > 1`` leaves splits at ``k``, the largest power of two strictly below ``n``, so the
last node is never duplicated; the empty tree hashes as ``SHA-256("")``.

``MerkleTree`` keeps every complete, aligned subtree hash (level ``h`` holds the hashes of the
leaf ranges ``[i * 2**h, (i + 1) * 2**h)``). Every range the RFC recursion visits starts at a
multiple of the power of two at or above its width, so each complete one is a table look-up and
each root, inclusion path or consistency path costs O(log n) hashes at most.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``MTH({d})`` of one entry: ``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: ``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only list of leaf hashes with cached subtree hashes.

    ``levels[0]`` is the list of leaf hashes; ``levels[h][i]`` is the hash of the complete
    subtree over leaves ``[i * 2**h, (i + 1) * 2**h)``.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        # Hashes of incomplete ranges, kept until the next append so memory stays O(log n)
        # for a growing log while a verifier asking many proofs of one tree hashes each once.
        self._partial: dict[tuple[int, int], bytes] = {}
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        """Add the hash of one more leaf (already ``leaf_hash``-ed)."""
        self.levels[0].append(leaf)
        self._partial.clear()
        h = 0
        # A new complete subtree closes at every level where the count became even.
        while len(self.levels[h]) % 2 == 0:
            if h + 1 == len(self.levels):
                self.levels.append([])
            pair = self.levels[h][-2:]
            self.levels[h + 1].append(node_hash(pair[0], pair[1]))
            h += 1

    def leaf(self, index: int) -> bytes:
        return self.levels[0][index]

    def subtree_hash(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])`` for a range the RFC recursion visits (``start < end``)."""
        width = end - start
        if not 0 <= start < end <= self.size or start % (1 << (width - 1).bit_length()):
            raise ValueError(f"[{start}, {end}) is not a subtree of a tree of size {self.size}")
        if width & (width - 1) == 0:
            level = width.bit_length() - 1
            return self.levels[level][start >> level]
        cached = self._partial.get((start, end))
        if cached is None:
            k = split_point(width)
            cached = node_hash(
                self.subtree_hash(start, start + k), self.subtree_hash(start + k, end)
            )
            self._partial[(start, end)] = cached
        return cached

    def root(self, size: int | None = None) -> bytes:
        """``MTH(D[0:size])`` (RFC 9162 §2.1.1); the whole tree by default."""
        size = self.size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self.subtree_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[0:size])``, the audit path of RFC 9162 §2.1.3.1, leaf side first."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside a tree of size {size}")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = split_point(end - start)
            if index < start + k:
                path.append(self.subtree_hash(start + k, end))
                end = start + k
            else:
                path.append(self.subtree_hash(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """``PROOF(first, D[0:second])`` of RFC 9162 §2.1.4.1 (``0 < first <= second``)."""
        second = self.size if second is None else second
        self._check_size(second)
        if not 0 < first <= second:
            raise ValueError(f"no consistency proof from size {first} to size {second}")
        # SUBPROOF(m, D[start:end], b), unrolled: the RFC appends each sibling after recursing,
        # so the siblings are collected top-down and reversed at the end.
        path: list[bytes] = []
        start, end, m, complete = 0, second, first, True
        while m != end - start:
            k = split_point(end - start)
            if m <= k:
                path.append(self.subtree_hash(start + k, end))
                end = start + k
            else:
                path.append(self.subtree_hash(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            path.append(self.subtree_hash(start, end))
        path.reverse()
        return path

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` over the given leaf hashes (RFC 9162 §2.1.1)."""
    return MerkleTree(leaf_hashes).root()


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof by the algorithm of RFC 9162 §2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof by the algorithm of RFC 9162 §2.1.4.2.

    The RFC states it for ``0 < first < second``; equal sizes are consistent exactly when the
    roots are equal and the proof is empty, and the empty tree is a prefix of every tree.
    """
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
