"""Readable lines of a ledger, for ``fedgen ledger show RUN [--round R]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedgen.ledger.digest import canonical_json
from fedgen.ledger.entries import Entry, TreeHead
from fedgen.ledger.store import Ledger

_WIDTH = 120


def _h(value: Any) -> str:
    """A hex digest, key or signature, shortened."""
    return f"{value[:12]}…" if isinstance(value, str) and len(value) > 12 else str(value)


def _ids(values: Any) -> str:
    return (
        "[" + ", ".join(str(v) for v in values) + "]" if isinstance(values, list) else str(values)
    )


_DETAILS: dict[str, Callable[[dict[str, Any]], str]] = {
    "run_start": lambda b: (
        f"run {_h(b['run_id'])}  server key {_h(b['server_public_key'])}  rounds {b['rounds']}  "
        f"fingerprint {_h(b['fingerprint'])}"
    ),
    "enrol": lambda b: f"client {b['client_id']}  key {_h(b['public_key'])}",
    "round_start": lambda b: (
        f"cohort {_ids(b['cohort'])}  global {_h(b['global_digest'])}  "
        f"config {canonical_json(b['config'])}"
    ),
    "update": lambda b: (
        f"client {b['client_id']}  examples {b['num_examples']}  digest {_h(b['digest'])}  "
        f"signature {_h(b['signature'])}"
    ),
    "failure": lambda b: f"client {b['client_id']}  reason: {b['reason']}",
    "aggregate": lambda b: (
        f"digest {_h(b['digest'])}  clients {_ids(b['clients'])}"
        + (f"  secure, sum {_h(b['sum_digest'])}" if b["secure"] else "")
    ),
    "checkpoint": lambda b: f"{b['file']}  digest {_h(b['digest'])}",
    "resume": lambda b: (
        f"from round {b['from_round']}  checkpoint {b['checkpoint']}  head size {b['head_size']}"
    ),
}


def format_entry(entry: Entry) -> str:
    """One line: seq, round, kind and the body's fields that matter to a reader."""
    round = "-" if entry.round is None else str(entry.round)
    try:
        details = _DETAILS[entry.kind](entry.body)
    except (KeyError, TypeError):
        details = canonical_json(entry.body)
    line = f"{entry.seq:>7}  {round:>5}  {entry.kind:<11}  {details}"
    return line if len(line) <= _WIDTH else line[: _WIDTH - 1] + "…"


def format_head(head: TreeHead) -> str:
    """One line for a signed tree head, set apart from the entries."""
    where = "before round 0" if head.round is None else f"round {head.round}"
    return (
        f"{'':>7}  {'':>5}  -- tree head size {head.size} ({where}), root {_h(head.root)}, signed"
    )


def format_entries(ledger: Ledger, round: int | None = None) -> list[str]:
    """One readable line per entry (of ``round`` only, if given), in log order; each signed
    tree head follows the last entry it covers.

    Raises:
        LedgerError: a stored body is not JSON (run ``verify_run`` to see what is wrong).
    """
    heads = [h for h in ledger.heads() if round is None or h.round == round]
    lines = [f"{'seq':>7}  {'round':>5}  {'kind':<11}  details"]
    for entry in ledger.entries(round=round):
        while heads and heads[0].size <= entry.seq:
            lines.append(format_head(heads.pop(0)))
        lines.append(format_entry(entry))
    lines += [format_head(h) for h in heads]
    return lines
