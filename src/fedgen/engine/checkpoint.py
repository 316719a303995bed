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
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from fedgen.errors import CheckpointError, FedgenError
from fedgen.files import CHECKPOINT_MAGIC, sync_folder
from fedgen.privacy.noise_key import key_from_state
from fedgen.transforms.base import FREE_SHAPE, PRIVATE_PREFIX
from fedgen.types import StateDict

log = logging.getLogger(__name__)

MAGIC = CHECKPOINT_MAGIC
_NAME = re.compile(r"round_(\d{4,})\.ckpt$")


def save_checkpoint(
    path: Path,
    payload: dict[str, Any],
    before_replace: Callable[[str], None] | None = None,
) -> Path:
    """Atomically write ``payload`` to ``path`` with its checksum.

    ``before_replace`` is called with the sha256 (hex) of the file's bytes after they
    are on disk and before the file takes its name (the ledger logs it there, so no
    checkpoint ever sits under its name unlogged).
    """
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # A leftover of a crashed write (or a link planted in its place) is removed, not
    # reused: O_TRUNC would keep its mode and follow its link.
    tmp.unlink(missing_ok=True)
    # Owner-only: a checkpoint holds the server's state, including the secret that
    # seeds DP noise (``fedgen.privacy.noise_key``).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    logged = False
    try:
        with os.fdopen(fd, "wb") as f:
            data = MAGIC + hashlib.sha256(body).digest() + body
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # From here the ledger may log the bytes (``before_replace`` commits the entry,
        # then signs a head, which may fail): they stay, and a resume reads them as the
        # round that went to no one. A .tmp it never logged is harmless (the digests
        # differ) and the next save removes it.
        logged = True
        if before_replace is not None:
            before_replace(hashlib.sha256(data).hexdigest())
        os.replace(tmp, path)
    except BaseException:
        # Nothing half-written, and never logged, stays beside the checkpoints.
        if not logged:
            tmp.unlink(missing_ok=True)
        raise
    # The rename is durable only once the folder is: without this, a power cut could
    # take the file back although the next round had already sent its model out.
    sync_folder(path.parent)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; raise ``CheckpointError`` if it is truncated or corrupted."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: Path) -> tuple[dict[str, Any], str]:
    """A checkpoint's payload and the sha256 (hex) of the very bytes it was read from
    (what the ledger logs for the file), so that a check of the digest is a check of the
    model loaded, not of whatever the file holds by then; ``CheckpointError`` as
    ``load_checkpoint``."""
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
    return payload, hashlib.sha256(raw).hexdigest()


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


def newest_intact(
    found: list[tuple[int, Path]],
) -> tuple[tuple[int, Path, dict[str, Any], str] | None, list[str]]:
    """The newest of ``found`` (``list_checkpoints``) whose bytes read intact, as
    ``(round, path, payload, sha256 of its bytes)`` or None when none does, and the damage
    skipped on the way (``"name: why"``, newest first; each is logged). A crash mid-write
    or a damaged disk costs the rounds after the previous checkpoint, never the run."""
    damaged: list[str] = []
    for round_, path in reversed(found):
        try:
            return (round_, path, *read_checkpoint(path)), damaged
        except CheckpointError as exc:
            log.warning("skipping a damaged checkpoint: %s", exc)
            damaged.append(f"{path.name}: {exc}")
    return None, damaged


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


# -- restoring a federation ----------------------------------------------------------


class Restorable(Protocol):
    """What ``restore_state`` loads into: a ``Federation``, or anything shaped like one."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


#: Keys every federation state has; others (noise key, privacy, ledger) depend on the
#: run and its age, and ``load_state_dict`` says what to do when one is missing.
_REQUIRED = ("next_round", "global_state", "private_states", "strategy", "transforms", "history")
#: Parts of a state checked field by field; every other part only for its tensors.
_PLAIN = frozenset({"next_round", "global_state", "private_states", "history", "noise_key"})


def restore_checkpoint(
    target: Restorable,
    path: Path,
    *,
    format: int,
    fingerprint: str | tuple[str, ...],
    private_reference: StateDict | None = None,
) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``target``; return its payload.

    Everything a damaged or foreign file can hold ends in ``CheckpointError`` naming the
    file, what is wrong and what to do: unreadable, truncated or altered bytes
    (``load_checkpoint``), another checkpoint ``format`` or experiment ``fingerprint``,
    or a federation state that does not fit ``target`` (``restore_state``).
    """
    payload = load_checkpoint(path)
    state = check_payload(payload, path, format=format, fingerprint=fingerprint)
    restore_state(target, state, path, private_reference)
    return payload


#: What to do when a checkpoint's fingerprint is not the config's, for a resume.
RESUME_ADVICE = "resume with the run folder's own config.yaml, changing only rounds/eval"


def check_payload(
    payload: dict[str, Any],
    path: Path,
    *,
    format: int,
    fingerprint: str | tuple[str, ...],
    advice: str = RESUME_ADVICE,
) -> Any:
    """The payload's federation state, if the payload is of ``format`` and ``fingerprint``
    (or one of several: ``ExperimentConfig.fingerprints``).

    Raises ``CheckpointError`` otherwise, with ``advice`` for another fingerprint. Values
    are compared by type first: a payload can hold a tensor where a number belongs, and
    ``tensor != 1`` is no bool.
    """
    found = payload.get("format")
    if type(found) is not int or found != format:
        raise CheckpointError(f"{path} has format {_short(found)}, expected {format}")
    accepted = (fingerprint,) if isinstance(fingerprint, str) else fingerprint
    found = payload.get("fingerprint")
    if not isinstance(found, str) or found not in accepted:
        raise CheckpointError(
            f"{path} belongs to a different experiment (fingerprint {_short(found)} != "
            f"{accepted[0]}); {advice}"
        )
    if not isinstance(payload.get("federation"), dict):
        raise CheckpointError(f"{path} holds no federation state; it is not a run checkpoint")
    return payload["federation"]


def restore_state(
    target: Restorable,
    state: object,
    path: Path,
    private_reference: StateDict | None = None,
) -> None:
    """Load a checkpoint's federation ``state`` into ``target`` or raise ``CheckpointError``.

    ``state`` is checked against ``target.state_dict()`` (the freshly built federation
    of the same config) before anything is loaded: the same top-level keys, every
    global tensor with the model's shape and dtype, every tensor anywhere (private
    states, strategy, transforms, privacy) dense and finite, and one under a model
    tensor's name (an EMA, a client's head) of that tensor's shape. Whatever the
    components' own ``load_state_dict`` still reject becomes a ``CheckpointError`` too;
    ``target`` must then not be used (it may hold part of the checkpoint).

    Args:
        target: the federation to restore.
        state: the checkpoint payload's ``"federation"`` entry.
        path: the checkpoint file, named in every message.
        private_reference: the task's private tensors by name
            (``task.private_state()``); when given, each client's private tensors must
            be among them or the model's, with their shapes and dtypes.
    """
    checked = _check_state(state, target.state_dict(), path, private_reference)
    try:
        target.load_state_dict(checked)
        target.state_dict()  # what was loaded must be checkpointable again
    except CheckpointError as exc:
        # The component's own message says what to do (e.g. a missing key store).
        raise CheckpointError(
            f"{path}: {exc}; or delete the file to resume from the previous checkpoint"
        ) from exc
    except FedgenError as exc:
        raise CheckpointError(_unfit(path, _short(str(exc), 300))) from exc
    # The structure was checked above; what is left is a component refusing its own
    # part (a strategy state of another strategy, a value of the wrong kind).
    except Exception as exc:
        raise CheckpointError(_unfit(path, f"{type(exc).__name__}: {_short(exc)}")) from exc


def _unfit(path: Path, problem: str) -> str:
    return (
        f"{path} does not fit this experiment ({problem}); resume with the run folder's own "
        "config.yaml, or delete the file to resume from the previous checkpoint"
    )


def _check_state(
    state: object,
    reference: dict[str, Any],
    path: Path,
    private_reference: StateDict | None,
) -> dict[str, Any]:
    """``state`` itself once it is known to fit ``reference`` (see ``restore_state``)."""

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(_unfit(path, problem))

    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise fail(f"its federation state is {_short(state)}, not a mapping of names")
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    next_round = state["next_round"]
    if type(next_round) is not int or next_round < 0:
        raise fail(f"next_round is {_short(next_round)}, not a round number")
    model: StateDict = reference["global_state"]
    glob = state["global_state"]
    if not isinstance(glob, dict) or glob.keys() != model.keys():
        raise fail("its model tensors are not this model's")
    for key, ref in model.items():
        _check_tensor(glob[key], f"global_state[{key!r}]", fail, ref, exact=True)
    privates = state["private_states"]
    if not isinstance(privates, dict):
        raise fail(f"private_states is {_short(privates)}, not a mapping")
    known = {**model, **(private_reference or {})}
    for cid, tensors in privates.items():
        if not (isinstance(cid, str) and cid.isascii() and cid.isdecimal()):
            raise fail(f"private_states has the key {_short(cid)}, not a client id")
        if not isinstance(tensors, dict):
            raise fail(f"private_states[{cid!r}] is {_short(tensors)}, not a mapping")
        for key, value in tensors.items():
            where = f"private_states[{cid!r}][{_short(key)}]"
            owner = _transform_private_reference(key, model) if isinstance(key, str) else None
            if isinstance(key, str) and _free_shape(key):
                # A transform's tensor of its own shape (a codec's shared basis).
                _check_tensor(value, where, fail, None, exact=False)
                continue
            if owner is not None:
                # A transform's own tensor (an error-feedback residual) of a model tensor.
                _check_tensor(value, where, fail, owner, exact=False)
                continue
            if private_reference is not None and key not in known:
                raise fail(f"{where} is not a tensor of this task")
            _check_tensor(value, where, fail, known.get(key), exact=True)
    transforms = state["transforms"]
    if not isinstance(transforms, list) or len(transforms) != len(reference["transforms"]):
        raise fail(
            f"transforms holds {_short(transforms)}, not the states of this experiment's "
            f"{len(reference['transforms'])} transforms"
        )
    try:
        key_from_state(state.get("noise_key"))
    except ValueError as exc:
        raise fail(f"its DP noise key is malformed: {exc}") from None
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(m, dict) for m in history):
        raise fail("history is not a list of round records")
    for key, value in state.items():
        if isinstance(reference.get(key), dict) and not isinstance(value, dict):
            raise fail(f"{key} is {_short(value)}, not a mapping")
        if key not in _PLAIN:
            _check_nested(value, key, fail, model)
    return state


def _transform_private_reference(key: str, model: StateDict) -> torch.Tensor | None:
    """The model tensor a transform's private tensor ``PRIVATE_PREFIX<transform>/<key>``
    belongs to; None for any other key (or one naming no model tensor)."""
    if not key.startswith(PRIVATE_PREFIX):
        return None
    _, sep, name = key.removeprefix(PRIVATE_PREFIX).partition("/")
    return model.get(name) if sep else None


def _free_shape(key: str) -> bool:
    """``PRIVATE_PREFIX<transform>/FREE_SHAPE...``: a private tensor not shaped like a
    model tensor."""
    _, sep, name = key.removeprefix(PRIVATE_PREFIX).partition("/")
    return key.startswith(PRIVATE_PREFIX) and bool(sep) and name.startswith(FREE_SHAPE)


def _check_nested(value: object, where: str, fail: Any, model: StateDict) -> None:
    """Every tensor under ``value`` is dense and finite; what is named like a model tensor
    is a tensor of its shape. Iterative: a hostile payload cannot exhaust the stack."""
    stack: list[tuple[object, str, object]] = [(value, where, None)]
    while stack:
        node, at, name = stack.pop()
        ref = model.get(name) if isinstance(name, str) else None
        if isinstance(node, torch.Tensor) or ref is not None:
            _check_tensor(node, at, fail, ref, exact=False)
        elif isinstance(node, dict):
            stack.extend((v, f"{at}[{_short(k)}]", k) for k, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{at}[{i}]", None) for i, v in enumerate(node))


def _check_tensor(
    value: object, where: str, fail: Any, ref: torch.Tensor | None, exact: bool
) -> None:
    if not isinstance(value, torch.Tensor):
        raise fail(f"{where} is {_short(value)}, not a tensor")
    if value.layout != torch.strided or value.is_meta or value.is_quantized:
        raise fail(f"{where} is a {value.layout} tensor, not a dense one")
    if ref is not None and value.shape != ref.shape:
        raise fail(f"{where} has shape {tuple(value.shape)}, the model's has {tuple(ref.shape)}")
    if ref is not None and exact and value.dtype != ref.dtype:
        raise fail(f"{where} is {value.dtype}, the model's is {ref.dtype}")
    if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
        raise fail(f"{where} holds NaN or Inf")


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    try:
        text = repr(value)
    except Exception:  # an int past the digit limit, a tensor of an odd kind
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
