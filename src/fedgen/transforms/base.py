"""The UpdateTransform contract: one step of the update pipeline.

After pfl-research's postprocessors: each transform has a client half,
applied to a client's update in pipeline order, and a server half, applied to
the aggregate in reverse order (unmask, decode, add noise ...). Transforms
know neither the task nor the strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedgen.privacy.noise_key import noise_generator
from fedgen.types import StateDict

#: Keys of a client's private state that belong to its transforms (e.g. error-feedback
#: residuals): ``PRIVATE_PREFIX + "<transform>/<model tensor>"``. The client's task never
#: loads them; checkpoints check each against the model tensor it names.
PRIVATE_PREFIX = "__transform__/"
#: A transform's private tensor named ``PRIVATE_PREFIX + "<transform>/" + FREE_SHAPE + ...``
#: has a shape of the transform's own (a codec's shared basis), not a model tensor's:
#: checkpoints check only that it is dense and finite.
FREE_SHAPE = "free:"


@dataclass(frozen=True)
class TransformContext:
    """Where in the run a transform half is called."""

    round: int
    client_id: int | None
    seed: int
    num_clients: int
    #: The run's secret noise key (``fedgen.privacy.noise_key``); None seeds noise from
    #: ``seed`` (the ``noise_seed: root`` mode).
    noise_key: bytes | None = field(default=None, repr=False)
    #: On a client: its transforms' own private tensors (keys under ``PRIVATE_PREFIX``),
    #: which a client half may read and replace in place; they stay with the client
    #: between rounds, in its private state. None where no private state is kept (the
    #: server; a backend that does not carry transforms' private tensors).
    private: StateDict | None = field(default=None, repr=False)
    #: On the server: per tensor of the aggregate, the coordinates (True) that already
    #: carry the noise the server halves add (``sum_noise_std``), drawn by the only
    #: client of a secure round; the server halves add noise only where it is not.
    #: None: no coordinate does.
    noised: StateDict | None = field(default=None, repr=False)

    def noise_generator(self, *path: str | int) -> torch.Generator:
        """The generator for DP noise drawn here: keyed by the secret, unless ``root``."""
        return noise_generator(self.noise_key, self.seed, *path)


def split_transform_private(private: StateDict | None) -> tuple[StateDict | None, StateDict]:
    """A client's private state split into the task's tensors and its transforms' own.

    The task's part is None when ``private`` is None or holds only transforms' tensors
    (the client then starts from the task's initial private tensors).
    """
    if not private:
        return private, {}
    own = {k: v for k, v in private.items() if k.startswith(PRIVATE_PREFIX)}
    task = {k: v for k, v in private.items() if not k.startswith(PRIVATE_PREFIX)}
    return task or None, own


class UpdateTransform:
    """Identity by default; subclasses override the halves they need."""

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        """Transform one client's update; also return metrics to report (e.g. norms)."""
        return update, {}

    def on_server(
        self, aggregate: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        """Transform the aggregate of the round; also return metrics."""
        return aggregate, {}

    def sum_noise_std(self, key: str, value: torch.Tensor) -> float:
        """The standard deviation of the noise ``on_server`` adds to tensor ``key``, in
        the units of the round's sum (before the strategy divides it); 0.0 for none.

        The only client of a secure round draws this noise itself, so that the server
        never sees its update bare (``fedgen.engine.secure_stage``); ``on_server`` then
        gets ``ctx.noised`` and adds none where it is set.
        """
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
