"""The SQLite file of a ledger: its schema, and how a damaged file is recognised.

Tables: ``meta`` (format and version), ``entries`` (seq, round, kind, body, leaf_hash) and
``tree_heads`` (size, root, round, signature). Triggers keep seqs in order and refuse UPDATE
and DELETE on every table: defence in depth only, since anyone holding the file can drop them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fedgen.ledger.errors import LedgerError

FORMAT = "fedgen-ledger"
VERSION = "1"

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY, round INTEGER, kind TEXT NOT NULL, body TEXT NOT NULL,
    leaf_hash TEXT NOT NULL
);
CREATE TABLE tree_heads (
    size INTEGER PRIMARY KEY, root TEXT NOT NULL, round INTEGER, signature TEXT NOT NULL
);
CREATE TRIGGER entries_in_order BEFORE INSERT ON entries
    WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq) + 1, 0) FROM entries)
    BEGIN SELECT RAISE(ABORT, 'ledger entries are appended in seq order'); END;
"""
_REFUSE = """
CREATE TRIGGER {table}_no_{op} BEFORE {OP} ON {table}
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: {table} rows cannot change'); END;
"""

RawRow = tuple[Any, Any, Any, Any, Any]
# SQLite's own error messages quote a damaged schema, whose bytes may not decode as UTF-8.
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def schema_sql() -> str:
    """The statements that create an empty ledger's tables and triggers."""
    refuse = "".join(
        _REFUSE.format(table=t, op=op.lower(), OP=op)
        for t in ("meta", "entries", "tree_heads")
        for op in ("UPDATE", "DELETE")
    )
    return _TABLES + refuse


def decode_text(raw: bytes) -> str:
    """UTF-8, with undecodable bytes kept as lone surrogates (which canonical JSON never
    contains, so an entry holding them fails verification instead of the read)."""
    return raw.decode("utf-8", "surrogateescape")


def check_file_size(path: Path) -> None:
    """Catch a cut-off file before SQLite reads its short last page as zeros.

    The SQLite header (https://sqlite.org/fileformat2.html §1.3) gives the page size at offset
    16 and, when valid, the database size in pages at offset 28; a file shorter than that, or
    not a whole number of pages, was truncated. A hot journal beside it means a transaction was
    interrupted; SQLite rolls it back on open, so the size is not judged then.
    """
    journal = path.with_name(path.name + "-journal")
    if journal.exists() and journal.stat().st_size > 0:
        return
    try:
        with open(path, "rb") as f:
            header = f.read(100)
        size = path.stat().st_size
    except OSError as err:
        raise damaged(path, err) from err
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return  # not SQLite at all: SQLite itself says so
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    pages_valid = header[24:28] == header[92:96] and pages > 0
    if page_size < 512 or size % page_size or (pages_valid and size < pages * page_size):
        expected = f"{pages * page_size} bytes" if pages_valid else "whole pages"
        raise damaged(path, f"the file is truncated: {size} bytes where its header says {expected}")


def damaged(path: Path, err: object) -> LedgerError:
    return LedgerError(
        f"{path} cannot be read as a ledger ({err}). The file is truncated, corrupt or not a "
        f"fedgen ledger: if you copied the run folder, copy ledger.sqlite again (with any "
        f"ledger.sqlite-journal beside it); otherwise restore it from a backup. Its entries "
        f"cannot be trusted as they are."
    )
