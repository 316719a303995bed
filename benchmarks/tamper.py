"""Tamper benchmark: does `fedgen ledger verify` catch every way of altering a real run folder?

Trains one tiny real federation with ``run_experiment`` (4 iid MNIST clients from
``FEDGEN_DATA_DIR``, widths 8, 6 rounds x 2 local steps, a checkpoint every round, the last 3
kept), checks that the untouched run verifies, then for each tamper case copies the run folder,
alters the copy as an attacker holding its files would (SQL on ``ledger.sqlite`` with its
refusing triggers dropped, leaf hashes and tree heads recomputed where the case says so, bytes
of checkpoint files), runs the real command ``python -m fedgen.cli ledger verify COPY`` and
appends a row to ``benchmarks/results/faults.md``: the case, what changed, the exit status,
whether it was detected, the first problem line and the seconds the command took.

Two cases attack the whole run folder, checkpoints included: they are caught by what the
server keeps outside it, in its key store (``fedgen.engine.keystore``): the private signing
keys and every signed tree head, which ``fedgen ledger verify`` pins.

    taskset -c 0 .venv/bin/python benchmarks/tamper.py [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgen.config import load_config
from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from fedgen.experiment import run_experiment
from fedgen.ledger import (
    LEDGER_FILE,
    MerkleTree,
    canonical_json,
    file_digest,
    generate_key,
    leaf_data,
    public_key_hex,
    sign,
    tree_head_message,
    update_message,
)
from fedgen.ledger.merkle import leaf_hash
from fedgen.report.results_table import ResultsTable, current_commit

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "commit",
    "case",
    "what was changed",
    "exit status",
    "detected",
    "first problem line",
    "verify s",
]
ROUNDS = 6
Row = tuple[int, int | None, str, dict[str, Any]]


#: The tiny real federation every case starts from (``--set`` items, data folder aside).
RECIPE = {
    "data.sources": "[mnist]",
    "data.num_clients": 4,
    "data.partition.kind": "iid",
    "data.partition.params": "{}",
    "task.params": "{batch_size: 16, generator_width: 8, discriminator_width: 8}",
    "federation.rounds": ROUNDS,
    "federation.local_steps": 2,
    "strategy.params": "{min_clients: 2}",
    "backend.name": "inprocess",
    "eval.every": 0,
    "eval.final": "false",
    "checkpoint.every": 1,
    "checkpoint.keep": 3,
    "threads": 1,
}


def train(run_dir: Path) -> None:
    """Train ``RECIPE`` on MNIST from ``FEDGEN_DATA_DIR`` into ``run_dir``."""
    data_dir = os.environ.get("FEDGEN_DATA_DIR")
    if not data_dir:
        raise SystemExit("set FEDGEN_DATA_DIR to the folder holding mnist/")
    items = [f"{key}={value}" for key, value in RECIPE.items()]
    run_experiment(
        load_config(None, [f"data.data_dir={data_dir}", *items]), run_dir, progress=False
    )


# -- the ledger file, as an attacker holding it opens it -----------------------------------


class LedgerFile:
    """``ledger.sqlite`` with its refusing triggers dropped: every row can change.

    Use as a context manager; the changes are committed on a clean exit.
    """

    def __init__(self, run: Path) -> None:
        self.conn = sqlite3.connect(run / LEDGER_FILE)
        triggers = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        for (name,) in triggers.fetchall():
            self.conn.execute(f'DROP TRIGGER "{name}"')

    def __enter__(self) -> LedgerFile:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.conn.commit()
        self.conn.close()

    def rows(self, kind: str | None = None, round: int | None = None) -> list[Row]:
        """``(seq, round, kind, body)`` of the entries, in seq order, optionally filtered."""
        found = self.conn.execute("SELECT seq, round, kind, body FROM entries ORDER BY seq")
        return [
            (seq, r, k, json.loads(body))
            for seq, r, k, body in found.fetchall()
            if (kind is None or k == kind) and (round is None or r == round)
        ]

    @property
    def run_id(self) -> str:
        return str(self.rows("run_start")[0][3]["run_id"])

    def set_body(self, seq: int, body: dict[str, Any], rehash: bool = True) -> None:
        """Store ``body`` for entry ``seq``; with ``rehash``, its leaf hash to match."""
        text = canonical_json(body)
        self.conn.execute("UPDATE entries SET body = ? WHERE seq = ?", (text, seq))
        if rehash:
            kind, round = self.conn.execute(
                "SELECT kind, round FROM entries WHERE seq = ?", (seq,)
            ).fetchone()
            leaf = leaf_hash(leaf_data(kind, round, body)).hex()
            self.conn.execute("UPDATE entries SET leaf_hash = ? WHERE seq = ?", (leaf, seq))

    def replace_update(self, seq: int, digest: str, key: Ed25519PrivateKey) -> int | str:
        """Give update ``seq`` another digest, signed by ``key`` and rehashed; return its client."""
        body = next(row[3] for row in self.rows("update") if row[0] == seq)
        client = body["client_id"]
        signature = sign(key, update_message(self.run_id, body["round"], client, digest))
        self.set_body(seq, {**body, "digest": digest, "signature": signature})
        return client

    def move(self, seqs: dict[int, int]) -> None:
        """Give entry ``old`` the seq ``new`` for each pair (through free numbers first)."""
        free = 1 + self.conn.execute("SELECT MAX(seq) FROM entries").fetchone()[0]
        for i, old in enumerate(seqs):
            self.conn.execute("UPDATE entries SET seq = ? WHERE seq = ?", (free + i, old))
        for i, new in enumerate(seqs.values()):
            self.conn.execute("UPDATE entries SET seq = ? WHERE seq = ?", (new, free + i))

    def drop_round(self, round: int) -> tuple[int, int]:
        """Delete every entry of ``round`` and close the gap; return its first seq and how
        many entries went."""
        gone = [row[0] for row in self.rows(round=round)]
        self.conn.execute("DELETE FROM entries WHERE round = ?", (round,))
        later = [row[0] for row in self.rows() if row[0] > gone[-1]]
        self.move({seq: seq - len(gone) for seq in later})
        return gone[0], len(gone)

    def tree(self) -> MerkleTree:
        """The Merkle tree over the stored leaf hashes."""
        hashes = self.conn.execute("SELECT leaf_hash FROM entries ORDER BY seq").fetchall()
        return MerkleTree(bytes.fromhex(h) for (h,) in hashes)

    def heads(self) -> list[tuple[int, int | None, str]]:
        """``(size, round, signature)`` of the stored tree heads, smallest first."""
        found = self.conn.execute("SELECT size, round, signature FROM tree_heads ORDER BY size")
        return found.fetchall()

    def write_heads(
        self, heads: list[tuple[int, int | None, str]], key: Ed25519PrivateKey | None
    ) -> None:
        """Replace every tree head by ``heads`` with roots over the entries as they stand,
        signed by ``key`` (None: each keeps the signature given with it)."""
        tree, run_id = self.tree(), self.run_id
        self.conn.execute("DELETE FROM tree_heads")
        for size, round, signature in heads:
            root = tree.root(size).hex()
            if key is not None:
                signature = sign(key, tree_head_message(run_id, size, root, round))
            self.conn.execute(
                "INSERT INTO tree_heads (size, root, round, signature) VALUES (?, ?, ?, ?)",
                (size, root, round, signature),
            )


# -- the cases: each alters a copy of the run folder and says what it changed --------------


def edited_update(run: Path, rehash: bool) -> str:
    with LedgerFile(run) as db:
        seq, _, _, body = db.rows("update", round=2)[0]
        db.set_body(seq, {**body, "digest": "e" * 64}, rehash=rehash)
    how = "leaf hash recomputed" if rehash else "leaf hash left"
    return f"round 2, client {body['client_id']} update (seq {seq}): digest → eeee…, {how}"


def dropped_round(run: Path, heads: str) -> str:
    """Round 2's entries deleted, later seqs closed up; ``heads``: left, kept (rebuilt at the
    new sizes with their old signatures), new-key (rebuilt and signed by a new key) or rekeyed
    (also run_start's server key replaced by the new key)."""
    key = generate_key()
    with LedgerFile(run) as db:
        first, gone = db.drop_round(2)
        if heads == "rekeyed":
            seq, _, _, body = db.rows("run_start")[0]
            db.set_body(seq, {**body, "server_public_key": public_key_hex(key)})
        if heads != "left":
            moved = [
                (size - gone if size > first else size, r, sig)
                for size, r, sig in db.heads()
                if r != 2
            ]
            db.write_heads(moved, None if heads == "kept" else key)
    said = {
        "left": "tree heads left",
        "kept": "tree heads rebuilt at the new sizes, old signatures kept",
        "new-key": "tree heads rebuilt and signed by a new key",
        "rekeyed": "run_start's server key and every tree head replaced under a new key",
    }[heads]
    return f"round 2's {gone} entries deleted, later seqs renumbered; {said}"


def swapped_updates(run: Path) -> str:
    with LedgerFile(run) as db:
        (a, _, _, body_a), (b, _, _, body_b) = db.rows("update", round=3)[:2]
        # Each client's row now claims the other's digest, examples and signature.
        db.set_body(a, {**body_b, "client_id": body_a["client_id"]})
        db.set_body(b, {**body_a, "client_id": body_b["client_id"]})
    return (
        f"round 3: clients {body_a['client_id']} and {body_b['client_id']} swap digests, "
        f"examples and signatures (seq {a}, {b}), leaf hashes recomputed"
    )


def re_signed_update(run: Path) -> str:
    with LedgerFile(run) as db:
        seq = db.rows("update", round=3)[-1][0]
        client = db.replace_update(seq, "f" * 64, generate_key())
    return f"round 3, client {client} (seq {seq}): digest → ffff…, signed by a new key, rehashed"


def replaced_checkpoint(run: Path) -> str:
    (_, older), (_, newest) = list_checkpoints(run / "checkpoints")[-2:]
    shutil.copyfile(older, newest)
    return f"checkpoints/{newest.name} overwritten with the bytes of {older.name}"


def added_checkpoint(run: Path, name: str) -> str:
    _, newest = list_checkpoints(run / "checkpoints")[-1]
    shutil.copyfile(newest, newest.with_name(name))
    return f"checkpoints/{name} added (a copy of {newest.name})"


def truncated_ledger(run: Path) -> str:
    path = run / LEDGER_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"ledger.sqlite cut from {len(data)} to {len(data) // 2} bytes"


def reordered_leaves(run: Path) -> str:
    with LedgerFile(run) as db:
        a, b = (row[0] for row in db.rows("update", round=4)[:2])
        db.move({a: b, b: a})
    return f"round 4: the update rows at seq {a} and {b} trade places"


def cut_back(run: Path, delete_checkpoints: bool) -> str:
    """Everything after round 2's last tree head deleted: a shorter log, valid on its own."""
    with LedgerFile(run) as db:
        size = max(s for s, r, _ in db.heads() if r == 2)
        total = len(db.rows())
        db.conn.execute("DELETE FROM entries WHERE seq >= ?", (size,))
        db.conn.execute("DELETE FROM tree_heads WHERE size > ?", (size,))
    said = f"entries {size}..{total - 1} (rounds 3-5) and their tree heads deleted"
    if not delete_checkpoints:
        return said
    files = [path for r, path in list_checkpoints(run / "checkpoints") if r > 2]
    for path in files:
        path.unlink()
    return said + f"; checkpoints {', '.join(p.name for p in files)} deleted too"


def forged_head(run: Path) -> str:
    with LedgerFile(run) as db:
        size, r, _ = db.heads()[-1]
        root = db.tree().root(size).hex()
        signature = sign(generate_key(), tree_head_message(db.run_id, size, root, r))
        db.conn.execute("UPDATE tree_heads SET signature = ? WHERE size = ?", (signature, size))
    return f"the last tree head (size {size}, round {r}) re-signed by a new key, root unchanged"


def deleted_ledger(run: Path) -> str:
    (run / LEDGER_FILE).unlink()
    return "ledger.sqlite deleted"


def rewritten_and_re_keyed(run: Path) -> str:
    """Round 2's update of one client replaced; as the run folder holds no private key (they
    stay in the key store), the attacker re-keys the whole log: a new server key in run_start,
    a new key in every enrolment, every update re-signed, every tree head re-signed, and each
    kept checkpoint's anchor and entry rewritten to match."""
    checkpoints = list_checkpoints(run / "checkpoints")
    server = generate_key()
    with LedgerFile(run) as db:
        (start, _, _, body), *_ = db.rows("run_start")
        db.set_body(start, {**body, "server_public_key": public_key_hex(server)})
        keys: dict[Any, Ed25519PrivateKey] = {}
        for seq, _, _, enrol in db.rows("enrol"):
            keys[enrol["client_id"]] = key = generate_key()
            db.set_body(seq, {**enrol, "public_key": public_key_hex(key)})
        target, _, _, victim = db.rows("update", round=2)[0]
        for seq, _, _, update in db.rows("update"):
            digest = "d" * 64 if seq == target else update["digest"]
            db.replace_update(seq, digest, keys[update["client_id"]])
        # In round order: a checkpoint's entry sits before the next checkpoint's anchor.
        for _, path in checkpoints:
            payload = load_checkpoint(path)
            anchor = payload["federation"]["audit"]["anchor"]
            anchor[1] = db.tree().root(anchor[0]).hex()
            save_checkpoint(path, payload)
            logged = [row for row in db.rows("checkpoint") if row[3]["file"].endswith(path.name)]
            entry, _, _, logged_body = logged[-1]
            db.set_body(entry, {**logged_body, "digest": file_digest(path)})
        db.write_heads(db.heads(), server)
    return (
        f"round 2, client {victim['client_id']} (seq {target}): digest → dddd…; the whole log "
        f"re-keyed (server key, {len(keys)} enrolments, every update and head re-signed) and "
        f"the {len(checkpoints)} checkpoints' anchors and entries rewritten to match"
    )


CASES: list[tuple[str, Callable[[Path], str]]] = [
    ("edited row, rehashed", lambda run: edited_update(run, rehash=True)),
    ("edited row, not rehashed", lambda run: edited_update(run, rehash=False)),
    ("dropped round, heads left", lambda run: dropped_round(run, "left")),
    ("dropped round, heads rebuilt, old signatures", lambda run: dropped_round(run, "kept")),
    ("dropped round, heads rebuilt, new key", lambda run: dropped_round(run, "new-key")),
    ("dropped round, whole log re-keyed", lambda run: dropped_round(run, "rekeyed")),
    ("two clients' updates swapped", swapped_updates),
    ("update re-signed with a new key", re_signed_update),
    ("replaced checkpoint", replaced_checkpoint),
    ("checkpoint added from outside", lambda run: added_checkpoint(run, "round_0009.ckpt")),
    ("checkpoint added under a pruned name", lambda run: added_checkpoint(run, "round_0001.ckpt")),
    ("truncated database file", truncated_ledger),
    ("reordered pair of leaves", reordered_leaves),
    ("cut back to a valid prefix", lambda run: cut_back(run, delete_checkpoints=False)),
    ("forged tree head", forged_head),
    ("deleted ledger", deleted_ledger),
]
#: Attacks by whoever holds the whole run folder, checkpoints included: caught only by
#: what the server keeps outside it (its key store: the signing keys and every signed head).
BEYOND_THE_LEDGER: list[tuple[str, Callable[[Path], str]]] = [
    ("cut back, later checkpoints deleted", lambda run: cut_back(run, delete_checkpoints=True)),
    ("history rewritten and the whole log re-keyed", rewritten_and_re_keyed),
]


# -- running the real command --------------------------------------------------------------


def verify(run: Path, tampered: bool) -> dict[str, Any]:
    """Run ``fedgen ledger verify`` on ``run``; the row's exit status, verdict, line, seconds.

    Detected means exit status 1 with a ``problem:`` line and no traceback."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedgen.cli", "ledger", "verify", str(run)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    problems = [x for x in proc.stdout.splitlines() if x.startswith("problem: ")]
    crashed = "Traceback" in proc.stderr
    if proc.returncode == 0:
        detected, line = "NO" if tampered else "no problem", proc.stdout.strip().splitlines()[-1]
    elif proc.returncode == 1 and problems and not crashed:
        detected, line = "yes" if tampered else "PROBLEM", problems[0].removeprefix("problem: ")
    else:
        detected = "NO (crashed)" if crashed else "NO"
        line = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
    line = line.replace(str(run), "RUN")
    return {
        "exit status": proc.returncode,
        "detected": detected,
        "first problem line": cell(line),
        "verify s": seconds,
    }


def cell(text: str, width: int = 120) -> str:
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="keep the run and its copies here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/faults.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tamper-") as tmp:
        work = args.work or Path(tmp)
        honest = work / "run"
        start = time.perf_counter()
        train(honest)
        print(f"trained {honest} in {time.perf_counter() - start:.0f} s", flush=True)
        table = ResultsTable(args.out, COLUMNS)
        table.start(
            f"Tamper detection: {len(CASES) + len(BEYOND_THE_LEDGER)} attacks on a real "
            f"{ROUNDS}-round run folder",
            notes=[
                "one tiny real run: "
                + " ".join(f"`{key}={value}`" for key, value in RECIPE.items())
                + "; each case alters a copy as an attacker holding its files would (SQL with "
                "the triggers dropped, leaf hashes and tree heads recomputed where said, "
                "checkpoint bytes)",
                "verified by `python -m fedgen.cli ledger verify COPY` in a subprocess; verify "
                "s is its wall time, interpreter start and imports included; RUN stands for "
                "the copy's path",
                "the last two cases attack the whole run folder, checkpoints included; "
                "verify pins the server key and the signed heads from the key store "
                "(FEDGEN_KEY_DIR), outside the folder, where the private keys also stay",
            ],
        )
        commit = current_commit()
        honest_row = {"commit": commit, "case": "none (honest run)", **verify(honest, False)}
        print(table.append(honest_row), flush=True)
        caught: dict[str, bool] = {}
        for name, attack in CASES + BEYOND_THE_LEDGER:
            copy = work / re.sub(r"[^a-z0-9]+", "-", name)
            shutil.copytree(honest, copy)
            row = {"commit": commit, "case": name, "what was changed": cell(attack(copy))}
            row.update(verify(copy, True))
            caught[name] = row["detected"] == "yes"
            print(table.append(row), flush=True)
        ours = sum(caught[name] for name, _ in CASES)
        beyond = sum(caught[name] for name, _ in BEYOND_THE_LEDGER)
        total = {
            "commit": commit,
            "case": "total",
            "what was changed": f"attacks on the ledger and checkpoints: {ours} of {len(CASES)} "
            f"detected; on the whole run folder, against the key store: {beyond} of "
            f"{len(BEYOND_THE_LEDGER)}",
            "detected": f"{ours + beyond} of {len(caught)} ({(ours + beyond) / len(caught):.0%})",
        }
        print(table.append(total))


if __name__ == "__main__":
    main()
