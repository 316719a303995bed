"""Property tests: bodies round-trip, and no damage to a ledger file escapes as anything but a
reported problem or a LedgerError."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_run import build_run

from fedgen.ledger import (
    Ledger,
    LedgerError,
    canonical_json,
    generate_key,
    leaf_data,
    public_key_hex,
    verify_run,
)
from fedgen.ledger.merkle import leaf_hash

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _temporary_folder(prefix: str) -> Path:
    """A folder removed when the test process exits (hypothesis tests take no tmp_path;
    a folder per run used to pile up in /tmp)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def body_ledger() -> Path:
    """One ledger the round-trip examples append to (built once: appends are fsynced)."""
    path = _temporary_folder("ledger-bodies-") / "ledger.sqlite"
    with Ledger.open(path, create=True) as ledger:
        ledger.append(
            "run_start",
            {
                "run_id": "ab",
                "server_public_key": public_key_hex(generate_key()),
                "fingerprint": "f",
                "rounds": 1,
            },
        )
    return path


@settings(max_examples=100, deadline=None)
@given(extra=json_values, reason=st.text(), client=st.integers(0, 10**30) | st.text(min_size=1))
def test_entry_bodies_round_trip_through_the_file(extra: Any, reason: str, client: Any):
    body = {"round": 0, "client_id": client, "reason": reason, "extra": extra}
    with Ledger.open(body_ledger()) as ledger:
        seq = ledger.append("failure", body)
    with Ledger.open(body_ledger(), readonly=True) as ledger:
        (entry,) = [e for e in ledger.entries(kind="failure") if e.seq == seq]
        (raw,) = [r for r in ledger.raw_rows() if r[0] == seq]
    assert entry.body == body
    assert raw[3] == canonical_json(body) and raw[3].isascii()
    assert json.loads(raw[3]) == body
    assert entry.leaf_hash == leaf_hash(leaf_data("failure", 0, body)).hex()


@functools.cache
def honest_run() -> tuple[Path, bytes, tuple[list[Any], list[Any]]]:
    """A small honest run folder, its ledger bytes and its logical content (built once)."""
    run = build_run(_temporary_folder("ledger-prop-") / "run", rounds=2, clients=2)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        content = (ledger.raw_rows(), ledger.raw_heads())
    return run.run_dir, run.ledger_path.read_bytes(), content


def check_damaged(data: bytes) -> None:
    """Write ``data`` as the ledger of a copy of the honest run; open and verify it."""
    source, original, content = honest_run()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(source, run_dir)
        (run_dir / "ledger.sqlite").write_bytes(data)
        try:
            with Ledger.open(run_dir / "ledger.sqlite", readonly=True) as ledger:
                opened = (ledger.raw_rows(), ledger.raw_heads())
        except LedgerError:
            opened = None
        report = verify_run(run_dir)
        if report.ok:
            # Accepted damage must have left every entry and head as it was (free space,
            # schema text, unused bytes).
            assert opened == content, report.lines()
        else:
            assert report.problems and all(isinstance(p, str) for p in report.problems)
        assert data != original or report.ok


@FAST
@given(data=st.binary(max_size=3000) | st.binary(max_size=3000).map(b"SQLite format 3\x00".__add__))
def test_arbitrary_bytes_as_a_ledger_give_problems_or_ledger_errors_only(data: bytes):
    check_damaged(data)


@FAST
@given(st.data())
def test_single_byte_corruptions_give_problems_or_leave_the_content_intact(data: st.DataObject):
    _, original, _ = honest_run()
    offset = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(original)
    damaged[offset] ^= flip
    check_damaged(bytes(damaged))


@FAST
@given(st.data())
def test_overwritten_spans_give_problems_or_leave_the_content_intact(data: st.DataObject):
    _, original, _ = honest_run()
    offset = data.draw(st.integers(0, len(original) - 1))
    chunk = data.draw(st.binary(min_size=1, max_size=64))
    damaged = original[:offset] + chunk + original[offset + len(chunk) :]
    check_damaged(damaged[: len(original)] if len(damaged) > len(original) else damaged)
