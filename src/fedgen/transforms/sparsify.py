"""Sparsified updates: top-k with error feedback, and a random mask from a shared seed.

- ``topk``: each tensor sends its ``fraction`` largest-magnitude values and their
  indices (in the narrowest unsigned integer type that holds them). With error
  feedback (Seide et al. 2014; Lin et al. 2018, "Deep Gradient Compression"; Karimireddy
  et al. 2019, "Error Feedback Fixes SignSGD") what is left out is kept as a residual
  and added to the next round's update, so nothing is lost, only delayed. The
  residual lives in the client's private state (``TransformContext.private``),
  checkpointed with it. Each client picks its own coordinates: the supports differ,
  so encoded updates cannot be summed under secure aggregation's masks.
- ``random_mask``: each tensor sends the values at ``fraction`` of its coordinates,
  chosen by a generator seeded from the run's shared mask seed, the round and the
  tensor's name (Konecny et al. 2016, "Federated Learning: Strategies for Improving
  Communication Efficiency", random masks). The server draws the same mask, so only the
  values travel; every client of a round shares the support, so the code is linear and
  composes with secure aggregation.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.registry import TRANSFORMS
from fedgen.seeding import torch_generator
from fedgen.transforms.base import PRIVATE_PREFIX, TransformContext
from fedgen.transforms.codec import UpdateCodec, check_parts, expect, fitting_index_dtype


def kept_count(numel: int, fraction: float) -> int:
    """Coordinates a tensor of ``numel`` keeps at ``fraction`` (at least one).

    ``fraction`` counts as the decimal it is written as: the float 0.07 is a hair
    above 7/100, so ``ceil(0.07 * 100)`` would keep 8 of 100, not 7.
    """
    return min(numel, max(1, math.ceil(Fraction(str(fraction)) * numel)))


def residual_key(key: str, codec: str = "topk") -> str:
    """Where model tensor ``key``'s error-feedback residual sits in a client's private state."""
    return f"{PRIVATE_PREFIX}{codec}/{key}"


def with_residual(flat: torch.Tensor, key: str, codec: str, ctx: TransformContext) -> torch.Tensor:
    """``flat`` (tensor ``key``'s update) plus what ``codec`` left out of it last time.

    Raises:
        ValueError: the backend carries no private state for the residual.
    """
    if ctx.private is None:
        # Silently dropping the residual would turn error feedback off.
        raise ValueError(
            f"{codec} error_feedback keeps a residual in the client's private state, "
            "which this backend does not carry; use error_feedback: false or "
            "backend inprocess/process_pool/flower"
        )
    residual = ctx.private.get(residual_key(key, codec))
    return flat if residual is None else flat + residual.reshape(-1)


def keep_residual(
    left: torch.Tensor, key: str, codec: str, shape: torch.Size, ctx: TransformContext
) -> None:
    """Keep ``left`` (what ``codec`` did not send of tensor ``key``) for the next update.

    A non-finite update is rejected by the server; its residual would make every later
    reply of the client non-finite too (and its checkpoint unloadable), so the residual
    from before stays.
    """
    if ctx.private is not None and bool(torch.isfinite(left).all()):
        ctx.private[residual_key(key, codec)] = left.reshape(shape)


def shared_support(
    mask_seed: int, round: int, key: str, numel: int, fraction: float
) -> torch.Tensor:
    """Sorted coordinates of tensor ``key`` kept in ``round``: drawn from the run's shared
    ``mask_seed``, so every client and the server draw the same, and none is sent."""
    gen = torch_generator(mask_seed, round, key)
    return torch.randperm(numel, generator=gen)[: kept_count(numel, fraction)].sort().values


def _scatter(values: torch.Tensor, index: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    flat = torch.zeros(reference.numel(), dtype=torch.float32)
    flat.index_put_((index,), values.to(torch.float32), accumulate=True)
    return flat.reshape(reference.shape).to(reference.dtype)


@TRANSFORMS.register("topk")
class TopK(UpdateCodec):
    """Send each tensor's ``fraction`` largest-magnitude values, with their indices.

    Args:
        fraction: of each tensor's values sent (k = ceil(fraction * numel), at least 1).
        error_feedback: keep what was not sent in the client's private state and add it
            to the next update (without it, a dropped value is lost).
    """

    codec_name = "topk"

    class Params(BaseModel):
        """The recipe's ``params`` of a ``topk`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        fraction: float = Field(0.01, gt=0, le=1, allow_inf_nan=False)
        error_feedback: bool = True

    def __init__(self, fraction: float = 0.01, error_feedback: bool = True) -> None:
        self.fraction = float(fraction)
        self.error_feedback = bool(error_feedback)

    @property
    def dp_compatible(self) -> bool:
        """Without error feedback a sent update is a subset of the clipped one: its norm
        stays within the clip bound. With it, the residual can push the norm past it."""
        return not self.error_feedback

    def encode_tensor(
        self, key: str, value: torch.Tensor, ctx: TransformContext
    ) -> dict[str, torch.Tensor]:
        flat = value.detach().reshape(-1).to(torch.float32)
        if self.error_feedback:
            flat = with_residual(flat, key, self.codec_name, ctx)
        k = kept_count(flat.numel(), self.fraction)
        index = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        values = flat[index]
        if ctx.private is not None and self.error_feedback:
            left = flat.clone()
            left[index] = 0.0
            keep_residual(left, key, self.codec_name, value.shape, ctx)
        return {"index": index.to(fitting_index_dtype(flat.numel())), "values": values}

    def decode_tensor(
        self,
        key: str,
        parts: dict[str, torch.Tensor],
        reference: torch.Tensor,
        ctx: TransformContext,
    ) -> torch.Tensor:
        check_parts(parts, {"index", "values"})
        n = reference.numel()
        k = kept_count(n, self.fraction)
        index = expect(parts.get("index"), "index", fitting_index_dtype(n), k).to(torch.int64)
        if k and int(index.max()) >= n:
            raise ValueError(f"an index past the tensor's {n} values")
        values = expect(parts.get("values"), "values", torch.float32, k)
        return _scatter(values, index, reference)


@TRANSFORMS.register("random_mask")
class RandomMask(UpdateCodec):
    """Send each tensor's values at a random ``fraction`` of coordinates shared by all clients.

    Args:
        fraction: of each tensor's coordinates sent each round.
        rescale: divide the received values by the kept fraction, so the decoded update
            is unbiased over the mask; without it the update is shrunk (each coordinate
            moves in ``fraction`` of the rounds) but its norm never grows.
    """

    codec_name = "random_mask"
    linear_shared_support = True

    class Params(BaseModel):
        """The recipe's ``params`` of a ``random_mask`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        fraction: float = Field(0.1, gt=0, le=1, allow_inf_nan=False)
        rescale: bool = False

    def __init__(self, fraction: float = 0.1, rescale: bool = False) -> None:
        self.fraction = float(fraction)
        self.rescale = bool(rescale)
        #: The run's shared mask seed (``bind_seed``, from the recipe's root seed).
        self.mask_seed = 0

    @property
    def dp_compatible(self) -> bool:
        """Unscaled, a sent update is a subset of the clipped one (norm within the bound)."""
        return not self.rescale

    def bind_seed(self, root_seed: int) -> None:
        """Derive the masks from the run's root seed (every client's recipe holds it)."""
        from fedgen.seeding import derive_seed

        self.mask_seed = derive_seed(root_seed, "random_mask")

    def mask(self, key: str, numel: int, round: int) -> torch.Tensor:
        """Sorted coordinates of tensor ``key`` sent in ``round`` (the same for all clients)."""
        return shared_support(self.mask_seed, round, key, numel, self.fraction)

    def encode_tensor(
        self, key: str, value: torch.Tensor, ctx: TransformContext
    ) -> dict[str, torch.Tensor]:
        flat = value.detach().reshape(-1).to(torch.float32)
        return {"values": flat[self.mask(key, flat.numel(), ctx.round)]}

    def decode_tensor(
        self,
        key: str,
        parts: dict[str, torch.Tensor],
        reference: torch.Tensor,
        ctx: TransformContext,
    ) -> torch.Tensor:
        check_parts(parts, {"values"})
        n = reference.numel()
        index = self.mask(key, n, ctx.round)
        values = expect(parts.get("values"), "values", torch.float32, index.numel())
        if self.rescale and index.numel():  # an empty tensor keeps nothing to scale
            values = values * (n / index.numel())
        return _scatter(values, index, reference)

    def state_dict(self) -> dict[str, Any]:
        return {"mask_seed": self.mask_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "mask_seed" in state:
            self.mask_seed = int(state["mask_seed"])
