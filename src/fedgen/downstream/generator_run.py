"""Opening the generator run a downstream classifier draws from, and refusing a wrong one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgen.config import ExperimentConfig, load_config
from fedgen.downstream.errors import DownstreamError
from fedgen.engine.client_models import chosen_client, load_client_model, model_label
from fedgen.engine.image_union import UNION
from fedgen.errors import FedgenError
from fedgen.experiment import Experiment, load_run
from fedgen.modality import Conditioning, Modality
from fedgen.tasks.base import Task

#: A run that ended on its own: every planned round, or every round its DP budget allowed.
FINISHED = ("completed", "budget_exhausted")


@dataclass
class GeneratorRun:
    """A finished generator run, its newest checkpoint loaded."""

    folder: Path
    experiment: Experiment
    summary: dict[str, Any]
    #: The client whose own model the samples come from (``downstream.generator_model``;
    #: by default the one the run's own evaluations showed), or None: the global model.
    client: int | None = None

    @property
    def task(self) -> Task:
        """The generator with the chosen model loaded (as ``fedgen sample`` draws)."""
        fed = self.experiment.federation
        if self.client is None:
            return fed.load_global_into_task()
        load_client_model(fed, self.client)
        return fed.task

    @property
    def model(self) -> str:
        """The sampled model as ``metrics.jsonl`` names it: ``global`` or ``client N``."""
        return model_label(self.client)

    @property
    def class_names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = self.experiment.data.train.class_names
        return names

    @property
    def epsilon(self) -> float | None:
        """The (epsilon, delta)-DP the generator's training spent, if it had DP."""
        eps = self.summary.get("epsilon")
        return None if eps is None else float(eps)


def open_generator_run(folder: str | Path, cfg: ExperimentConfig) -> GeneratorRun:
    """Check that ``folder`` is a finished generator run of ``cfg``'s data set, with a
    class-conditional image generator, and load it.

    Raises ``DownstreamError`` naming what is wrong and what to do: not a run folder,
    unfinished (no summary, or interrupted), another data set, a generator that is not
    class-conditional, or classes other than ``cfg.downstream.classes``.
    """
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise DownstreamError(
            f"downstream.generator_run: {folder} is not a run folder (no config.yaml); "
            "train a generator with fedgen run first, or leave generator_run null to train "
            "one in this experiment"
        )
    summary_file = folder / "summary.json"
    summary: dict[str, Any] = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    status = summary.get("status", "running or killed (no summary.json)")
    if status == "failed":
        raise DownstreamError(
            f"downstream.generator_run: {folder} failed ({summary.get('stop_reason')}); "
            "train a generator that works and use that"
        )
    if status not in FINISHED:
        raise DownstreamError(
            f"downstream.generator_run: {folder} is unfinished ({status}); finish it with "
            f"fedgen run --resume {folder}, then use it"
        )
    try:
        gen_cfg = load_config(folder / "config.yaml", validate_components=False)
    except FedgenError as exc:
        raise DownstreamError(f"downstream.generator_run: {folder}: {exc}") from exc
    if gen_cfg.data.sources != cfg.data.sources:
        raise DownstreamError(
            f"downstream.generator_run: {folder} generates {gen_cfg.data.sources}, but this "
            f"recipe classifies {cfg.data.sources}; use a generator run of the same data set "
            "or set data.sources to its"
        )
    experiment = load_run(folder)
    task = experiment.task
    if task.modality != Modality.IMAGES or task.conditioning != Conditioning.CLASS:
        raise DownstreamError(
            f"downstream.generator_run: task {gen_cfg.task.name} is not a class-conditional "
            "image generator; use cgan, cvae or ddpm"
        )
    # The model the generator run's own evaluations showed, unless the recipe says which.
    choice = cfg.downstream.generator_model if cfg.downstream is not None else "run"
    if choice == "run" and experiment.config.eval.model == UNION:
        # The arms train on one generator's networks (and attack them); a union has many.
        raise DownstreamError(
            f"downstream.generator_run: {folder} evaluated the union of its clients' own "
            "models (eval.model: union), which the downstream arms cannot use as one "
            "generator; set downstream.generator_model to largest_client or global"
        )
    client = chosen_client(experiment.federation, experiment.config.eval.model, choice)
    run = GeneratorRun(folder, experiment, summary, client)
    check_classes(run.class_names, cfg)
    return run


def check_classes(generator_classes: tuple[str, ...], cfg: ExperimentConfig) -> None:
    """Refuse a downstream recipe whose ``classes`` are not the generator's, in order."""
    assert cfg.downstream is not None
    wanted = cfg.downstream.classes
    if wanted is not None and tuple(wanted) != tuple(generator_classes):
        raise DownstreamError(
            f"downstream.classes {list(wanted)} do not match the generator's classes "
            f"{list(generator_classes)}: a class-conditional generator draws only its own "
            "labels; list exactly those (in that order) or set downstream.classes to null"
        )
