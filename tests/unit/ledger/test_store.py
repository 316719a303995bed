"""The SQLite ledger: appending, signing heads, reopening, refusing what breaks the contract."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys

import pytest
from ledger_run import build_run, log_round, start_run, tamper

from fedgen.ledger import (
    Ledger,
    LedgerError,
    generate_key,
    leaf_data,
    public_key_hex,
    sign,
    update_message,
    verify_run,
    verify_signature,
)
from fedgen.ledger.merkle import MerkleTree, leaf_hash

DIGEST = "ab" * 32


def test_a_built_run_reopens_with_the_same_entries_root_and_heads(tmp_path):
    run = build_run(tmp_path / "run", rounds=3, clients=3)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        entries = ledger.entries()
        # run_start + 3 enrol + 3 rounds x (round_start + 3 updates + aggregate + checkpoint)
        assert ledger.size == len(entries) == 1 + 3 + 3 * 6
        assert [e.seq for e in entries] == list(range(ledger.size))
        assert ledger.root() == MerkleTree(bytes.fromhex(e.leaf_hash) for e in entries).root().hex()
        heads = ledger.heads()
        assert [h.round for h in heads] == [None, 0, 1, 2]
        assert ledger.head() == heads[-1] and heads[-1].size == ledger.size
        assert [h.anchor for h in heads[1:]] == run.anchors
        assert [e.body["client_id"] for e in ledger.entries(round=1, kind="update")] == [0, 1, 2]
        assert [e.kind for e in ledger.entries(kind="enrol")] == ["enrol"] * 3


def test_tree_head_signature_is_the_servers_over_log_size_root_and_round(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        head = ledger.head()
        assert head is not None
        assert head.root == ledger.root(head.size)
        pub = public_key_hex(run.server_key)
        assert verify_signature(pub, head.message(run.run_id), head.signature)
        assert not verify_signature(pub, head.message("another-run"), head.signature)


def test_sign_head_again_without_new_entries_returns_the_stored_head(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    with Ledger.open(run.ledger_path) as ledger:
        before = ledger.heads()
        assert ledger.sign_head(0, run.server_key) == before[-1]
        assert ledger.heads() == before


def test_sign_head_refuses_a_key_other_than_the_run_start_server_key(tmp_path):
    run = build_run(tmp_path / "run", rounds=1, sign_head=False)
    with Ledger.open(run.ledger_path) as ledger:
        with pytest.raises(LedgerError, match="server key"):
            ledger.sign_head(0, generate_key())
        with pytest.raises(LedgerError, match="an int >= 0"):
            ledger.sign_head(-1, run.server_key)
        assert ledger.heads()[-1].round is None  # only the pre-round head


def test_append_refuses_entries_that_break_the_contract(tmp_path):
    run = start_run(tmp_path / "run", clients=2)
    with Ledger.open(run.ledger_path) as ledger:
        size = ledger.size
        with pytest.raises(LedgerError, match="unknown entry kind 'note'"):
            ledger.append("note", {"text": "hi"})
        with pytest.raises(LedgerError, match="lacks the field 'digest'"):
            ledger.append(
                "aggregate", {"round": 0, "secure": False, "sum_digest": None, "clients": []}
            )
        with pytest.raises(LedgerError, match="round 1 but its body says round 0"):
            ledger.append("failure", {"round": 0, "client_id": 1, "reason": "x"}, round=1)
        with pytest.raises(LedgerError, match="belongs to no round"):
            ledger.append("enrol", {"client_id": 9, "public_key": DIGEST}, round=0)
        with pytest.raises(LedgerError, match="only it, is run_start"):
            ledger.append(
                "run_start",
                {"run_id": "00", "server_public_key": DIGEST, "fingerprint": "", "rounds": 1},
            )
        with pytest.raises(LedgerError, match="client 1 is enrolled already"):
            ledger.append("enrol", {"client_id": 1, "public_key": public_key_hex(generate_key())})
        with pytest.raises(LedgerError, match="plain JSON"):
            ledger.append(
                "failure", {"round": 0, "client_id": 1, "reason": "x", "loss": float("nan")}
            )
        assert ledger.size == size


def test_append_refuses_an_update_not_signed_by_the_clients_enrolled_key(tmp_path):
    run = start_run(tmp_path / "run", clients=2)
    body = {"round": 0, "client_id": 1, "digest": DIGEST, "num_examples": 5}
    with Ledger.open(run.ledger_path) as ledger:
        stranger = sign(generate_key(), update_message(run.run_id, 0, 1, DIGEST))
        with pytest.raises(LedgerError, match="round 0, client 1: the signature does not verify"):
            ledger.append("update", {**body, "signature": stranger})
        other_round = sign(run.client_keys[1], update_message(run.run_id, 1, 1, DIGEST))
        with pytest.raises(LedgerError, match="does not verify"):
            ledger.append("update", {**body, "signature": other_round})
        with pytest.raises(LedgerError, match="client 5 is not enrolled"):
            ledger.append("update", {**body, "client_id": 5, "signature": stranger})
        good = sign(run.client_keys[1], update_message(run.run_id, 0, 1, DIGEST))
        assert ledger.append("update", {**body, "signature": good}) == ledger.size - 1


def test_first_entry_must_be_run_start(tmp_path):
    with Ledger.open(tmp_path / "ledger.sqlite", create=True) as ledger:
        with pytest.raises(LedgerError, match="run_start"):
            ledger.append("enrol", {"client_id": 0, "public_key": DIGEST})
        with pytest.raises(LedgerError, match="before the run_start"):
            ledger.sign_head(None, generate_key())


def test_sql_triggers_refuse_update_and_delete(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    conn = sqlite3.connect(run.ledger_path)
    for sql in [
        "UPDATE entries SET body = '{}' WHERE seq = 1",
        "DELETE FROM entries WHERE seq = 1",
        "UPDATE tree_heads SET root = 'x'",
        "DELETE FROM tree_heads",
        "DELETE FROM meta",
        "INSERT INTO entries (seq, round, kind, body, leaf_hash) VALUES (99, 0, 'x', '{}', '')",
    ]:
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only|seq order"):
            conn.execute(sql)
    conn.close()


def test_every_connection_writes_with_synchronous_full(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    with Ledger.open(run.ledger_path) as ledger:
        assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_the_ledger_is_readable_by_its_owner_only(tmp_path):
    # Each round's entry names the cohort, which client-level DP's accounting assumes
    # secret (amplification by sampling): owner-only, as checkpoints are.
    run = build_run(tmp_path / "run", rounds=1)
    assert stat.S_IMODE(run.ledger_path.stat().st_mode) == 0o600


def test_readonly_ledger_refuses_writes(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        with pytest.raises(LedgerError, match="readonly"):
            ledger.append("failure", {"round": 0, "client_id": 0, "reason": "x"})
        with pytest.raises(LedgerError, match="readonly"):
            ledger.sign_head(0, run.server_key)


def test_appending_continues_after_reopening(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    log_round(run, 2)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        assert [h.round for h in ledger.heads()] == [None, 0, 1, 2]
        entries = ledger.entries()
        hashes = [bytes.fromhex(e.leaf_hash) for e in entries]
        assert ledger.root() == MerkleTree(hashes).root().hex()
        last = entries[-1]
        assert (last.kind, last.round) == ("checkpoint", 2)
        assert hashes[-1] == leaf_hash(leaf_data("checkpoint", 2, last.body))


def test_opening_a_missing_file_without_create_says_what_to_do(tmp_path):
    with pytest.raises(LedgerError, match=r"no ledger at .* create=True"):
        Ledger.open(tmp_path / "ledger.sqlite")
    assert not (tmp_path / "ledger.sqlite").exists()
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger.open(tmp_path / "absent" / "ledger.sqlite", create=True)
    with pytest.raises(LedgerError, match="not a file"):
        Ledger.open(tmp_path, create=True)


def test_reading_a_run_folder_without_a_ledger_says_the_run_kept_none(tmp_path):
    # What `fedgen ledger verify`/`show` print: no Python API advice for a CLI user.
    with pytest.raises(LedgerError) as caught:
        Ledger.open(tmp_path / "ledger.sqlite", readonly=True)
    message = str(caught.value)
    assert f"{tmp_path} has no ledger.sqlite" in message
    assert "`ledger: false` keeps none" in message and "create=True" not in message
    with pytest.raises(LedgerError, match="is not a folder; pass a run folder"):
        Ledger.open(tmp_path / "absent" / "ledger.sqlite", readonly=True)


@pytest.mark.parametrize(
    "content", [b"not a database at all", b"SQLite format 3\x00" + b"\xff" * 200]
)
def test_opening_a_file_that_is_not_sqlite_raises_ledger_error(tmp_path, content):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(LedgerError, match="cannot be read as a ledger"):
            Ledger.open(path, readonly=readonly)


def test_opening_another_sqlite_database_raises_ledger_error(tmp_path):
    path = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE metrics (round INTEGER, loss REAL)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="not a fedgen ledger"):
        Ledger.open(path)


def test_opening_a_ledger_of_another_version_says_which_release_to_use(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    tamper(run, "UPDATE meta SET value = '9' WHERE key = 'version'")
    with pytest.raises(LedgerError, match="version '9'"):
        Ledger.open(run.ledger_path)


CRASH_MID_APPEND = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size=1")  # spill pages to the file, so the journal is needed
conn.execute("BEGIN IMMEDIATE")
for _ in range(200):
    conn.execute(
        "INSERT INTO entries (seq, round, kind, body, leaf_hash) "
        "VALUES ((SELECT MAX(seq) + 1 FROM entries), 1, 'failure', ?, '00')",
        ("x" * 1000,),
    )
os._exit(1)  # the process dies mid-transaction
"""


def test_a_write_interrupted_by_a_crash_is_rolled_back_by_the_next_writer(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        size, root = ledger.size, ledger.root()
    subprocess.run([sys.executable, "-c", CRASH_MID_APPEND, str(run.ledger_path)], check=False)
    journal = run.run_dir / "ledger.sqlite-journal"
    assert journal.stat().st_size > 0
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600  # SQLite takes the file's mode
    with pytest.raises(LedgerError, match=r"interrupted .* open the ledger for writing once"):
        Ledger.open(run.ledger_path, readonly=True)
    assert "interrupted" in verify_run(run.run_dir).problems[0]
    Ledger.open(run.ledger_path).close()
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        assert (ledger.size, ledger.root()) == (size, root)
    assert verify_run(run.run_dir).ok


def test_a_body_edited_to_hold_nan_marks_a_writable_log_damaged_naming_the_entry(tmp_path):
    import sqlite3

    from fedgen.ledger import Ledger, LedgerError

    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, create=True) as ledger:
        ledger.append(
            "run_start",
            {
                "run_id": "ab" * 16,
                "server_public_key": "00" * 32,
                "fingerprint": "f" * 64,
                "rounds": 1,
            },
        )
    db = sqlite3.connect(path)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE entries SET body=? WHERE seq=0", ('{"rounds":NaN}',))
    db.commit()
    db.close()
    with Ledger.open(path) as ledger, pytest.raises(LedgerError, match="entry seq 0 is malformed"):
        ledger.append("enrol", {"client_id": 0, "public_key": "00" * 32})
