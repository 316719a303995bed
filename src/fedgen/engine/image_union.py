"""A federation of class-conditional image models, released as its clients would release
it: each class drawn from the own models of the clients that hold it.

When clients keep blocks of their own (a partial FedDiffuse scheme, FedPer layers, Ditto)
or fine-tune the final model on their own shard (``eval.personalize_steps``), there is no
single model that every client samples with. Evaluating one client's model (the
largest's, ``eval.model``) scores a model that has seen a few classes on all ten. The
release that matches how the data is held is the union: an image of class c comes from
client k's own model with probability ``n_kc / sum_j n_jc`` (its share of the class's
training examples), so every class is drawn by the clients that know it, and the union's
labels are the evaluator's usual balanced draw. Its figures are the evaluator's own
(quality, TSTR), keyed ``<figure>_union_<model>`` like a table's union
(``fedgen.engine.table_union``).

Runs in the simulation's server process, which holds every client's model; in a
deployment each client would draw its share and publish it. Refused under DP (the own
models and the label counts are not covered by the guarantee).
"""

from __future__ import annotations

from typing import Any

import torch

from fedgen.engine.client_models import (
    evaluated_client,
    holds_own_model,
    load_client_model,
    load_evaluated_model,
    model_label,
    union_models,
)
from fedgen.engine.federation import Federation
from fedgen.errors import ConfigError
from fedgen.modality import Conditioning, Modality
from fedgen.seeding import torch_generator
from fedgen.tasks.base import Task
from fedgen.tasks.best_of import keep_best_of
from fedgen.types import StateDict

#: ``eval.model``'s value (and ``fedgen sample --model``'s) for the union.
UNION = "union"


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Each client's share of each class, ``(clients, classes)`` float64 from its example
    counts; a class no client holds is shared by the clients' total examples.

    Raises:
        ValueError: no client holds any example.
    """
    counts = counts.double()
    if counts.sum() <= 0:
        raise ValueError("the union needs at least one client with examples")
    totals = counts.sum(dim=0)
    fallback = counts.sum(dim=1) / counts.sum()
    weights = counts / totals.clamp(min=1)
    weights[:, totals == 0] = fallback[:, None]
    return weights


class UnionSampler:
    """``labels -> images``: each label's image from one client's own model, the client
    drawn by ``class_weights`` for that label. Called with labels it is the evaluator's
    ``generate``; ``sample(labels, generator)`` and ``num_classes`` let grids and data-set
    exports draw from it as from a task."""

    def __init__(
        self,
        task: Task,
        states: dict[int, StateDict],
        counts: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        self.task = task
        self.clients = sorted(states)
        self.states = states
        self.weights = class_weights(counts)
        self.generator = generator
        # What grids, exports and the evaluator read of a task: sampling goes through the
        # task, so a diffusion task's own timer still reports the sampling cost.
        self.num_classes = task.num_classes
        self.modality = task.modality
        self.conditioning = task.conditioning
        self.sampling_cost = getattr(task, "sampling_cost", None)

    def owners(
        self, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The index (into ``clients``) of the client that draws each label's image."""
        probs = self.weights[:, labels.long()].T  # (n, clients)
        return torch.multinomial(probs, 1, generator=generator or self.generator).squeeze(1)

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        return self.sample(labels, self.generator)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Images for ``labels``, each from its drawn client's own model."""
        owners = self.owners(labels, generator)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k, cid in enumerate(self.clients):
            rows = torch.nonzero(owners == k).flatten()
            if len(rows) == 0:
                continue
            self.task.load_state(self.states[cid])
            parts.append((rows, self.task.sample(labels[rows], generator)))
        images = torch.empty((len(labels), *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
        for rows, drawn in parts:
            images[rows] = drawn
        return images


def own_states(fed: Federation, model: str, finetune_steps: int, seed: int) -> dict[int, StateDict]:
    """Every client's own model as a state dict: ``personal``, the clients holding model
    tensors of their own (private blocks, Ditto); ``finetuned``, every client's model
    trained ``finetune_steps`` steps on its own shard (seeded by its id)."""
    task = fed.task
    states: dict[int, StateDict] = {}
    for cid, data in sorted(fed.clients.items()):
        if model == "personal" and not holds_own_model(fed.private_states.get(cid)):
            continue  # it never trained: no model of its own to draw from
        load_client_model(fed, cid)
        if model == "finetuned":
            task.fine_tune(data, finetune_steps, torch_generator(seed, "finetune", cid))
        states[cid] = {**task.federated_state(), **task.private_state()}
    return states


def personal_union(fed: Federation, generator: torch.Generator) -> UnionSampler:
    """The union of the clients' own models (``personal``: private blocks or Ditto) of a
    finished run, for ``fedgen sample``/``eval --model union``; the task's global model is
    overwritten as it samples (load it again after).

    Raises:
        ConfigError: the task does not draw class-conditional images, the run had DP, or
            no client holds a model of its own.
    """
    task = fed.task
    if task.modality != Modality.IMAGES or task.conditioning != Conditioning.CLASS:
        raise ConfigError(
            f"the union (--model union, eval.model: union) draws class-conditional images; "
            f"this run's task makes {task.modality} (a table's union is measured by "
            "eval.per_client)"
        )
    if fed.privacy is not None:
        raise ConfigError(
            "the union (--model union, eval.model: union) samples every client's unnoised "
            "own model, which this run's differential privacy does not cover; use --model "
            "global (the released, noised model)"
        )
    states = own_states(fed, "personal", 0, seed=0)
    if not states:
        raise ConfigError(
            "the union (--model union, eval.model: union) needs clients with models of their "
            "own (private blocks, FedPer layers, Ditto); this run's clients all sample the "
            "global model: use --model global"
        )
    return UnionSampler(task, states, label_counts(fed, sorted(states)), generator)


def union_label(clients: int) -> str:
    """The union as each evaluated round records it (``metrics.jsonl``'s
    ``evaluated_model``), beside ``global`` and ``client N``."""
    return f"union of {clients} clients' own models"


def union_holders(fed: Federation) -> int:
    """How many clients hold a model of their own: the union's members."""
    return sum(holds_own_model(fed.private_states.get(cid)) for cid in fed.clients)


def run_model_label(fed: Federation, choice: str) -> str:
    """What a run's evaluation draws from under ``eval.model`` = ``choice``, as
    ``metrics.jsonl`` records it: ``global``, ``client N`` or ``union of N clients' own
    models``."""
    if choice == UNION:
        return union_label(union_holders(fed))
    return model_label(evaluated_client(fed, choice))


def load_run_model(
    fed: Federation, choice: str, generator: torch.Generator, best_of: int = 1
) -> Any:
    """The model a run's evaluations and sample grids draw from (``eval.model``): the
    union of the clients' own models (``union``; ``generator`` draws each image's client
    when the caller passes none), or the task with the global or the largest client's
    model loaded (``fedgen.engine.client_models.load_evaluated_model``), drawing each
    sample as the best of ``best_of`` (``eval.best_of``)."""
    if choice == UNION:
        if best_of > 1:
            raise ConfigError(
                f"best-of-{best_of} sampling draws from one model, not the union of the "
                "clients' own models; choose the global model, or best_of 1"
            )
        return personal_union(fed, generator)
    task, _ = load_evaluated_model(fed, choice)
    return keep_best_of(task, best_of)


def describe_union_model(clients: int) -> str:
    """``summary.json``'s ``evaluated_model`` for a run that evaluates its union."""
    return (
        f"the union of {clients} clients' own models (eval.model: union): each image of "
        "class c drawn from the own model (the federated tensors with its private ones) of "
        "a client holding c, chosen in proportion to its examples of c"
    )


def label_counts(fed: Federation, clients: list[int]) -> torch.Tensor:
    """Each client's training examples per class, ``(len(clients), classes)`` int64."""
    k = fed.task.num_classes
    return torch.stack(
        [torch.bincount(fed.clients[c].data.labels.long(), minlength=k) for c in clients]
    )


def union_figures(
    fed: Federation, evaluator: Any, *, finetune_steps: int, seed: int
) -> dict[str, float]:
    """The evaluator's final figures of each union (see the module docstring), keyed
    ``<figure>_union_<model>``; the global model is loaded again after."""
    task = fed.task
    figures: dict[str, float] = {}
    try:
        for model in union_models(fed, finetune_steps):
            states = own_states(fed, model, finetune_steps, seed)
            counts = label_counts(fed, sorted(states))
            sampler = UnionSampler(task, states, counts, torch_generator(seed, "union", model))
            result = evaluator.evaluate(sampler, tstr=True)
            figures.update(
                {
                    f"{key}_union_{model}": value
                    for key, value in result.items()
                    if key != "real_test_accuracy"  # the real data's, the same for every model
                }
            )
            figures[f"clients_union_{model}"] = float(len(states))
    finally:
        fed.load_global_into_task()
    return figures


def describe_union(finetune_steps: int) -> dict[str, str]:
    """What the union keys of ``summary.json`` mean (beside the evaluator's own keys)."""
    return {
        "union_personal": "figures suffixed _union_personal: every image of class c drawn "
        "from the own model (its private blocks or Ditto model) of a client holding c, "
        "chosen in proportion to its examples of c; clients_union_personal: how many "
        "clients had a model of their own",
        "union_finetuned": "figures suffixed _union_finetuned: the same, each client's "
        f"model being the final global model fine-tuned {finetune_steps} local steps on "
        "its own shard after the last round",
    }
