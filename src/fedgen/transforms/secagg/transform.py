"""``SecureAggregation``: the pipeline entry that switches a run to secure aggregation.

Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning"; SecAgg+ of Bell et al. 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead") is not a per-update
map: the clients and the server exchange four phases of messages. So this
transform only carries the configuration; the round loop runs the protocol
with ``fedgen.transforms.secagg.secure_aggregate`` in place of the plain sum.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.secagg.config import SecAggConfig
from fedgen.transforms.secagg.errors import SecAggConfigError
from fedgen.transforms.secagg.protocol import simulate_dropouts
from fedgen.types import StateDict

if TYPE_CHECKING:
    from fedgen.transforms.clip import NormClip


@TRANSFORMS.register("secagg")
class SecureAggregation(UpdateTransform):
    """Secure aggregation, SecAgg (Bonawitz et al. 2017) or SecAgg+ (Bell et al. 2020).

    The round loop runs the protocol (``secure_aggregate``) with ``round_config()``
    when this transform is in the pipeline; ``on_client`` and ``on_server`` are
    the identity. It must be the last transform: last on the client (after
    clipping), first on the server (the sum is unmasked before client_dp adds
    noise to it).

    Args: see ``SecAggConfig`` (threshold, modulus_bits, clip, value_bits,
    neighbours, rounding, dropout_rate). ``clip=None`` (the default) follows the
    pipeline's ``NormClip`` bound each round (see ``bind_clip``): an update of L2
    norm <= C has every coordinate in [-C, C], so nothing is clipped twice.
    """

    #: Unmasking returns the exact sum (up to fixed-point rounding): DP noise on it stays sound.
    dp_compatible: ClassVar[bool] = True

    class Params(BaseModel):
        """The recipe's ``params`` of a ``secagg`` transform (see ``SecAggConfig``)."""

        model_config = ConfigDict(extra="forbid")

        #: A fraction in (0, 1] of a secret's share holders, or a count (an integer >= 2):
        #: an integer stays an integer.
        threshold: int | float = Field(2 / 3, gt=0)
        modulus_bits: int = Field(32, ge=8, le=64)
        clip: float | None = Field(None, gt=0, allow_inf_nan=False)
        value_bits: int | None = Field(None, ge=2, le=64)
        neighbours: int | None = Field(None, ge=2)
        rounding: Literal["stochastic", "nearest"] = "stochastic"
        dropout_rate: float = Field(0.0, ge=0, lt=1)

    def __init__(
        self,
        threshold: float = 2 / 3,
        modulus_bits: int = 32,
        clip: float | None = None,
        value_bits: int | None = None,
        neighbours: int | None = None,
        rounding: Literal["stochastic", "nearest"] = "stochastic",
        dropout_rate: float = 0.0,
    ) -> None:
        #: True when the fixed-point range follows the pipeline's ``NormClip`` bound.
        self.auto_clip = clip is None
        self.norm_clip: NormClip | None = None
        self.config = SecAggConfig(
            threshold=threshold,
            modulus_bits=modulus_bits,
            clip=1.0 if clip is None else clip,
            value_bits=value_bits,
            neighbours=neighbours,
            rounding=rounding,
            dropout_rate=dropout_rate,
        )

    def bind_clip(self, clip: NormClip | None) -> None:
        """Take the fixed-point range from ``clip`` (when ``clip=None`` was given)."""
        self.norm_clip = clip

    def round_config(self) -> SecAggConfig:
        """The configuration for this round: the range follows the clip bound when automatic.

        With adaptive clipping the bound moves every round, and the clip's one-bit
        side channel (``1[norm <= C]``) needs the range to reach 1.
        """
        if not self.auto_clip:
            return self.config
        if self.norm_clip is None:
            raise SecAggConfigError(
                "secagg has no clip range: add {name: clip, params: {max_norm: ...}} before "
                "secagg and build with fedgen.experiment.build_experiment, or set secagg's clip"
            )
        bound = self.norm_clip.max_norm
        if self.norm_clip.adaptive:
            bound = max(bound, 1.0)
        return dataclasses.replace(self.config, clip=bound)

    def rounding_bound(self, dimension: int, max_clients: int) -> float:
        """How far fixed-point rounding can move one client's update, in L2 norm.

        Each of ``dimension`` coordinates moves by at most one quantum
        (``clip / levels``; half of one when rounding to nearest), so a clipped update
        of norm C is encoded with norm up to C + this. Planned at ``max_clients``, the
        largest cohort (fewest levels), so it does not depend on who was sampled.
        """
        config = self.round_config()
        quantum = config.clip / config.plan(max_clients).levels
        per_coordinate = quantum if config.rounding == "stochastic" else quantum / 2
        return math.sqrt(dimension) * per_coordinate

    def dropouts(self, client_ids: Collection[int], seed: int, round: int) -> tuple[int, ...]:
        """The clients to drop after key sharing in ``round`` (simulated ``dropout_rate``)."""
        return simulate_dropouts(client_ids, self.config.dropout_rate, seed, round)

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        return update, {}

    def on_server(
        self, aggregate: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        return aggregate, {}
