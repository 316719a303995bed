"""Personalization in an experiment: what it composes with, and the per-client figures.

Personal models come from three places (``fedgen.engine.client_models``): FedPer's
personal tensors (``task.params.personal``), Ditto (``strategy: ditto``, a strategy
whose client instructions ask for the personal step) and fine-tuning after the last
round (``eval.personalize_steps``). ``eval.per_client`` measures each client's models on
its own label distribution. Checked before round 1, each refusal with its reason:

- per-client evaluation for class-conditional images and for tables (text reports
  per-client perplexity already); for tables it measures the union of the clients' own
  models' rows (``fedgen.engine.table_union``), as ``eval.union`` does for images
  (``fedgen.engine.image_union``), so these need own models: fine-tuning after the last
  round (``eval.personalize_steps``), Ditto, or private model tensors;
- per-client evaluation not under DP: its figures read every client's label
  proportions and personal models, neither of which the guarantee covers;
- ``eval.model: union`` (every evaluation draws from the union of the clients' own
  models) only for class-conditional images whose clients keep model tensors of their
  own (private blocks, Ditto), in simulation (Flower's nodes keep those tensors), and
  not under DP;
- Ditto's personal step not under DP-SGD: the accountant charges each client the
  global step's steps only (secure aggregation and client-level DP compose: the
  released update is FedAvg's, and the personal model never leaves the client).
"""

from __future__ import annotations

from typing import Any

from fedgen.config import ExperimentConfig
from fedgen.engine import image_union
from fedgen.engine.client_models import describe, evaluate_clients, holds_own_model
from fedgen.engine.federation import Federation
from fedgen.eval.per_client import ClientQuality
from fedgen.modality import Conditioning, Modality
from fedgen.seeding import derive_seed
from fedgen.strategies.base import Strategy
from fedgen.strategies.ditto import DITTO_LAMBDA
from fedgen.tasks.base import Task


def personalization_problems(cfg: ExperimentConfig, task: Task, strategy: Strategy) -> list[str]:
    """What is wrong with the experiment's personalization settings, each with its fix."""
    problems: list[str] = []
    dp = cfg.uses_dp
    # Asked of the strategy: whether its clients are told to run Ditto's personal step.
    client_config = getattr(strategy, "client_config", None)
    ditto = client_config is not None and DITTO_LAMBDA in client_config(0)
    images = task.modality == Modality.IMAGES and task.conditioning == Conditioning.CLASS
    tables = task.modality == Modality.TABLES and not getattr(task, "samples_jointly", False)
    # Model tensors the clients keep (personal layers, partial blocks; not a table task's
    # kept optimizer moments), Ditto, or fine-tuning: own models.
    private_model = holds_own_model(task.initial_private_state())
    own_models = cfg.eval.personalize_steps > 0 or ditto or private_model
    for key in ("per_client", "union"):
        if not getattr(cfg.eval, key):
            continue
        if not images and not tables:
            problems.append(
                f"eval.{key} measures class-conditional images and row-federated "
                f"tables; task {cfg.task.name} generates {task.modality} (text reports "
                "per-client perplexity already; a column-split table has one joined model); "
                f"set eval.{key}=false"
            )
        union = key == "union" or tables
        if union and (images or tables) and not own_models:
            problems.append(
                f"eval.{key} measures the union of every client's "
                f"{'rows' if tables else 'images'} from its own model, and this run's "
                "clients have none: set eval.personalize_steps (local fine-tuning steps "
                "after the last round, e.g. 30), use strategy ditto, or keep blocks private "
                "(task.params.personal, a partial scheme)"
            )
        if dp:
            problems.append(
                f"eval.{key} reads each client's label proportions and its personal "
                f"model, which differential privacy does not cover; set eval.{key}=false "
                "under DP"
            )
    if cfg.eval.model == image_union.UNION:
        if not images:
            problems.append(
                "eval.model: union draws class-conditional images from the clients' own "
                f"models; task {cfg.task.name} generates {task.modality}; set eval.model "
                "to auto"
            )
        elif not (private_model or ditto):
            problems.append(
                "eval.model: union draws each class from the clients' own models during "
                "training, and this run's clients keep none: keep blocks private "
                "(task.params.personal, a partial scheme such as task.params.federate=usplit) "
                "or use strategy ditto; eval.union with eval.personalize_steps measures the "
                "union of fine-tuned models after the last round instead"
            )
        if cfg.backend.name == "flower":
            problems.append(
                "eval.model: union samples every client's own model, and on Flower those "
                "stay on the SuperNodes (the server holds only the federated tensors); set "
                "eval.model to auto, or measure the union in simulation"
            )
        if dp:
            problems.append(
                "eval.model: union samples every client's unnoised own model, which "
                "differential privacy does not cover; set eval.model to auto (the global "
                "model under DP)"
            )
    if cfg.dpsgd is not None and ditto:
        problems.append(
            f"strategy {cfg.strategy.name}: Ditto's personal steps would run through DP-SGD "
            "without being charged to the accountant (it counts the global step's); drop the "
            "dpsgd section, or use client-level DP (transforms clip, client_dp), which Ditto "
            "composes with"
        )
    return problems


def per_client_figures(exp: Any) -> dict[str, float]:
    """The final evaluation's personalized figures, for an experiment whose evaluator is
    built: with ``eval.per_client`` on images, per-client TSTR and Frechet distance of the
    global, personal and fine-tuned models (``fedgen.engine.client_models``); on a table,
    or with ``eval.union``, the figures of the union of the clients' own models
    (``fedgen.engine.table_union``, ``fedgen.engine.image_union``)."""
    cfg: ExperimentConfig = exp.config
    seed = derive_seed(cfg.seed, "eval", "per-client-models") % (2**31)
    steps = cfg.eval.personalize_steps
    if exp.task.modality == Modality.TABLES:
        # Imported here: the table union loads pandas, which an image run never needs.
        from fedgen.engine import table_union

        return table_union.union_figures(
            exp.federation, exp.evaluator, finetune_steps=steps, seed=seed
        )
    figures: dict[str, float] = {}
    if cfg.eval.union:
        figures.update(
            image_union.union_figures(
                exp.federation, exp.evaluator, finetune_steps=steps, seed=seed
            )
        )
    if cfg.eval.per_client:
        figures.update(_client_figures(exp, seed))
    return figures


def _client_figures(exp: Any, seed: int) -> dict[str, float]:
    cfg: ExperimentConfig = exp.config
    if exp.client_quality is None:
        evaluator = exp.evaluator
        exp.client_quality = ClientQuality(
            evaluator.test.float_images(),
            evaluator.test.labels,
            evaluator.num_classes,
            evaluator.classifier.features,
            samples=cfg.eval.per_client_samples,
            epochs=cfg.eval.tstr_epochs,
            seed=derive_seed(cfg.seed, "eval", "per-client") % (2**31),
        )
    return evaluate_clients(
        exp.federation, exp.client_quality, finetune_steps=cfg.eval.personalize_steps, seed=seed
    )


def per_client_descriptions(cfg: ExperimentConfig, modality: Modality) -> dict[str, str]:
    """What each per-client and union key of ``summary.json`` was computed on."""
    steps = cfg.eval.personalize_steps
    if modality == Modality.TABLES:
        from fedgen.engine import table_union

        return table_union.describe_union(steps)
    out = image_union.describe_union(steps) if cfg.eval.union else {}
    if cfg.eval.per_client:
        out.update(describe(cfg.eval.per_client_samples, cfg.eval.tstr_epochs, steps))
    return out


def evaluated_model(task: Task, client: int | None = None, fed: Federation | None = None) -> str:
    """What the run's global figures evaluate, in words (``summary.json``); ``client``: the
    client whose own model they are of (``fedgen.engine.client_models.evaluated_client``)."""
    if getattr(task, "samples_jointly", False):
        # A column-split synthesizer: Federation.load_global_into_task loads every part.
        return (
            "the joined model: the server's federated tensors with every client's own "
            "private part (its columns), as the clients would release their columns"
        )
    # Model tensors only: a table task's kept Adam moments ("optimizer/...") are no model.
    private = {k: v for k, v in task.initial_private_state().items() if "/" not in k}
    if not private:
        return "the global model: every trained tensor is federated"
    count = sum(v.numel() for v in private.values())
    total = count + sum(v.numel() for v in task.federated_state().values())
    if client is not None:
        examples = "" if fed is None else f", {fed.clients[client].num_examples} examples"
        return (
            f"client {client}'s own model (the client with the most examples among those "
            f"that trained{examples}): the "
            f"federated tensors with its {len(private)} private tensors ({count} of {total} "
            "values: personal layers or unfederated blocks); eval.model: global evaluates "
            "them at their initial values instead, and eval.per_client measures every client"
        )
    return (
        f"the global model: the federated tensors with the {len(private)} private tensors "
        f"({count} of {total} values: personal layers or unfederated blocks) at their "
        "initial values, as no client holds them; each client's own model is measured by "
        "eval.per_client (client_*_personal; text: perplexity_personal)"
    )
