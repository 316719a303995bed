"""``SecureAggregation``: the pipeline entry that switches a run to secure aggregation.

Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning"; SecAgg+ of Bell et al. 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead") is not a per-update
map: the clients and the server exchange four phases of messages. So this
transform only carries the configuration; the round loop runs the protocol
with ``fedgen.transforms.secagg.secure_aggregate`` in place of the plain sum.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.secagg.config import SecAggConfig
from fedgen.transforms.secagg.protocol import simulate_dropouts
from fedgen.types import StateDict


@TRANSFORMS.register("secagg")
class SecureAggregation(UpdateTransform):
    """Secure aggregation, SecAgg (Bonawitz et al. 2017) or SecAgg+ (Bell et al. 2020).

    The round loop runs the protocol (``secure_aggregate``) with ``self.config``
    when this transform is in the pipeline; ``on_client`` and ``on_server`` are
    the identity. Place it after client-side transforms (clipping) and before
    server-side noise: the server then adds noise to the unmasked sum.

    Args: see ``SecAggConfig`` (threshold, modulus_bits, clip, value_bits,
    neighbours, rounding, dropout_rate).
    """

    def __init__(
        self,
        threshold: float = 2 / 3,
        modulus_bits: int = 32,
        clip: float = 1.0,
        value_bits: int | None = None,
        neighbours: int | None = None,
        rounding: Literal["stochastic", "nearest"] = "stochastic",
        dropout_rate: float = 0.0,
    ) -> None:
        self.config = SecAggConfig(
            threshold=threshold,
            modulus_bits=modulus_bits,
            clip=clip,
            value_bits=value_bits,
            neighbours=neighbours,
            rounding=rounding,
            dropout_rate=dropout_rate,
        )

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
