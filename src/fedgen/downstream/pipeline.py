"""The classifier federation's strategy, update transforms and DP accounting, from the recipe.

Because the classifier is a Task on the shared contract, its federation takes any
registered strategy and transform pipeline (clipping, client-level DP, compression,
secure aggregation) and is checked by the same assembly rules as the generator's; each
arm gets fresh instances (strategies and transforms keep state across rounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedgen.assembly.compression import compression_problems
from fedgen.assembly.privacy import build_privacy
from fedgen.assembly.secagg import secagg_problems
from fedgen.config import DownstreamConfig
from fedgen.data.client_data import ClientData
from fedgen.downstream.errors import DownstreamError
from fedgen.params import ParamsError, validate_params
from fedgen.privacy.budget import PrivacyAccounting
from fedgen.registry import STRATEGIES, TRANSFORMS
from fedgen.strategies.base import Strategy
from fedgen.strategies.fedavg import FedAvg
from fedgen.tasks.base import Task
from fedgen.transforms.base import UpdateTransform


class Pipeline:
    """What the server runs around the classifier's rounds (strategy, transforms, DP)."""

    def __init__(
        self,
        strategy: Strategy,
        transforms: list[UpdateTransform],
        privacy: PrivacyAccounting | None,
    ) -> None:
        self.strategy = strategy
        self.transforms = transforms
        self.privacy = privacy


def classifier_pipeline(
    dcfg: DownstreamConfig, seed: int, task: Task, clients: Sequence[ClientData]
) -> Pipeline:
    """Build ``downstream.strategy`` (default FedAvg over ``downstream.fraction``) and
    ``downstream.transforms``; ``DownstreamError`` listing every problem with its fix."""
    problems: list[str] = []
    strategy = _build(
        problems,
        "downstream.strategy",
        dcfg.strategy.name if dcfg.strategy else None,
        dcfg.strategy.params if dcfg.strategy else {},
        STRATEGIES,
        root_seed=seed,
    )
    if dcfg.strategy is None:
        strategy = FedAvg(fraction=dcfg.fraction, min_clients=1, root_seed=seed)
    transforms = [
        _build(problems, f"downstream.transforms[{i}]", t.name, t.params, TRANSFORMS)
        for i, t in enumerate(dcfg.transforms)
    ]
    if problems:
        raise DownstreamError("invalid downstream section:\n  " + "\n  ".join(problems))
    dimension = sum(v.numel() for v in task.federated_state().values() if v.is_floating_point())
    problems += secagg_problems(
        strategy=strategy,
        transforms=transforms,
        backend="inprocess",
        centralized=False,
        num_clients=len(clients),
        dimension=dimension,
    )
    problems += compression_problems(
        transforms=transforms, backend="inprocess", root_seed=seed, dpsgd=False
    )
    privacy = None
    if transforms or problems:
        try:
            privacy = build_privacy(
                dpsgd=None,
                task=task,
                clients=clients,
                strategy=strategy,
                transforms=transforms,
                rounds=dcfg.rounds,
                local_steps=dcfg.local_steps,
                local_epochs=None,
                problems=problems,
            )
        except ValueError as exc:  # PrivacyConfigError lists every problem
            raise DownstreamError(f"downstream: {exc}") from exc
    assert strategy is not None and all(t is not None for t in transforms)
    return Pipeline(strategy, [t for t in transforms if t is not None], privacy)


def _build(
    problems: list[str],
    where: str,
    name: str | None,
    params: dict[str, Any],
    registry: Any,
    **injected: Any,
) -> Any:
    """``registry[name](**params, **injected)``, or None with the problem noted."""
    if name is None:
        return None
    if name not in registry:
        problems.append(
            f"{where}.name: unknown {name!r}; choose from {', '.join(registry.names())}"
        )
        return None
    cls = registry.get(name)
    try:
        typed = dict(validate_params(cls, params, f"{where}.params"))
        return cls(**typed, **injected)
    except ParamsError as exc:
        problems.extend(exc.problems)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
    return None
