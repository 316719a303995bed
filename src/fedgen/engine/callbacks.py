"""Callbacks that run around rounds: evaluate, sample grids, checkpoint, log, progress.

Order matters and is fixed by ``fedgen.experiment``: evaluation first (it adds
quality figures to the round's record), then the checkpoint, then the metrics
line, then the progress bar.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedgen.engine.checkpoint import checkpoint_path, prune_checkpoints, save_checkpoint
from fedgen.engine.federation import Callback, Federation, RoundRecord
from fedgen.engine.image_union import load_run_model, run_model_label
from fedgen.files import write_text_atomic
from fedgen.modality import Modality
from fedgen.registry import SAMPLE_WRITERS
from fedgen.seeding import torch_generator

log = logging.getLogger(__name__)

QUALITY_KEYS = (
    "frechet_distance",
    "kid",
    "inception_like_score",
    "precision",
    "recall",
    "tstr_accuracy",
)


class EvaluationCallback(Callback):
    """Every ``every`` rounds and after the last one: quality figures and a sample grid.

    TSTR (a fresh classifier trained on ``tstr_samples`` synthetic images) runs after
    the final round, and every ``tstr_every`` rounds when that is above 0: it is the
    costly figure and the one reported.
    """

    def __init__(
        self,
        evaluate: Callable[[Federation, bool], dict[str, float]],
        every: int,
        samples_dir: Path,
        grid_per_class: int,
        seed: int,
        final: bool = True,
        model: str = "global",
        tstr_every: int = 0,
        best_of: int = 1,
    ) -> None:
        self.evaluate = evaluate
        self.model = model
        self.best_of = best_of
        self.every = every
        self.tstr_every = tstr_every
        self.final = final
        self.samples_dir = samples_dir
        self.grid_per_class = grid_per_class
        self.seed = seed
        self.latest: dict[str, float] = {}

    @property
    def pending_dir(self) -> Path:
        """Where a round's samples wait until its checkpoint is written (``publish``)."""
        return self.samples_dir / ".pending"

    def sort_pending(self, fed: Federation) -> None:
        """At the start of a run (``PublishSamples``, after the checkpoint and ledger
        callbacks have accepted the resume): samples of a round the resumed run trains
        again (its checkpoint was never written) were never released and are dropped,
        its own replace them; those of a round the checkpoint covers (a stop between the
        checkpoint and ``publish``) are published, since nothing would make them again."""
        self._release(before=fed.next_round)

    def publish(self) -> None:
        """Move the round's samples into ``samples_dir``, once the checkpoint callback has
        run (under DP, which checkpoints every round: once the round's checkpoint is written).

        Under client-level DP a round trained again after a crash draws the same noise
        (keyed by round) over a sum that may differ; a release of the first attempt
        beside the second would tell the difference without noise. So nothing of a
        round leaves before the checkpoint that makes a resume start after it.
        """
        self._release(before=None)

    def _release(self, before: int | None) -> None:
        """Publish the pending files (those of rounds under ``before``, if given), drop
        the rest, and remove the emptied folder a user would wonder about."""
        if not self.pending_dir.is_dir():
            return
        for path in sorted(self.pending_dir.iterdir()):
            round_ = _round_of(path.name)
            if before is None or (round_ is not None and round_ < before):
                os.replace(path, self.samples_dir / path.name)
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self.pending_dir.rmdir()

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        last = fed.is_final_round(record.round)
        periodic = self.every > 0 and (record.round + 1) % self.every == 0
        with_tstr = (last and self.final) or (
            self.tstr_every > 0 and (record.round + 1) % self.tstr_every == 0
        )
        if not (periodic or with_tstr):
            return
        t0 = time.perf_counter()
        # Which model this round's figures and grid are of: under partial participation
        # the largest client that trained can change from one evaluation to the next.
        evaluated = run_model_label(fed, self.model)
        figures = self.evaluate(fed, with_tstr)
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        save_samples(
            fed,
            self.pending_dir / f"round_{record.round:04d}",
            self.grid_per_class,
            self.seed,
            self.model,
            self.best_of,
        )
        figures["eval_seconds"] = time.perf_counter() - t0
        record.metrics.update(figures)
        record.metrics["evaluated_model"] = evaluated
        self.latest = figures


def save_samples(
    fed: Federation,
    path: Path,
    per_condition: int,
    seed: int,
    model: str = "global",
    best_of: int = 1,
) -> Path:
    """Samples of the evaluated model (``eval.model``: the global one, the own model of
    the largest client when clients keep private tensors, or the union of the clients' own
    models) a person can look at, written by the sample writer of the task's modality
    (images: a PNG grid, one row per class; fixed noise across rounds; each the best of
    ``best_of`` draws). ``path`` has no suffix; the writer adds its own."""
    task = load_run_model(fed, model, torch_generator(seed, "grid-union"), best_of)
    writer = SAMPLE_WRITERS.get(str(task.modality))
    written: Path = writer(task, path, per_condition, torch_generator(seed, "grid"))
    if task.modality == Modality.TEXT and task.initial_private_state():
        # Clients that keep personal tensors (FedPer adapters) each write what their own
        # model generates, for the first few clients (each costs a generation pass).
        for cid in sorted(fed.private_states)[:PER_CLIENT_SAMPLES]:
            task.load_state(fed.private_states[cid])
            writer(
                task,
                path.with_name(f"{path.name}_client_{cid}"),
                per_condition,
                torch_generator(seed, "grid", cid),
            )
        fed.load_global_into_task()
    return written


def _round_of(name: str) -> int | None:
    """The round of a sample file named ``round_NNNN...`` (every digit: a run past round
    9,999 writes five), None for any other name."""
    found = re.match(r"round_(\d+)", name)
    return int(found.group(1)) if found else None


class PublishSamples(Callback):
    """After the checkpoint callback: the evaluation's samples of the round leave
    ``.pending`` for the samples folder (``EvaluationCallback.publish``)."""

    def __init__(self, evaluation: EvaluationCallback) -> None:
        self.evaluation = evaluation

    def on_run_start(self, fed: Federation) -> None:
        self.evaluation.sort_pending(fed)

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        self.evaluation.publish()


#: How many clients' own samples a text run with personal tensors writes per evaluation.
PER_CLIENT_SAMPLES = 4


class CheckpointCallback(Callback):
    """Saves the federation state after every ``every`` rounds and at the end."""

    def __init__(
        self,
        directory: Path,
        every: int,
        keep: int,
        meta: dict[str, Any],
        on_written: Callable[[int, Path, str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.every = every
        self.keep = keep
        self.meta = meta
        #: Called with (round, path, sha256 hex) before a checkpoint takes its name.
        self.on_written = on_written

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        if (record.round + 1) % self.every == 0 or fed.is_final_round(record.round):
            self.save(fed)

    def save(self, fed: Federation) -> Path:
        round_ = fed.next_round - 1
        path = checkpoint_path(self.directory, round_)
        hook = self.on_written
        save_checkpoint(
            path,
            {**self.meta, "federation": fed.state_dict()},
            None if hook is None else (lambda digest: hook(round_, path, digest)),
        )
        prune_checkpoints(self.directory, self.keep)
        return path


class MetricsWriter(Callback):
    """Appends one JSON object per round to ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_run_start(self, fed: Federation) -> None:
        # On resume the file is rewritten from the checkpoint's history: it holds
        # every line of the rounds the checkpoint covers, evaluation figures
        # included, so a line cut short by a kill, or lines of rounds trained after
        # the checkpoint, cannot survive into the resumed run.
        if fed.next_round > 0 or self.path.exists():
            text = "".join(json.dumps(_jsonable(m)) + "\n" for m in fed.history)
            write_text_atomic(self.path, text)

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record.metrics)) + "\n")


class ProgressCallback(Callback):
    """A progress bar: round, clients, losses and the latest quality figures."""

    def __init__(self, title: str, enabled: bool = True) -> None:
        self.title = title
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.quality: dict[str, float] = {}

    def on_run_start(self, fed: Federation) -> None:
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("round {task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self.progress.start()
        self.task_id = self.progress.add_task(
            self.title, total=fed.rounds, completed=fed.next_round, status=""
        )

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        m = record.metrics
        self.quality.update({k: m[k] for k in QUALITY_KEYS if k in m})
        # Under client-level DP the cohort's size is withheld (Federation's
        # COHORT_KEYS); saying "clients 0" there would read as a round that trained no one.
        cohort = f"clients {m['clients']}" if "clients" in m else "clients withheld"
        parts = [cohort + (f" ({m['failures']} failed)" if m.get("failures") else "")]
        parts += [
            f"{k.split('/', 1)[1]} {v:.3f}"
            for k, v in m.items()
            if k.startswith("loss/") and isinstance(v, float)
        ]
        parts += [f"{_short(k)} {v:.3g}" for k, v in self.quality.items()]
        if isinstance(m.get("epsilon"), float):
            parts.append(f"ε {m['epsilon']:.3g}")
        status = " | ".join(parts)
        if self.progress is not None:
            self.progress.update(self.task_id, completed=fed.next_round, status=status)
        else:
            print(f"round {record.round + 1}/{fed.rounds} {status}", file=sys.stderr, flush=True)

    def on_run_end(self, fed: Federation, completed: bool) -> None:
        if self.progress is not None:
            self.progress.stop()
        if fed.stop_reason is not None:
            print(f"stopped after {fed.next_round} round(s): {fed.stop_reason}", file=sys.stderr)


def _short(key: str) -> str:
    return {
        "frechet_distance": "FD",
        "inception_like_score": "IS-like",
        "tstr_accuracy": "TSTR",
    }.get(key, key)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None  # JSON has no NaN/Inf
        elif isinstance(v, torch.Tensor):
            out[k] = v.item()
        else:
            out[k] = v
    return out
