"""FedAvg of the downstream classifier on the federation engine, one arm at a time."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.downstream.accuracy import ClassAccuracy, class_accuracy
from fedgen.downstream.pipeline import Pipeline
from fedgen.engine.backends.inprocess import InProcessBackend
from fedgen.engine.callbacks import ProgressCallback
from fedgen.engine.federation import Callback, Federation, RoundRecord
from fedgen.eval.classifier import SmallCNN
from fedgen.privacy.noise_key import new_noise_key
from fedgen.seeding import derive_seed
from fedgen.strategies.fedavg import FedAvg
from fedgen.tasks.base import Task
from fedgen.tasks.classifier import ClassifierParams, ClassifierTask


@dataclass
class ArmResult:
    """What one arm of the comparison produced."""

    name: str
    accuracy: ClassAccuracy
    rounds: int
    #: None when the classifier federation runs under client-level DP, which withholds
    #: every round's bytes (they would reveal the sampled cohort).
    bytes_up: int | None
    bytes_down: int | None
    seconds: float | None
    model: SmallCNN
    synthetic_examples: int = 0
    #: The classifier federation's own DP figures (``PrivacyAccounting.describe``), if any.
    own_privacy: dict[str, Any] = field(default_factory=dict)
    #: Accuracy after rounds the arm evaluated along the way: ``[(round, accuracy)]``.
    curve: list[tuple[int, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """Flat JSON figures of the arm."""
        return {
            "accuracy": self.accuracy.accuracy,
            "worst_class_accuracy": self.accuracy.worst_class,
            "per_class_accuracy": self.accuracy.per_class,
            "rounds": self.rounds,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_total": (
                None
                if self.bytes_up is None or self.bytes_down is None
                else self.bytes_up + self.bytes_down
            ),
            "seconds": self.seconds,
            "synthetic_examples": self.synthetic_examples,
            "curve": self.curve,
            "notes": self.notes,
            "own_privacy": self.own_privacy,
        }


class _Curve(Callback):
    """Test accuracy of the global classifier every ``every`` rounds (0: never)."""

    def __init__(self, test: ImageDataset, every: int, out: list[tuple[int, float]]) -> None:
        self.test, self.every, self.out = test, every, out

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        if self.every and (record.round + 1) % self.every == 0:
            task = fed.load_global_into_task()
            assert isinstance(task, ClassifierTask)
            acc = class_accuracy(task.network, self.test).accuracy
            record.metrics["test_accuracy"] = acc
            self.out.append((record.round + 1, acc))


def federate_classifier(
    name: str,
    clients: Sequence[ClientData],
    test: ImageDataset,
    *,
    rounds: int,
    local_steps: int,
    fraction: float,
    batch_size: int,
    lr: float,
    seed: int,
    extra_callbacks: Sequence[Callback] = (),
    eval_every: int = 0,
    progress: bool = False,
    pipeline: Callable[[Task], Pipeline] | None = None,
) -> ArmResult:
    """Train a ``SmallCNN`` by FedAvg over ``clients`` for ``rounds`` rounds on the
    in-process backend and test it on ``test``.

    The clients are the shards themselves (topped up or not), which is why the backend
    is the in-process one: a process-pool worker rebuilds its shard from the recipe and
    would not see a top-up drawn here. Every arm starts from the same initial weights.
    ``pipeline`` builds the strategy, transforms and DP accounting for the task (default:
    FedAvg over ``fraction`` of the clients, no transforms).
    """
    params = ClassifierParams(batch_size=batch_size, lr=lr)
    task = ClassifierTask(params, test.num_classes, (1, 28, 28), derive_seed(seed, "downstream"))
    curve: list[tuple[int, float]] = []
    parts = (
        pipeline(task)
        if pipeline is not None
        else Pipeline(FedAvg(fraction=fraction, min_clients=1, root_seed=seed), [], None)
    )
    fed = Federation(
        task=task,
        clients=list(clients),
        strategy=parts.strategy,
        transforms=parts.transforms,
        privacy=parts.privacy,
        noise_key=new_noise_key(),  # DP noise keyed by a secret, as the generator's
        backend=InProcessBackend(),
        rounds=rounds,
        seed=derive_seed(seed, "downstream-federation"),
        local_steps=local_steps,
        callbacks=[
            *extra_callbacks,  # the server's fine-tuning before the round is measured
            _Curve(test, eval_every, curve),
            ProgressCallback(f"classifier: {name}", enabled=progress),
        ],
    )
    t0 = time.perf_counter()
    fed.run()
    seconds = time.perf_counter() - t0
    model = fed.load_global_into_task()
    assert isinstance(model, ClassifierTask)
    history = fed.history
    return ArmResult(
        name=name,
        accuracy=class_accuracy(model.network, test),
        rounds=fed.next_round,
        # Withheld under client-level DP: summing the missing figures would report 0.
        bytes_up=None if fed.withholds_cohort else sum(m.get("bytes_up", 0) for m in history),
        bytes_down=None if fed.withholds_cohort else sum(m.get("bytes_down", 0) for m in history),
        # Withheld as well: the time follows the cohorts' sizes.
        seconds=None if fed.withholds_cohort else seconds,
        model=model.network,
        curve=curve,
        own_privacy=fed.privacy.describe() if fed.privacy is not None else {},
    )
