"""Where a run's signing keys and signed tree heads live: beside the server, not the run.

A ledger is only as strong as the secrecy of the key that signs it and the
heads that pin it. Kept in the run folder (or its checkpoints), anyone holding
the folder could re-sign a rewritten history, or cut the log back and delete
the checkpoints that remembered it. So the server's key, the simulated clients'
keys and every signed head go to a key store outside the run folder:
``$FEDGEN_KEY_DIR`` (default ``~/.config/fedgen/keys``), one owner-only file
pair per run id. The run folder can then be shared and still be checked:
``fedgen ledger verify`` pins the server key and the heads from the store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedgen.engine.run_lock import Hold
from fedgen.errors import CheckpointError

#: What to do when a run's ledger cannot go on (a resume cannot turn the ledger off:
#: its entries would no longer cover every round).
NEW_RUN_ADVICE = (
    "the run cannot go on, since a resume cannot turn the ledger off: start a new run "
    "(--set federation.init_from=RUN_FOLDER carries this one's model over, unless DP "
    "protects the data it was trained on)"
)


def default_key_dir() -> Path:
    """``$FEDGEN_KEY_DIR``, or ``~/.config/fedgen/keys``."""
    env = os.environ.get("FEDGEN_KEY_DIR")
    return Path(env) if env else Path.home() / ".config" / "fedgen" / "keys"


class KeyStore:
    """Owner-only files in ``directory``: ``<run_id>.keys.json``, ``<run_id>.heads`` and
    ``<run_id>.folder`` (where the run's log lives, so a copy is told from the run)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_key_dir()

    def _path(self, run_id: str, suffix: str) -> Path:
        if not run_id.isalnum():
            raise CheckpointError(f"{run_id!r} is not a run id")
        return self.directory / f"{run_id}{suffix}"

    def save_keys(self, run_id: str, keys: dict[str, Any]) -> Path:
        """Write a run's private keys (hex) to a new owner-only file."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(run_id, ".keys.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(keys, f)
            f.flush()
            os.fsync(f.fileno())
        return path

    def load_keys(self, run_id: str) -> dict[str, Any]:
        """A run's private keys; ``CheckpointError`` saying what to do when they are gone."""
        path = self._path(run_id, ".keys.json")
        try:
            keys = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"the ledger's signing keys of this run ({path}) cannot be read ({exc}); "
                "restore the key store (FEDGEN_KEY_DIR) it was written to, or " + NEW_RUN_ADVICE
            ) from exc
        if not isinstance(keys, dict):
            raise CheckpointError(f"{path} holds no keys; restore it from a backup")
        return keys

    def append_head(self, run_id: str, size: int, root: str) -> None:
        """Remember a signed tree head, one ``size root`` line each."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(run_id, ".heads")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{size} {root}\n")

    def heads(self, run_id: str) -> list[tuple[int, str]]:
        """The heads remembered for ``run_id`` (a line cut by a kill is skipped)."""
        try:
            text = self._path(run_id, ".heads").read_text()
        except OSError:
            return []
        heads = []
        for line in text.splitlines():
            size, _, root = line.partition(" ")
            if size.isdigit() and len(root) == 64:
                heads.append((int(size), root))
        return heads

    def folder(self, run_id: str) -> Path | None:
        """The run folder this run's log was last written in, or None if not recorded."""
        try:
            text = self._path(run_id, ".folder").read_text().strip()
        except OSError:
            return None
        return Path(text) if text else None

    def runs_in(self, folder: Path) -> list[str]:
        """The run ids whose log the store records in ``folder`` (sorted)."""
        if not self.directory.is_dir():
            return []
        found = []
        for record in sorted(self.directory.glob("*.folder")):
            run_id = record.name[: -len(".folder")]
            recorded = self.folder(run_id)
            if recorded is None or not recorded.exists():
                continue
            try:
                if os.path.samefile(recorded, folder):
                    found.append(run_id)
            except OSError:
                continue
        return found

    def set_folder(self, run_id: str, folder: Path) -> None:
        """Record the run folder whose log the store's heads pin (its absolute path)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(run_id, ".folder")
        tmp = path.with_suffix(".folder.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{folder.resolve()}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename survives a power cut
        finally:
            os.close(dir_fd)

    def hold(self, run_id: str) -> Hold:
        """A hold on ``run_id`` (``<run_id>.lock``): one process at a time extends a run's
        log and heads, so two copies of its folder resumed at once cannot both do it."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        recorded = self.folder(run_id)
        return Hold(
            self._path(run_id, ".lock"),
            f"run {run_id[:12]}… (from another copy of its folder, or this one by another path)",
            "resume one folder of a run at a time"
            + (
                f": the key store's signed heads follow {recorded}, so resume that one "
                "once the other process ends (a copy of it is refused then too)"
                if recorded is not None
                else ": wait for the other process to end, or stop it (Ctrl-C keeps its last "
                "complete round)"
            ),
        )

    def has(self, run_id: str) -> bool:
        """Whether the store holds this run's keys."""
        return self._path(run_id, ".keys.json").is_file()

    def pins(self, run_id: str) -> tuple[str | None, list[tuple[int, str]]]:
        """The server's public key (hex) and the heads this store holds for ``run_id``."""
        from fedgen.ledger import LedgerError, private_key_from_hex, public_key_hex

        if not run_id.isalnum() or not self.has(run_id):
            return None, []
        try:
            server = public_key_hex(private_key_from_hex(self.load_keys(run_id)["server_key"]))
        except (CheckpointError, LedgerError, KeyError, TypeError):
            return None, self.heads(run_id)
        return server, self.heads(run_id)
