"""Update-poisoning adversaries: what a malicious client sends instead of its update.

Each is a client half that rewrites the update of the clients in ``attackers`` (bound
by ``fedgen.assembly.attack``, which places it first in the pipeline, so the
honest client code after it, e.g. ``clip``, still runs) and passes every other
client's through. The attackers train honestly first.

- ``sign_flip``: ``-scale * update`` (the sign-flipping Byzantine client of e.g.
  Allen-Zhu et al. 2021 and Fang et al. 2020);
- ``scaling``: ``boost * update``, the scaling of model replacement (Bagdasaryan et
  al. 2020, "How To Backdoor Federated Learning"), which with boost ~ n / server_lr
  replaces the global model by the attacker's;
- ``gaussian``: an update of N(0, ``std``^2) noise, the Gaussian Byzantine client of
  Blanchard et al. 2017;
- ``free_rider``: a zero update, i.e. the global model returned untrained (Lin et al.
  2019, "Free-riders in Federated Learning").
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.registry import ADVERSARIES
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.types import StateDict


class UpdatePoisoner(UpdateTransform):
    """A client half that poisons the updates of ``attackers`` only."""

    #: The attack does not read the other clients nor change what DP adds after it: a
    #: poisoned update is still clipped by the honest ``clip`` that follows.
    dp_compatible = True

    class Params(BaseModel):
        """No params."""

        model_config = ConfigDict(extra="forbid")

    def __init__(self) -> None:
        self.attackers: frozenset[int] = frozenset()

    def bind(self, attackers: frozenset[int]) -> None:
        """The clients that attack (chosen from the root seed by the experiment)."""
        self.attackers = frozenset(attackers)

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        if ctx.client_id not in self.attackers:
            return update, {}
        # No metric: an attacker does not announce itself.
        return self.poison(update, ctx), {}

    def poison(self, update: StateDict, ctx: TransformContext) -> StateDict:
        """The update the attacker sends instead of ``update``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}


@ADVERSARIES.register("sign_flip")
class SignFlip(UpdatePoisoner):
    """``-scale * update``."""

    class Params(BaseModel):
        """How far to push against the honest direction."""

        model_config = ConfigDict(extra="forbid")

        scale: float = Field(1.0, gt=0, allow_inf_nan=False)

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def poison(self, update: StateDict, ctx: TransformContext) -> StateDict:
        return {k: -self.scale * v if v.is_floating_point() else v for k, v in update.items()}


@ADVERSARIES.register("scaling")
class Scaling(UpdatePoisoner):
    """``boost * update`` (Bagdasaryan et al. 2020)."""

    class Params(BaseModel):
        """The boost factor (model replacement: about clients per round / server_lr)."""

        model_config = ConfigDict(extra="forbid")

        boost: float = Field(10.0, gt=0, allow_inf_nan=False)

    def __init__(self, boost: float = 10.0) -> None:
        super().__init__()
        self.boost = boost

    def poison(self, update: StateDict, ctx: TransformContext) -> StateDict:
        return {k: self.boost * v if v.is_floating_point() else v for k, v in update.items()}


@ADVERSARIES.register("gaussian")
class GaussianUpdate(UpdatePoisoner):
    """An update of N(0, ``std``^2) noise, drawn from the client's round seed."""

    class Params(BaseModel):
        """The noise's standard deviation per coordinate."""

        model_config = ConfigDict(extra="forbid")

        std: float = Field(0.1, gt=0, allow_inf_nan=False)

    def __init__(self, std: float = 0.1) -> None:
        super().__init__()
        self.std = std

    def poison(self, update: StateDict, ctx: TransformContext) -> StateDict:
        gen = torch.Generator().manual_seed(ctx.seed)
        return {
            k: torch.randn(v.shape, generator=gen, dtype=v.dtype) * self.std
            if v.is_floating_point()
            else v
            for k, v in update.items()
        }


@ADVERSARIES.register("free_rider")
class FreeRider(UpdatePoisoner):
    """A zero update: the global model sent back (Lin et al. 2019)."""

    def poison(self, update: StateDict, ctx: TransformContext) -> StateDict:
        return {k: torch.zeros_like(v) for k, v in update.items()}
