"""``verify_run``: check a run folder's ledger, and the checkpoints beside it, from scratch.

Nothing stored is trusted: every leaf hash is recomputed from its entry, every signed tree
head's root from the leaves (RFC 9162 §2.1.1), consistency between successive heads and with
outside anchors is proven and checked (§2.1.4), every entry's inclusion in the latest head is
proven and checked (§2.1.3), and the round protocol is replayed (``protocol.ProtocolCheck``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from fedgen.ledger.digest import canonical_json, file_digest
from fedgen.ledger.entries import Entry, TreeHead, body_problems, leaf_data
from fedgen.ledger.errors import LedgerError
from fedgen.ledger.keys import public_key_from_hex, public_key_hex, verify_signature
from fedgen.ledger.merkle import (
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from fedgen.ledger.protocol import ProtocolCheck
from fedgen.ledger.store import Ledger, RawRow

LEDGER_FILE = "ledger.sqlite"
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")


@dataclass
class LedgerReport:
    """What ``verify_run`` found: ``problems`` (each one line naming the round, the client when
    there is one, and what differs), ``notes`` (worth knowing, not failures) and ``counts``."""

    run_dir: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The report as text lines: a verdict, the counts, then problems and notes."""
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        verdict = "ledger OK" if self.ok else f"ledger FAILED ({len(self.problems)} problems)"
        out = [f"{verdict}: {self.run_dir}" + (f" ({counts})" if counts else "")]
        out += [f"problem: {p}" for p in self.problems]
        out += [f"note: {n}" for n in self.notes]
        return out


def verify_run(
    run_dir: str | Path,
    server_public_key: str | None = None,
    anchors: Sequence[tuple[int, str]] = (),
) -> LedgerReport:
    """Verify ``run_dir/ledger.sqlite`` and the checkpoints in ``run_dir/checkpoints``.

    Args:
        server_public_key: the server key (hex) to trust; by default the run_start entry's.
        anchors: ``(size, root hex)`` tree heads kept outside the ledger (in checkpoints); the
            log must be consistent with each, which catches a ledger cut back to an earlier,
            still valid, prefix.

    Never raises for a damaged or tampered ledger: that is a problem in the report.
    """
    report = LedgerReport(Path(run_dir))
    try:
        with Ledger.open(report.run_dir / LEDGER_FILE, readonly=True) as ledger:
            rows, head_rows = ledger.raw_rows(), ledger.raw_heads()
    except LedgerError as err:
        report.problems.append(f"ledger: {err}")
        return report
    entries, tree = _check_leaves(rows, report.problems)
    run_start = entries[0].body if entries and entries[0].kind == "run_start" else {}
    # What names a round or client comes first; the proofs that back it follow.
    protocol = ProtocolCheck()
    protocol.run(entries, run_start.get("rounds"))
    report.problems += protocol.problems
    report.notes += protocol.notes
    checked = _check_checkpoint_files(report.run_dir, protocol.checkpoints, report.problems)
    key = _server_key(run_start.get("server_public_key"), server_public_key, report.problems)
    heads = _check_heads(
        head_rows, tree, entries, key, run_start.get("run_id", ""), report.problems
    )
    _check_inclusion(tree, heads, report.problems)
    _check_anchors(anchors, tree, heads, report.problems)
    _check_tail(tree, heads, entries, report.problems)
    report.counts = {
        "entries": tree.size,
        "tree heads": len(heads),
        "rounds": len(protocol.rounds),
        "clients": len(protocol.keys),
        "updates": sum(e.kind == "update" for e in entries),
        "failures": sum(e.kind == "failure" for e in entries),
        "resumes": sum(e.kind == "resume" for e in entries),
        "checkpoint files": checked,
    }
    return report


def _check_leaves(rows: list[RawRow], problems: list[str]) -> tuple[list[Entry], MerkleTree]:
    """Parse every row and recompute its leaf hash; the tree is built from recomputed hashes."""
    entries: list[Entry] = []
    tree = MerkleTree()
    gap_reported = False
    for position, (seq, round, kind, body_text, stored) in enumerate(rows):
        if seq != position and not gap_reported:
            problems.append(
                f"ledger: entry seq {seq} stands at position {position}: entries were deleted "
                f"or renumbered"
            )
            gap_reported = True
        body = _parse(body_text)
        well_typed = (
            type(seq) is int
            and (round is None or type(round) is int)
            and isinstance(kind, str)
            and isinstance(body, dict)
        )
        if not well_typed:
            problems.append(f"ledger: entry seq {seq!r} is malformed (not a JSON object entry)")
            tree.append(leaf_hash(repr((seq, round, kind, body_text)).encode()))
            continue
        entry = Entry(seq, round, kind, body, stored)
        recomputed = leaf_hash(leaf_data(kind, round, body))
        tree.append(recomputed)
        if stored != recomputed.hex():
            problems.append(f"{entry.where()}: stored leaf hash does not match the entry")
        if canonical_json(body) != body_text:
            problems.append(f"{entry.where()}: body text is not canonical JSON (edited by hand)")
        contract = body_problems(kind, body, round)
        problems += [f"{entry.where()}: {p}" for p in contract]
        if not contract:
            entries.append(entry)
    return entries, tree


def _parse(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _server_key(logged: str | None, pinned: str | None, problems: list[str]) -> str | None:
    if pinned is not None:
        try:
            pinned = public_key_hex(public_key_from_hex(pinned))
        except LedgerError as err:
            problems.append(f"ledger: the pinned server key is unusable: {err}")
            return None
        if logged is not None and logged != pinned:
            problems.append(
                f"ledger: run_start names server key {logged[:12]}…, not the pinned key "
                f"{pinned[:12]}…: the log was signed by another server"
            )
        return pinned
    if logged is None:
        problems.append("ledger: no run_start entry names the server key; tree heads are unchecked")
    return logged


def _check_heads(
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
            f"{bad_signatures[0]}: signature does not verify under the server key {key}"
            + _and_more(bad_signatures, "tree heads")
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


def _check_inclusion(tree: MerkleTree, heads: list[TreeHead], problems: list[str]) -> None:
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


def _check_anchors(
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


def _check_tail(
    tree: MerkleTree, heads: list[TreeHead], entries: list[Entry], problems: list[str]
) -> None:
    signed = heads[-1].size if heads else 0
    if signed < tree.size:
        problems.append(
            f"ledger: {tree.size - signed} entries after the last signed tree head (seq "
            f"{signed}..{tree.size - 1}, {entries_between(entries, signed, tree.size)}) are "
            f"unsigned: the run stopped before signing them, or they were added afterwards"
        )


def _check_checkpoint_files(
    run_dir: Path, logged: dict[str, list[Entry]], problems: list[str]
) -> int:
    """Each ``checkpoints/round_*.ckpt`` needs a checkpoint entry with its digest; entries whose
    files are gone were pruned, which is fine. Returns how many files were checked."""
    files = sorted((run_dir / "checkpoints").glob("round_*.ckpt"))
    for path in files:
        name = f"checkpoints/{path.name}"
        if name not in logged:
            problems.append(f"{name}: no checkpoint entry names this file (added from outside)")
            continue
        entry = logged[name][-1]
        try:
            digest = file_digest(path)
        except LedgerError as err:
            problems.append(f"round {entry.round}: checkpoint {name}: {err}")
            continue
        if digest != entry.body["digest"]:
            problems.append(
                f"round {entry.round}: checkpoint {name} differs from its ledger entry (file "
                f"sha256 {digest[:12]}…, logged {entry.body['digest'][:12]}…): the file was "
                f"replaced or corrupted"
            )
    return len(files)
