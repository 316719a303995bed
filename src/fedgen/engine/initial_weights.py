"""Start a federation from another run's trained model (``federation.init_from``).

Flower's strategies take ``initial_parameters``; this is fedgen's form of it: the
global model of a finished (or interrupted) run, read from its newest intact
checkpoint. The usual use is public pretraining before private training: a generator
and discriminator trained on public data, then fine-tuned across clients under DP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint, newest_intact
from fedgen.errors import CheckpointError
from fedgen.types import StateDict


@dataclass(frozen=True)
class InitialWeights:
    """A run's global model, where it came from, and what that run trained on."""

    state: StateDict
    checkpoint: Path
    #: The source run's ``data.sources`` (its ``config.yaml``); None when unknown.
    sources: list[str] | None


def read_initial_weights(source: Path | str) -> InitialWeights:
    """The global model saved in ``source``: a run folder (its newest intact checkpoint)
    or one checkpoint file; ``CheckpointError`` saying what to pass otherwise."""
    path = Path(source).expanduser()
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = list_checkpoints(ckpt_dir)
        if not found:
            raise CheckpointError(
                f"federation.init_from: {path} holds no checkpoint; give a run folder of "
                "`fedgen run` (with checkpoints/) or one round_NNNN.ckpt file"
            )
        newest, damaged = newest_intact(found)
        if newest is None:
            raise CheckpointError(
                "federation.init_from: every checkpoint is damaged: " + "; ".join(damaged)
            )
        _, checkpoint, payload, _ = newest
        run_dir = ckpt_dir.parent if ckpt_dir.name == "checkpoints" else ckpt_dir
    elif path.is_file():
        payload, checkpoint = load_checkpoint(path), path
        run_dir = path.parent.parent
    else:
        raise CheckpointError(
            f"federation.init_from: {path} does not exist; give a run folder or a checkpoint"
        )
    federation = payload.get("federation")
    state = federation.get("global_state") if isinstance(federation, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"federation.init_from: {checkpoint} holds no global model (not a checkpoint of "
            "`fedgen run`)"
        )
    return InitialWeights(dict(state), checkpoint, _trained_on(run_dir / "config.yaml"))


def fit_problems(initial: InitialWeights, expected: StateDict) -> list[str]:
    """Why ``initial`` cannot start a model whose federated tensors are ``expected``."""
    missing = [k for k in expected if k not in initial.state]
    wrong = [
        f"{k} {tuple(initial.state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in initial.state and initial.state[k].shape != v.shape
    ]
    if not missing and not wrong:
        return []
    detail = "; ".join(
        f"{what} {_first(items)}"
        for what, items in (("missing", missing), ("shapes", wrong))
        if items
    )
    return [
        f"federation.init_from: {initial.checkpoint} is not a model of this task and "
        f"architecture ({detail}); start from a run with the same task and task.params"
    ]


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def _trained_on(config_yaml: Path) -> list[str] | None:
    """``data.sources`` of a run's ``config.yaml``; None without a readable one."""
    try:
        loaded = yaml.safe_load(config_yaml.read_text())
    except (OSError, yaml.YAMLError):
        return None
    data = loaded.get("data") if isinstance(loaded, dict) else None
    sources = data.get("sources") if isinstance(data, dict) else None
    return [str(s) for s in sources] if isinstance(sources, list) else None
