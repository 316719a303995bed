"""Checkpoints that detect corruption and refuse to resume the wrong experiment.

File layout: an 8-byte magic, the 32-byte sha256 of the payload, then the
payload (``torch.save`` of plain containers and tensors, loaded with
``weights_only=True``). Writes go to a temporary file first and are renamed
into place, so a crash or Ctrl-C mid-write never leaves a half checkpoint
under a real name.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from fedgen.errors import CheckpointError

MAGIC = b"FEDGENC1"
_NAME = re.compile(r"round_(\d{4,})\.ckpt$")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` to ``path`` with its checksum."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Owner-only: a checkpoint holds the server's state, including the secret that
    # seeds DP noise (``fedgen.privacy.noise_key``).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(MAGIC + hashlib.sha256(body).digest() + body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; raise ``CheckpointError`` if it is truncated or corrupted."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if len(raw) < 40 or raw[:8] != MAGIC:
        raise CheckpointError(
            f"{path} is not a fedgen checkpoint (bad header); delete it to "
            "resume from the previous checkpoint in the same folder"
        )
    digest, body = raw[8:40], raw[40:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(
            f"{path} is corrupted (checksum mismatch); delete it to resume "
            "from the previous checkpoint in the same folder"
        )
    try:
        payload = torch.load(io.BytesIO(body), weights_only=True)
    except Exception as exc:  # the checksum matched, so this is a format problem
        raise CheckpointError(f"{path} could not be decoded: {exc}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds {type(payload).__name__}, not a checkpoint dict")
    return payload


def checkpoint_path(directory: Path, round: int) -> Path:
    """Where the checkpoint taken after round ``round`` lives."""
    return directory / f"round_{round:04d}.ckpt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(round, path)`` of every checkpoint in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)
