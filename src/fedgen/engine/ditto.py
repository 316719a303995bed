"""A Ditto client's personal step (Li et al. 2021; the server side is
``fedgen.strategies.ditto``), run by the local-training path after the global one.

The client loads its personal model ``v`` (the global model it received, the first
time), trains it with the task's own ``train_local`` under the proximal term
``lambda/2 ||v - w_t||^2`` toward the received global weights ``w_t``
(``fedgen.engine.proximal``), and keeps it. The personal model is stored in the client's
private state under ``PERSONAL_PREFIX + <module>.<tensor>``: the prefix of the private
tensors the engine keeps beside the task's (as a codec's error-feedback residual), so
checkpoints check it against its model tensor, the vectorized backend leaves it alone,
and it is never part of a reply.
"""

from __future__ import annotations

from typing import Any

from fedgen.data.client_data import ClientData
from fedgen.engine.proximal import anchored_parameters, proximal_term
from fedgen.seeding import torch_generator
from fedgen.strategies.ditto import DITTO_LAMBDA, DITTO_STEPS
from fedgen.tasks.base import Task
from fedgen.transforms.base import PRIVATE_PREFIX
from fedgen.types import ClientInstruction, StateDict

#: Where a client keeps its personal model's federated tensors in its private state.
PERSONAL_PREFIX = PRIVATE_PREFIX + "ditto/"


def ditto_settings(ins: ClientInstruction) -> tuple[float, int | None] | None:
    """``(lambda, steps or None)`` when the instruction asks for Ditto's personal step.

    Raises:
        ValueError: the instruction's values are not numbers of the right kind.
    """
    if DITTO_LAMBDA not in ins.config:
        return None
    lam, steps = ins.config[DITTO_LAMBDA], ins.config.get(DITTO_STEPS)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not 0 <= lam < float("inf"):
        raise ValueError(f"config {DITTO_LAMBDA}={lam!r} is not a finite number >= 0")
    if steps is not None and (type(steps) is not int or steps < 1):
        raise ValueError(f"config {DITTO_STEPS}={steps!r} is not an int >= 1 or null")
    return float(lam), steps


def personal_model(carried: StateDict) -> StateDict:
    """The personal model's tensors in a client's carried private state, keyed as the
    task's (empty before the client's first Ditto round)."""
    return {
        k.removeprefix(PERSONAL_PREFIX): v
        for k, v in carried.items()
        if k.startswith(PERSONAL_PREFIX)
    }


def train_personal(
    task: Task,
    data: ClientData,
    global_state: StateDict,
    carried: StateDict,
    own_private: StateDict,
    lam: float,
    steps: int,
    ins: ClientInstruction,
) -> dict[str, float]:
    """Train the client's personal model ``steps`` steps toward ``global_state`` with weight
    ``lam``; store it in ``carried`` (in place) and return its losses as ``personal/...``.

    The task's private tensors (FedPer layers, a private discriminator) are the client's
    own in both models: ``own_private`` (as the global step left them) is loaded under the
    personal model, and what this step does to them is not kept (the caller saved them).
    """
    personal = personal_model(carried)
    task.load_state(personal or global_state)
    task.load_state(own_private)
    # Its own seed: the global step's draws stay FedAvg's, bit for bit.
    gen = torch_generator(ins.seed, "ditto")
    config: dict[str, Any] = {
        k: v for k, v in ins.config.items() if k not in (DITTO_LAMBDA, DITTO_STEPS)
    }
    with proximal_term(anchored_parameters(task.modules, global_state) if lam else [], lam):
        losses = task.train_local(data, steps, gen, config)
    for k, v in task.federated_state().items():
        carried[PERSONAL_PREFIX + k] = v
    return {f"personal/{k}": v for k, v in losses.items()}
