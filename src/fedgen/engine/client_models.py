"""Which model each client ends a federation with, and its quality on the client's data.

A client's model is the global model (the federated tensors; the task's private tensors
at their initial values), or its personal one:

- **FedPer** (``task.params.personal``) or a partial FedDiffuse scheme: the global
  federated tensors with the client's own private tensors;
- **Ditto** (``strategy: ditto``): the client's personal model (its private state's
  ``fedgen.engine.ditto.PERSONAL_PREFIX`` tensors) with its private tensors;
- **fine-tuned** (``eval.personalize_steps`` > 0): the client's model above (or the
  global one) trained further on the client's own shard, from a seed of its id, after
  the last round: what a client gets by adapting the federation's model locally.

Beside the models, ``real``: real training images with the client's labels, drawn from
every client's shard pooled, scored as if a generator had produced them. Under label
skew every client's classes look alike across clients, so this is what a perfect
class-conditional generator would score for the client: the figures' ceiling, which
says how much a personalized model can gain over the global one at all.

Evaluation runs in the simulation's server process, which holds every shard; in a
deployment each client would measure its own figures. Under DP it is refused (the
figures read each client's label proportions and unnoised personal models).
"""

from __future__ import annotations

from typing import Any

import torch

from fedgen.engine.ditto import personal_model
from fedgen.engine.federation import Federation
from fedgen.errors import ConfigError
from fedgen.eval.per_client import (
    ClientQuality,
    label_proportions,
    real_images_for_labels,
    summarise,
)
from fedgen.modality import Modality
from fedgen.seeding import torch_generator
from fedgen.tasks.base import Task
from fedgen.transforms.base import PRIVATE_PREFIX
from fedgen.types import StateDict


def task_private(private: StateDict | None) -> StateDict:
    """The task's own tensors of a client's private state (not a transform's or Ditto's)."""
    return {k: v for k, v in (private or {}).items() if not k.startswith(PRIVATE_PREFIX)}


def has_personal_models(fed: Federation) -> bool:
    """Whether any client holds a model of its own (private model tensors or a Ditto
    model; a table task's kept optimizer moments are private state but no model)."""
    return any(holds_own_model(p) for p in fed.private_states.values())


def union_models(fed: Federation, finetune_steps: int) -> list[str]:
    """The clients' own models a run's union is drawn from: ``personal`` when clients
    keep personal tensors or a Ditto model, ``finetuned`` with ``finetune_steps`` > 0."""
    return [
        *(["personal"] if has_personal_models(fed) else []),
        *(["finetuned"] if finetune_steps > 0 else []),
    ]


def evaluated_client(fed: Federation, choice: str) -> int | None:
    """The client whose own model a run's evaluations and sample grids show (``eval.model``),
    or None for the global model.

    ``global``: always the global model. ``largest_client``/``auto``: the client with the
    most examples among those holding their own private tensors, when the task has
    private model tensors (FedPer's personal layers, a partial FedDiffuse scheme's
    blocks): with private tensors, the global model alone (their initial values) is what
    no client samples with. Under partial participation the choice can move to a larger
    client when it first trains. Always the global model under DP (the
    figures would describe one client's unnoised private blocks), for text (its
    evaluator scores every client on its own text, from the global model), and for a
    column-split table task (it samples with every client's part already).
    """
    if choice == "union":
        # A programming error: callers draw the union through image_union.load_run_model.
        raise ValueError("eval.model union is no single client's model; see image_union")
    task = fed.task
    if choice == "global" or getattr(task, "samples_jointly", False) or fed.privacy is not None:
        return None
    if task.modality == Modality.TEXT:
        return None
    # Model tensors only: a table task's kept Adam moments ("optimizer/...") are no model.
    if not any("/" not in k for k in task.initial_private_state()):
        return None
    holders = [
        cid
        for cid, state in fed.private_states.items()
        if any("/" not in k for k in task_private(state))
    ]
    if not holders:
        return None  # no client has trained yet: each holds the initial private tensors
    return max(holders, key=lambda cid: (fed.clients[cid].num_examples, -cid))


def load_evaluated_model(fed: Federation, choice: str) -> tuple[Task, int | None]:
    """Load the model ``evaluated_client`` names into ``fed.task``; the task and the client."""
    client = evaluated_client(fed, choice)
    if client is None:
        return fed.load_global_into_task(), None
    load_client_model(fed, client)
    return fed.task, client


def model_label(client: int | None) -> str:
    """The evaluated model as each evaluated round records it (``metrics.jsonl``'s
    ``evaluated_model``): ``global``, or ``client N`` for client N's own model."""
    return "global" if client is None else f"client {client}"


def holds_own_model(private: StateDict | None) -> bool:
    """Whether a client's private state holds model tensors of its own: the task's
    private tensors (not a table task's kept optimizer moments) or a Ditto model."""
    return any("/" not in k for k in task_private(private)) or bool(personal_model(private or {}))


def chosen_client(
    fed: Federation, run_choice: str, model: str = "run", client: int | None = None
) -> int | None:
    """The client whose own model a command samples from a finished run, or None for
    the global model.

    ``model``: ``run`` follows the run's own ``eval.model`` (``run_choice``), so the
    command draws from the model the run's evaluations and ``summary.json`` named;
    ``global`` or ``largest_client`` choose as ``eval.model`` does. ``client`` asks for
    that client's own model (with ``model`` left at ``run``).

    Raises ``ConfigError`` for both at once, an unknown client, or a client with no
    model of its own (it never trained, the run keeps no private tensors, or they stay
    on the Flower nodes): its model is the global one, which ``--model global`` names.
    """
    if client is None:
        return evaluated_client(fed, run_choice if model == "run" else model)
    if model != "run":
        raise ConfigError(
            f"--client {client} and --model {model} each choose a model; give one of them"
        )
    if client not in fed.clients:
        raise ConfigError(f"no client {client} in this run; clients are 0..{len(fed.clients) - 1}")
    if not holds_own_model(fed.private_states.get(client)):
        holders = sorted(c for c, p in fed.private_states.items() if holds_own_model(p))
        if holders:
            raise ConfigError(
                f"client {client} has no model of its own: it never trained, so it holds no "
                f"private tensors; give --client one of {', '.join(map(str, holders))}, or "
                "--model global for the global model (what this client would sample with)"
            )
        raise ConfigError(
            f"client {client} has no model of its own: this run's clients keep no model "
            "tensors of their own here (none are private, or they stay on the deployment's "
            "nodes), so every client samples the global model; drop --client, or give "
            "--model global"
        )
    return client


def load_chosen_model(
    fed: Federation, run_choice: str, model: str = "run", client: int | None = None
) -> tuple[Task, int | None]:
    """Load the model ``chosen_client`` names into ``fed.task``; the task and the client."""
    chosen = chosen_client(fed, run_choice, model, client)
    if chosen is None:
        return fed.load_global_into_task(), None
    load_client_model(fed, chosen)
    return fed.task, chosen


def load_client_model(fed: Federation, client_id: int) -> None:
    """Load client ``client_id``'s own model into ``fed.task`` (the global model for a
    client that has none): Ditto's personal tensors, else the global federated tensors,
    and the client's private tensors (initial ones if it never trained), as the strategy
    evaluates them (kld_clustered: their moving averages, beside the averaged body)."""
    task = fed.load_global_into_task()
    private = fed.private_states.get(client_id) or {}
    personal = personal_model(private)
    if personal:
        task.load_state(personal)
    own = task_private(private)
    if not own:
        task.load_state(task.initial_private_state())
        return
    # Only the private keys: the federated ones are already the strategy's (or Ditto's).
    evaluated = fed.strategy.client_evaluation_state(client_id, fed.global_state, own)
    task.load_state({k: evaluated[k] for k in own})


def evaluate_clients(
    fed: Federation,
    quality: ClientQuality,
    *,
    finetune_steps: int,
    seed: int,
) -> dict[str, float]:
    """Mean and worst decile over clients of per-client TSTR and Frechet distance, for
    the global model, each client's personal model (when the run keeps any) and the
    fine-tuned one (``finetune_steps`` > 0), the ``real`` ceiling (pooled real images in
    place of samples), and every client's own figures under ``client_figures`` (model ->
    client id -> figures); the global model is loaded again after."""
    task = fed.task
    per_model: dict[str, dict[int, dict[str, float]]] = {"global": {}}
    personal = has_personal_models(fed)
    if personal:
        per_model["personal"] = {}
    if finetune_steps > 0:
        per_model["finetuned"] = {}
    per_model["real"] = {}
    pool = pooled_by_class(fed, task.num_classes)
    try:
        for cid, data in sorted(fed.clients.items()):
            proportions = label_proportions(data.data.labels, task.num_classes)
            labels = quality.labels_for(proportions, cid)
            fed.load_global_into_task()
            scores = {"global": _score(task, quality, labels, proportions, cid, seed, "global")}
            if personal:
                load_client_model(fed, cid)
                scores["personal"] = _score(
                    task, quality, labels, proportions, cid, seed, "personal"
                )
            if finetune_steps > 0:
                load_client_model(fed, cid)
                task.fine_tune(data, finetune_steps, torch_generator(seed, "finetune", cid))
                scores["finetuned"] = _score(
                    task, quality, labels, proportions, cid, seed, "finetuned"
                )
            real = real_images_for_labels(pool, labels, torch_generator(seed, "client-real", cid))
            scores["real"] = quality.figures(real, labels, proportions, cid)
            for model, own in scores.items():
                per_model[model][cid] = own
    finally:
        fed.load_global_into_task()
    figures: dict[str, Any] = {}
    for model, values in per_model.items():
        figures.update(summarise(model, values))
    # Each client's own figures too (metrics.jsonl), so the worst-served clients can be
    # named and their data looked at.
    figures["client_figures"] = {
        model: {str(cid): own for cid, own in values.items()} for model, values in per_model.items()
    }
    return figures


def pooled_by_class(fed: Federation, num_classes: int) -> list[torch.Tensor]:
    """Every client's training images (uint8), pooled and grouped by class."""
    images = torch.cat([data.data.images for _, data in sorted(fed.clients.items())])
    labels = torch.cat([data.data.labels for _, data in sorted(fed.clients.items())])
    return [images[labels == c] for c in range(num_classes)]


def _score(
    task: Any,
    quality: ClientQuality,
    labels: torch.Tensor,
    proportions: torch.Tensor,
    client_id: int,
    seed: int,
    model: str,
) -> dict[str, float]:
    """Per-client figures of the model loaded in ``task``, from samples seeded by client
    and model."""
    images = _sample(task, labels, torch_generator(seed, "client-samples", model, client_id))
    return quality.figures(images, labels, proportions, client_id)


@torch.no_grad()
def _sample(task: Any, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The task's images for ``labels``, in chunks of 1,000 (its memory stays bounded)."""
    images: torch.Tensor = torch.cat([task.sample(part, generator) for part in labels.split(1000)])
    return images.float().clamp(0.0, 1.0)


def describe(samples: int, epochs: int, finetune_steps: int) -> dict[str, str]:
    """What each per-client key means (``summary.json``'s descriptions)."""
    tstr = (
        f"per-client TSTR: a fresh SmallCNN trained {epochs} epochs on {samples} samples with "
        "the client's label proportions, scored on the real test split with classes weighted "
        "by those proportions"
    )
    fd = (
        f"per-client Frechet distance (classifier features, not FID) of {samples} samples "
        "with the client's label proportions vs as many real test images of the same classes"
    )
    models = {
        "global": "the global model (federated tensors; private ones at their initial values)",
        "personal": "each client's own model (its private tensors: FedPer layers, "
        "partial-federation blocks; or its Ditto model)",
        "finetuned": f"each client's model after {finetune_steps} local fine-tuning steps on "
        "its own shard after the last round",
        "real": "real training images (every client's shards pooled) in place of samples: "
        "what a perfect class-conditional generator would score, the ceiling",
    }
    out = {}
    for model, what in models.items():
        out[f"client_tstr_accuracy_{model}"] = f"{tstr}; mean over clients; of {what}"
        out[f"client_tstr_accuracy_{model}_worst_decile"] = (
            f"10th percentile over clients of the {tstr}; of {what}"
        )
        out[f"client_frechet_distance_{model}"] = f"{fd}; mean over clients; of {what}"
        out[f"client_frechet_distance_{model}_worst_decile"] = (
            f"90th percentile over clients of the {fd}; of {what}"
        )
    return out
