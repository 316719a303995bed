"""``verify_run``: check a run folder's ledger, and the checkpoints beside it, from scratch.

Nothing stored is trusted: every leaf hash is recomputed from its entry, every signed tree
head's root from the leaves (RFC 9162 §2.1.1), consistency between successive heads and with
outside anchors is proven and checked (§2.1.4), every entry's inclusion in the latest head is
proven and checked (§2.1.3), and the round protocol is replayed (``protocol.ProtocolCheck``).
The run folder's ``config.yaml`` must still hash to the config fingerprint the log signed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgen.config import load_config
from fedgen.errors import ConfigError
from fedgen.ledger.digest import canonical_json, file_digest
from fedgen.ledger.entries import Entry, body_problems, leaf_data
from fedgen.ledger.errors import LedgerError
from fedgen.ledger.keys import public_key_from_hex, public_key_hex
from fedgen.ledger.merkle import MerkleTree, leaf_hash
from fedgen.ledger.proofs import check_anchors, check_heads, check_inclusion, check_tail
from fedgen.ledger.protocol import ProtocolCheck
from fedgen.ledger.sqlite_file import RawRow
from fedgen.ledger.store import Ledger

LEDGER_FILE = "ledger.sqlite"
#: The run's resolved recipe, which ``fedgen run`` writes beside the ledger.
CONFIG_FILE = "config.yaml"
#: What may change in ``config.yaml`` without changing its fingerprint
#: (``ExperimentConfig.fingerprint``): what does not shape the trained weights.
_UNFINGERPRINTED = "federation.rounds, eval, checkpoint, name, ledger, tensorboard, data.data_dir"


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
    """Verify ``run_dir/ledger.sqlite``, the checkpoints in ``run_dir/checkpoints`` and
    ``run_dir/config.yaml`` (against the config fingerprint the log signed).

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
    _check_config(report.run_dir, entries, report.problems, report.notes)
    key = _server_key(run_start.get("server_public_key"), server_public_key, report.problems)
    heads = check_heads(head_rows, tree, entries, key, run_start.get("run_id", ""), report.problems)
    check_inclusion(tree, heads, report.problems)
    check_anchors(anchors, tree, heads, report.problems)
    check_tail(tree, heads, entries, report.problems)
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


def _check_checkpoint_files(
    run_dir: Path, logged: dict[str, list[Entry]], problems: list[str]
) -> int:
    """Each ``checkpoints/round_*.ckpt`` needs a checkpoint entry with its digest; entries whose
    files are gone were pruned, which is fine. Returns how many files were checked."""
    files = sorted((run_dir / "checkpoints").glob("round_*.ckpt"))
    # A logged checkpoint copied under another name is known by its bytes.
    names_by_digest = {e.body["digest"]: name for name, found in logged.items() for e in found}
    for path in files:
        name = f"checkpoints/{path.name}"
        entry = logged[name][-1] if name in logged else None
        try:
            digest = file_digest(path)
        except LedgerError as err:
            where = f"round {entry.round}: " if entry is not None else ""
            problems.append(f"{where}checkpoint {name}: {err}")
            continue
        if entry is None:
            problems.append(_unlogged_checkpoint(name, names_by_digest.get(digest)))
        elif digest != entry.body["digest"]:
            problems.append(
                f"round {entry.round}: checkpoint {name} differs from its ledger entry (file "
                f"sha256 {digest[:12]}…, logged {entry.body['digest'][:12]}…): the file was "
                f"replaced or corrupted"
            )
    return len(files)


def _unlogged_checkpoint(name: str, copy_of: str | None) -> str:
    """The problem line for a checkpoint no entry names. It stays a problem, since nothing
    vouches for the file, but it says tampering only when the bytes prove it: an honest run
    resumed with ``ledger: false`` writes such files too, as does a log cut back."""
    if copy_of is not None:
        return (
            f"{name}: no checkpoint entry names this file, and its bytes are those logged for "
            f"{copy_of}: a copy put there from outside the run; remove it"
        )
    return (
        f"{name}: no checkpoint entry names this file, so the ledger does not cover it: it was "
        f"written while the run kept no ledger (resumed with ledger: false), or the log was "
        f"cut back, or the file was put there from outside; which one, verify cannot tell"
    )


def _check_config(
    run_dir: Path, entries: list[Entry], problems: list[str], notes: list[str]
) -> None:
    """``config.yaml`` must hash to the newest config fingerprint the log signed.

    ``run_start`` signs one; a ``resume`` entry carrying a ``fingerprint`` (bodies may hold
    more fields than the schema names) would supersede it. The fingerprint is recomputed
    with the function the run used, so an edit that ``fedgen sample``/``eval`` would refuse
    ("belongs to a different experiment") is caught here.
    """
    signed = [
        e
        for e in entries
        if e.kind in ("run_start", "resume") and isinstance(e.body.get("fingerprint"), str)
    ]
    if not signed:
        return  # no run_start entry: already a problem, and nothing to compare with
    entry = signed[-1]
    logged = str(entry.body["fingerprint"])
    where = "run_start" if entry.kind == "run_start" else f"resume entry (seq {entry.seq})"
    path = run_dir / CONFIG_FILE
    if not path.exists():
        notes.append(
            f"{CONFIG_FILE}: missing, so the run's config is not checked against the "
            f"fingerprint {logged} its {where} signed"
        )
        return
    try:
        found_all = load_config(path, validate_components=False).fingerprints()
    except ConfigError as err:
        problems.append(
            f"{CONFIG_FILE}: cannot be read as the run's recipe, so it cannot be checked "
            f"against the fingerprint {logged} the ledger's {where} signed: {err}; restore the "
            f"run's own {CONFIG_FILE}"
        )
        return
    if logged not in found_all:
        problems.append(
            f"{CONFIG_FILE}: its fingerprint {found_all[0]} is not {logged}, which the ledger's "
            f"{where} signed: a setting that shapes the trained weights was changed after the "
            f"run (only {_UNFINGERPRINTED} may change), so fedgen sample/eval refuse the run; "
            f"restore the run's own {CONFIG_FILE}"
        )
