"""The ledger: an append-only SQLite store of entries and signed tree heads.

One file per run (``ledger.sqlite`` in the run folder). Every append is its own transaction
with ``PRAGMA synchronous=FULL``, so a crash loses at most the entry being written. What makes
the log tamper-evident is not the file (``sqlite_file`` has its schema and refusing triggers)
but that each signed tree head (RFC 9162 §4.10) covers the Merkle root of all entries before
it, and ``verify_run`` recomputes those roots from the entries.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgen.ledger.digest import canonical_json
from fedgen.ledger.entries import RUN_KINDS, Entry, TreeHead, body_problems, leaf_data
from fedgen.ledger.errors import LedgerError
from fedgen.ledger.keys import public_key_hex, sign, update_message, verify_signature
from fedgen.ledger.merkle import MerkleTree, leaf_hash
from fedgen.ledger.sqlite_file import (
    FORMAT,
    SQLITE_ERRORS,
    VERSION,
    RawRow,
    check_file_size,
    damaged,
    decode_text,
    schema_sql,
)


class Ledger:
    """An open ledger file. Use ``Ledger.open``; close it, or use it as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self.tree = MerkleTree()
        self._damage: str | None = None
        self._run_start: dict[str, Any] | None = None
        self._client_keys: dict[int | str, str] = {}

    @classmethod
    def open(cls, path: str | Path, create: bool = False, readonly: bool = False) -> Ledger:
        """Open the ledger at ``path``; with ``create``, make an empty one if it is missing.

        ``readonly`` opens it without write access (for verifying and showing).

        Raises:
            LedgerError: the file is missing (without ``create``), not a fedgen ledger, or
                damaged (truncated, corrupt); the message says what to do.
        """
        path = Path(path)
        if create and readonly:
            raise ValueError("a ledger opened readonly cannot be created")
        exists = path.exists()
        if not exists and not create:
            raise LedgerError(_missing(path, readonly))
        if exists and not path.is_file():
            raise LedgerError(f"{path} is not a file; a ledger is one SQLite file")
        if not exists and not path.parent.is_dir():
            raise LedgerError(f"cannot create {path}: the folder {path.parent} does not exist")
        fresh = not exists or path.stat().st_size == 0
        if fresh and readonly:
            raise LedgerError(
                f"{path} is empty, not a ledger: the run wrote no entries or the file was "
                f"truncated; restore it from a backup if it held a run"
            )
        if not fresh:
            check_file_size(path)
        try:
            if readonly:
                conn = sqlite3.connect(
                    f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None
                )
            else:
                if not exists:
                    # Owner-only, as checkpoints: each round's entry names its cohort, and
                    # under client-level DP the cohort must stay secret (privacy
                    # amplification by sampling assumes it). SQLite gives its journal the
                    # database file's mode.
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                conn = sqlite3.connect(path, isolation_level=None)
        except SQLITE_ERRORS as err:
            raise damaged(path, err) from err
        # Damaged text must reach the checks as text, not fail to decode on the way.
        conn.text_factory = decode_text
        ledger = cls(conn, path, readonly)
        try:
            if fresh:
                ledger._create()
            ledger._check_format()
            ledger._load()
        except SQLITE_ERRORS as err:
            conn.close()
            journal = path.with_name(path.name + "-journal")
            if readonly and isinstance(err, sqlite3.OperationalError) and journal.exists():
                raise LedgerError(
                    f"{journal.name} beside {path} holds a write that was interrupted (the run "
                    f"stopped mid-append), which a readonly open cannot roll back: open the "
                    f"ledger for writing once (resuming the run does; so does "
                    f"Ledger.open(path).close()), then verify again"
                ) from err
            raise damaged(path, err) from err
        except LedgerError:
            conn.close()
            raise
        return ledger

    def _create(self) -> None:
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("BEGIN IMMEDIATE")
        for statement in schema_sql().split(";\n"):
            if statement.strip():
                self._conn.execute(statement)
        self._conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("format", FORMAT), ("version", VERSION)],
        )
        self._conn.execute("COMMIT")

    def _check_format(self) -> None:
        if not self.readonly:
            self._conn.execute("PRAGMA synchronous=FULL")
        result = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        if result != ["ok"]:
            raise damaged(self.path, "; ".join(str(r) for r in result[:3]))
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master")}
        if not {"meta", "entries", "tree_heads"} <= tables:
            raise LedgerError(
                f"{self.path} is an SQLite file but not a fedgen ledger (it lacks the meta, "
                f"entries or tree_heads table); point at the run's ledger.sqlite"
            )
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise LedgerError(f"{self.path} is not a fedgen ledger (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise LedgerError(
                f"{self.path} is ledger version {meta.get('version')!r}; this fedgen reads "
                f"version {VERSION}: verify it with the fedgen release that wrote it"
            )

    def _load(self) -> None:
        for seq, _round, kind, body, stored_hash in self.raw_rows():
            if seq != self.tree.size:
                self._damage = f"entry seq {seq} follows seq {self.tree.size - 1}"
                return
            try:
                self.tree.append(bytes.fromhex(stored_hash))
                parsed = json.loads(body)
                self._remember(kind, parsed)
            except (TypeError, ValueError) as err:
                self._damage = f"entry seq {seq} is malformed ({err})"
                return
            if not self.readonly and self._damage is None:
                # An entry edited in place: no new head may be signed over it. (Loading
                # goes on from the stored hashes: verify, which opens the log readonly,
                # checks every leaf itself and names each such entry.)
                try:
                    same = leaf_hash(leaf_data(kind, _round, parsed)).hex() == stored_hash
                except LedgerError as err:  # a body no entry could hold (NaN, 1e999)
                    self._damage = f"entry seq {seq} is malformed ({err})"
                    continue
                if not same:
                    self._damage = f"entry seq {seq}'s leaf hash does not match its content"

    def _remember(self, kind: str, body: Any) -> None:
        if not isinstance(body, dict) or body_problems(kind, body, None):
            return
        if kind == "run_start":
            self._run_start = body
        elif kind == "enrol":
            self._client_keys[body["client_id"]] = body["public_key"]

    # -- reading ---------------------------------------------------------------------------

    @property
    def damage(self) -> str | None:
        """What makes the log unfit to append to (an entry out of order, malformed, or
        whose leaf hash does not match it: writable opens only), None if nothing."""
        return self._damage

    @property
    def size(self) -> int:
        """The number of entries (leaves)."""
        return self.tree.size

    @property
    def run_start(self) -> dict[str, Any] | None:
        """The body of the first entry, once written."""
        return self._run_start

    def root(self, size: int | None = None) -> str:
        """The Merkle root (hex) of the first ``size`` entries, all of them by default."""
        return self.tree.root(size).hex()

    def raw_rows(self) -> list[RawRow]:
        """Every entry row as stored, ``(seq, round, kind, body, leaf_hash)``, in seq order."""
        return self._query("SELECT seq, round, kind, body, leaf_hash FROM entries ORDER BY seq")

    def raw_heads(self) -> list[RawRow]:
        """Every tree head row as stored, ``(size, root, round, signature, None)``."""
        return self._query(
            "SELECT size, root, round, signature, NULL FROM tree_heads ORDER BY size"
        )

    def entries(self, round: int | None = None, kind: str | None = None) -> list[Entry]:
        """Entries in seq order, optionally only those of ``round`` and/or ``kind``.

        Raises:
            LedgerError: a stored body is not JSON (the file was damaged or edited).
        """
        sql = "SELECT seq, round, kind, body, leaf_hash FROM entries"
        clauses: list[str] = []
        params: list[Any] = []
        if round is not None:
            clauses.append("round = ?")
            params.append(round)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        out = []
        for seq, r, k, body, h in self._query(sql + " ORDER BY seq", params):
            try:
                parsed = json.loads(body)
            except (TypeError, ValueError) as err:
                raise LedgerError(
                    f"{self.path}: entry seq {seq} has a body that is not JSON ({err}); "
                    f"run `fedgen ledger verify` on the run folder"
                ) from err
            out.append(Entry(seq, r, k, parsed, h))
        return out

    def heads(self) -> list[TreeHead]:
        """Every signed tree head, smallest first."""
        return [TreeHead(s, r, rd, sig) for s, r, rd, sig, _ in self.raw_heads()]

    def head(self) -> TreeHead | None:
        """The latest signed tree head, or None before the first is signed."""
        heads = self._query(
            "SELECT size, root, round, signature FROM tree_heads ORDER BY size DESC LIMIT 1"
        )
        return TreeHead(*heads[0]) if heads else None

    def _query(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except SQLITE_ERRORS as err:
            raise damaged(self.path, err) from err

    # -- writing ---------------------------------------------------------------------------

    def append(self, kind: str, body: dict[str, Any], round: int | None = None) -> int:
        """Append one entry in its own transaction; return its seq (0-based leaf index).

        ``round`` defaults to ``body["round"]`` for the kinds tied to a round.

        Raises:
            LedgerError: the entry breaks the contract of ``fedgen.ledger.entries`` (unknown
                kind, missing field, run_start not first, an update whose signature does not
                verify under its client's enrolled key, a client enrolled twice), or the file
                cannot be written.
        """
        self._check_writable()
        if round is None and kind not in RUN_KINDS and isinstance(body, dict):
            round = body.get("round")
        problems = body_problems(kind, body, round)
        problems += self._order_problems(kind, body) if not problems else []
        if problems:
            raise LedgerError(f"cannot append a {kind} entry: " + "; ".join(problems))
        text = canonical_json(body)
        stored = json.loads(text)
        leaf = leaf_hash(leaf_data(kind, round, stored))
        seq = self.size
        self._write(
            "INSERT INTO entries (seq, round, kind, body, leaf_hash) VALUES (?, ?, ?, ?, ?)",
            (seq, round, kind, text, leaf.hex()),
        )
        self.tree.append(leaf)
        self._remember(kind, stored)
        return seq

    def _order_problems(self, kind: str, body: dict[str, Any]) -> list[str]:
        if (kind == "run_start") != (self.size == 0):
            return ["the first entry, and only it, is run_start"]
        if kind == "run_start":
            return []
        if self._run_start is None:
            return [f"{self.path} has no valid run_start entry; run `fedgen ledger verify`"]
        client: Any = body.get("client_id")
        if kind == "enrol" and client in self._client_keys:
            return [f"client {client} is enrolled already"]
        if kind == "enrol" and body["public_key"] in self._client_keys.values():
            return [f"client {client}'s public key is enrolled already for another client"]
        if kind == "update":
            key = self._client_keys.get(client)
            if key is None:
                return [f"client {client} is not enrolled; append its enrol entry first"]
            message = update_message(
                self._run_start["run_id"],
                body.get("signed_round", body["round"]),
                client,
                body["digest"],
            )
            if not verify_signature(key, message, body["signature"]):
                return [
                    f"round {body['round']}, client {client}: the signature does not verify "
                    f"under the client's enrolled key over update_message(run_id, round, "
                    f"client_id, digest); log it as a failure instead"
                ]
        return []

    def sign_head(self, round: int | None, key: Ed25519PrivateKey) -> TreeHead:
        """Sign and store the tree head over every entry so far, closing ``round``.

        Signing again with no new entry returns the head already stored.

        Raises:
            LedgerError: the ledger is empty, ``key`` is not the server key named by run_start,
                or the file cannot be written.
        """
        self._check_writable()
        if round is not None and not (type(round) is int and round >= 0):
            raise LedgerError(f"a tree head closes a round (an int >= 0) or None, not {round!r}")
        if self._run_start is None:
            raise LedgerError("cannot sign a tree head before the run_start entry")
        if public_key_hex(key) != self._run_start["server_public_key"]:
            raise LedgerError(
                "the key signing the tree head is not the server key named in run_start; "
                "load the run's own signing key"
            )
        root = self.root()
        last = self.head()
        if last is not None and last.size == self.size:
            if last.root == root and last.round == round:
                return last
            raise LedgerError(
                f"a different tree head for size {self.size} is stored already; run "
                f"`fedgen ledger verify` on the run folder"
            )
        message = TreeHead(self.size, root, round, "").message(self._run_start["run_id"])
        head = TreeHead(self.size, root, round, sign(key, message))
        self._write(
            "INSERT INTO tree_heads (size, root, round, signature) VALUES (?, ?, ?, ?)",
            (head.size, head.root, head.round, head.signature),
        )
        return head

    def _check_writable(self) -> None:
        if self.readonly:
            raise LedgerError(f"{self.path} was opened readonly; open it without readonly")
        if self._damage is not None:
            raise LedgerError(
                f"{self.path} is damaged ({self._damage}); nothing more can be appended: "
                f"run `fedgen ledger verify` on the run folder"
            )

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(sql, params)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except SQLITE_ERRORS as err:
            raise LedgerError(f"cannot write to the ledger {self.path}: {err}") from err

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _missing(path: Path, readonly: bool) -> str:
    """Why ``Ledger.open`` found no file at ``path``, worded for who asked.

    Readers are ``fedgen ledger verify``/``show`` on a run folder, whose user needs to know
    that the run kept no ledger, not how to create one; writers are Python code.
    """
    if not readonly:
        return (
            f"no ledger at {path}: pass the run folder of a run that recorded one, or open it "
            f"with create=True to start a new ledger"
        )
    if not path.parent.is_dir():
        return f"no ledger at {path}: {path.parent} is not a folder; pass a run folder"
    return (
        f"no ledger at {path}: {path.parent} has no {path.name}. A run with `ledger: false` "
        f"keeps none; if this run kept one, the file was deleted or moved: restore it from a "
        f"backup"
    )
