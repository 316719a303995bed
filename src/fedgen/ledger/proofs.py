"""The cryptographic half of ``verify_run``: signed tree heads against the entries.

Each head's signature is checked, and its root against the root recomputed from the entries
(RFC 9162 §2.1.1); consistency proofs between successive heads and from outside anchors are
generated from the entries and verified against the signed roots (§2.1.4), as is an inclusion
proof of every entry in the latest head (§2.1.3). A signed root that no longer matches points
at the span of entries added since the last head that still matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

from fedgen.ledger.entries import Entry, TreeHead
from fedgen.ledger.keys import verify_signature
from fedgen.ledger.merkle import MerkleTree, verify_consistency, verify_inclusion
from fedgen.ledger.sqlite_file import RawRow

_DIGEST = re.compile(r"[0-9a-f]{64}\Z")


def check_heads(
    rows: list[RawRow],
    tree: MerkleTree,
    entries: list[Entry],
    key: str | None,
    log_id: str,
    problems: list[str],
) -> list[TreeHead]:
    """Check each head's signature and root, and consistency between successive heads.

    Returns the well-formed heads within the log, smallest first, with their signed roots.
    """
    heads: list[TreeHead] = []
    bad_signatures: list[str] = []
    beyond: list[str] = []
    for size, root, round, signature, _ in rows:
        if not (
            type(size) is int
            and size > 0
            and isinstance(root, str)
            and _DIGEST.match(root)
            and (round is None or type(round) is int)
            and isinstance(signature, str)
        ):
            problems.append(f"tree head {size!r}: malformed row")
            continue
        head = TreeHead(size, root, round, signature)
        label = _head_label(head)
        if key is not None and not verify_signature(key, head.message(log_id), signature):
            bad_signatures.append(label)
        if size > tree.size:
            beyond.append(label)
            continue
        heads.append(head)
    if bad_signatures:
        problems.append(
            f"{bad_signatures[0]}: signature does not verify under the server key "
            f"{(key or '')[:12]}…" + _and_more(bad_signatures, "tree heads")
        )
    if beyond:
        problems.append(
            f"{beyond[0]}: the ledger holds only {tree.size} entries: entries it signed were "
            f"removed (the ledger was truncated)" + _and_more(beyond, "tree heads")
        )

    first_bad: int | None = None
    good_size = 0
    bad_count = 0
    for i, head in enumerate(heads):
        if tree.root(head.size).hex() == head.root:
            good_size = head.size if first_bad is None else good_size
            continue
        bad_count += 1
        if first_bad is None:
            first_bad = i
            span = entries_between(entries, good_size, head.size)
            problems.append(
                f"{_head_label(head)}: signed root differs from the root recomputed from the "
                f"entries: an entry among seq {good_size}..{head.size - 1} ({span}) was "
                f"changed, inserted, removed or reordered"
            )
    if bad_count > 1:
        problems.append(f"ledger: {bad_count - 1} later tree heads also differ (they include it)")

    failed = [
        (a, b)
        for a, b in pairwise(heads)
        if not verify_consistency(
            a.size,
            b.size,
            bytes.fromhex(a.root),
            bytes.fromhex(b.root),
            tree.consistency_proof(a.size, b.size),
        )
    ]
    if failed:
        a, b = failed[0]
        more = f"; {len(failed) - 1} later pairs fail too" if len(failed) > 1 else ""
        problems.append(
            f"{_head_label(b)}: its consistency proof from tree head size {a.size} does not "
            f"verify against the signed roots: the log was rewritten between them{more}"
        )
    return heads


def _and_more(items: list[str], what: str) -> str:
    return f"; so do {len(items) - 1} later {what}" if len(items) > 1 else ""


def _head_label(head: TreeHead) -> str:
    where = "before round 0" if head.round is None else f"round {head.round}"
    return f"{where}: tree head size {head.size}"


def entries_between(entries: list[Entry], start: int, end: int) -> str:
    """What the entries in seq ``start..end-1`` are, for messages: their rounds, or the
    run-level kinds and clients when they belong to no round."""
    span = [e for e in entries if start <= e.seq < end]
    if not span:
        return "unreadable entries"
    rounds = sorted({e.round for e in span if e.round is not None})
    if rounds:
        return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(map(str, rounds))
    clients = [str(e.client_id) for e in span if e.client_id is not None]
    kinds = sorted({e.kind for e in span})
    return " and ".join(kinds) + (f" of clients {', '.join(clients)}" if clients else "")


def check_inclusion(tree: MerkleTree, heads: list[TreeHead], problems: list[str]) -> None:
    """Prove and check every leaf's inclusion under the latest signed head (RFC 9162 §2.1.3)."""
    if not heads:
        return
    head = heads[-1]
    root = bytes.fromhex(head.root)
    failed = [
        i
        for i in range(head.size)
        if not verify_inclusion(
            i, head.size, tree.leaf(i), tree.inclusion_proof(i, head.size), root
        )
    ]
    if failed:
        problems.append(
            f"{_head_label(head)}: {len(failed)} of its {head.size} entries have no valid "
            f"inclusion proof against the signed root (first: seq {failed[0]})"
        )


def check_anchors(
    anchors: Sequence[tuple[int, str]], tree: MerkleTree, heads: list[TreeHead], problems: list[str]
) -> None:
    """Prove the log consistent with each outside ``(size, root)`` (RFC 9162 §2.1.4)."""
    for size, root in anchors:
        if not (type(size) is int and size > 0 and isinstance(root, str) and _DIGEST.match(root)):
            problems.append(f"anchor {(size, root)!r}: not a (size, sha256 hex root) pair")
            continue
        if size > tree.size:
            problems.append(
                f"anchor at size {size}: the ledger holds only {tree.size} entries: it was cut "
                f"back after the anchor was taken (truncated)"
            )
            continue
        later = [h for h in heads if h.size >= size]
        if later:
            target, target_root = later[-1].size, bytes.fromhex(later[-1].root)
        else:
            target, target_root = tree.size, tree.root()
        proof = tree.consistency_proof(size, target)
        if not verify_consistency(size, target, bytes.fromhex(root), target_root, proof):
            problems.append(
                f"anchor at size {size} (root {root[:12]}…): the log is not consistent with "
                f"it: entries before seq {size} were rewritten"
            )


def check_tail(
    tree: MerkleTree, heads: list[TreeHead], entries: list[Entry], problems: list[str]
) -> None:
    signed = heads[-1].size if heads else 0
    if signed < tree.size:
        problems.append(
            f"ledger: {tree.size - signed} entries after the last signed tree head (seq "
            f"{signed}..{tree.size - 1}, {entries_between(entries, signed, tree.size)}) are "
            f"unsigned: the run stopped before signing them, or they were added afterwards"
        )
