"""The Merkle tree against RFC 6962's published vectors, a slow reference, and pymerkle."""

from __future__ import annotations

import hashlib
import random

import pymerkle
import pytest

from fedgen.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

# The certificate-transparency reference implementation's test vectors, as republished in
# github.com/transparency-dev/merkle testonly/constants.go and proof/verify_test.go.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = {
    0: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
# (0-based leaf index, tree size, audit path)
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
# (first size, second size, consistency proof)
CT_CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def ct_tree() -> MerkleTree:
    return MerkleTree(leaf_hash(d) for d in CT_LEAVES)


# -- a slow reference written straight from the RFC 9162 §2.1 recursions -----------------------


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def random_leaves(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(0, 40)) for _ in range(n)]


# -- RFC 6962 / certificate-transparency vectors ---------------------------------------------


def test_roots_match_ct_vectors_for_every_size():
    tree = ct_tree()
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    for size, expected in CT_ROOTS.items():
        assert tree.root(size).hex() == expected, size
        assert root_hash([leaf_hash(d) for d in CT_LEAVES[:size]]).hex() == expected


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_inclusion_proofs_match_ct_vectors(index, size, path):
    tree = ct_tree()
    proof = tree.inclusion_proof(index, size)
    assert [p.hex() for p in proof] == path
    assert verify_inclusion(index, size, tree.leaf(index), proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("first", "second", "path"), CT_CONSISTENCY)
def test_consistency_proofs_match_ct_vectors(first, second, path):
    tree = ct_tree()
    proof = tree.consistency_proof(first, second)
    assert [p.hex() for p in proof] == path
    r1, r2 = bytes.fromhex(CT_ROOTS[first]), bytes.fromhex(CT_ROOTS[second])
    assert verify_consistency(first, second, r1, r2, proof)


# -- the fast tree against the slow reference ------------------------------------------------


def test_roots_and_proofs_match_the_reference_for_sizes_1_to_40():
    leaves = random_leaves(40, seed=1)
    tree = MerkleTree(leaf_hash(d) for d in leaves)
    for n in range(1, 41):
        assert tree.root(n) == ref_mth(leaves[:n])
        for i in range(n):
            assert tree.inclusion_proof(i, n) == ref_path(i, leaves[:n])
        for m in range(1, n + 1):
            assert tree.consistency_proof(m, n) == ref_subproof(m, leaves[:n], True)


def test_appending_one_leaf_at_a_time_gives_the_same_roots_as_building_at_once():
    hashes = [leaf_hash(d) for d in random_leaves(70, seed=2)]
    grown = MerkleTree()
    for n, h in enumerate(hashes, start=1):
        grown.append(h)
        assert grown.root() == MerkleTree(hashes[:n]).root()


# -- verification rejects what it must -------------------------------------------------------


def flipped(proof: list[bytes], i: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ 8]) + out[i][1:]
    return out


def test_inclusion_verification_rejects_corrupted_proofs():
    tree = MerkleTree(leaf_hash(d) for d in random_leaves(23, seed=3))
    for n in (1, 2, 5, 8, 13, 23):
        root = tree.root(n)
        for i in range(n):
            leaf, proof = tree.leaf(i), tree.inclusion_proof(i, n)
            assert verify_inclusion(i, n, leaf, proof, root)
            assert not verify_inclusion(i, n, leaf_hash(b"other"), proof, root)
            assert not verify_inclusion(i, n, leaf, proof, EMPTY_ROOT)
            assert not verify_inclusion(i, n, leaf, [*proof, root], root)
            assert not verify_inclusion(n, n, leaf, proof, root)
            assert not verify_inclusion(i, 2 * n, leaf, proof, root)
            for j in range(len(proof)):
                assert not verify_inclusion(i, n, leaf, flipped(proof, j), root)
            if proof:
                assert not verify_inclusion(i, n, leaf, proof[:-1], root)
                assert not verify_inclusion(i ^ 1, n, leaf, proof, root)


def test_consistency_verification_rejects_corrupted_proofs():
    tree = MerkleTree(leaf_hash(d) for d in random_leaves(21, seed=4))
    for n in range(2, 22):
        for m in range(1, n):
            r1, r2, proof = tree.root(m), tree.root(n), tree.consistency_proof(m, n)
            assert verify_consistency(m, n, r1, r2, proof)
            assert not verify_consistency(m, n, r2, r1, proof)
            assert not verify_consistency(m, n, r1, r2, [])
            assert not verify_consistency(m, n, r1, r2, proof[:-1])
            assert not verify_consistency(m, n, r1, r2, [*proof, r1])
            assert not verify_consistency(m + 1, n, r1, r2, proof) or m + 1 == n
            for j in range(len(proof)):
                assert not verify_consistency(m, n, r1, r2, flipped(proof, j))


def test_equal_and_empty_sizes_follow_the_rfc_edge_cases():
    tree = ct_tree()
    r = tree.root(5)
    assert verify_consistency(5, 5, r, r, [])
    assert not verify_consistency(5, 5, r, tree.root(4), [])
    assert not verify_consistency(5, 5, r, r, [r])
    assert verify_consistency(0, 5, EMPTY_ROOT, r, [])
    assert not verify_consistency(6, 5, r, r, [])
    with pytest.raises(ValueError):
        tree.consistency_proof(0, 5)
    with pytest.raises(ValueError):
        tree.inclusion_proof(8, 8)
    with pytest.raises(ValueError):
        tree.root(9)


# -- an independent implementation: pymerkle in its RFC 6962 (security) mode ------------------


def test_pymerkle_agrees_on_roots_and_proofs_for_random_trees_of_1_to_70_leaves():
    for n in range(1, 71):
        data = random_leaves(n, seed=100 + n)
        ours = MerkleTree(leaf_hash(d) for d in data)
        theirs = pymerkle.InmemoryTree(algorithm="sha256")  # security mode: 0x00/0x01 prefixes
        for d in data:
            theirs.append_entry(d)
        assert theirs.get_root(n) == ours.root(n)
        rng = random.Random(n)
        for i in {0, n - 1, rng.randrange(n)}:
            # pymerkle's path starts with the leaf itself, then the RFC audit path.
            their_path = theirs.prove_inclusion(i + 1, n).path
            assert their_path[0] == ours.leaf(i)
            assert their_path[1:] == ours.inclusion_proof(i, n)
        m = rng.randrange(1, n + 1)
        # pymerkle's consistency proofs are laid out differently from RFC 9162's, so each side
        # checks against the other's roots instead of comparing paths.
        their_proof = theirs.prove_consistency(m, n)
        pymerkle.verify_consistency(ours.root(m), ours.root(n), their_proof)
        assert verify_consistency(
            m, n, theirs.get_root(m), theirs.get_root(n), ours.consistency_proof(m, n)
        )
