"""Scaled sign compression: one bit a value, or less on a shared random support.

``sign`` sends each value's sign and, per bucket of ``bucket_size`` values, one float32
scale: the bucket's mean magnitude, the scale that brings ``s * sign(x)`` closest to
``x`` in L2. That compressor is biased but contractive (``||C(x) - x|| < ||x||`` for
any non-zero ``x``), which is what error feedback needs to converge: signSGD with error
feedback (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes") on a client's update, and EF21-P (Gruntkowska et al. 2023) on the
server's broadcast, where the stochastic 1-bit ``quantize`` (unbiased, with a variance
larger than the value it codes) makes training diverge.

With ``fraction`` below 1 only the coordinates of a random support are sent, drawn
from the run's shared seed, the round and the tensor's name as ``random_mask`` draws
them (the support is not sent): ``fraction`` bits a value. With ``error_feedback``
what a round does not send, off the support or in the rounding to a sign, stays in
the client's private state and is added to its next update.

An update travels as two arrays, all its tensors' signs and all their scales: at a
bit a value or less, a header entry per tensor and part would weigh about as much as
the values (the cGAN's 40 tensors).

Without error feedback the sent update's norm never exceeds the update's (per bucket
``n * mean|x|**2 <= ||x||**2``), so it composes with client-level DP's clip bound.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.registry import TRANSFORMS
from fedgen.seeding import derive_seed
from fedgen.transforms.base import TransformContext
from fedgen.transforms.bitpack import pack, packed_size, unpack
from fedgen.transforms.codec import (
    CODEC_PREFIX,
    UpdateCodec,
    check_scales,
    coded_keys,
    expect,
    passed_through,
    whole_update_keys,
)
from fedgen.transforms.quantize import bucket_width, buckets, unpadded
from fedgen.transforms.sparsify import keep_residual, shared_support, with_residual
from fedgen.types import StateDict

#: The update's signs, all its coded tensors' in turn (sorted by name), a bit each.
SIGNS = CODEC_PREFIX + "sign/signs"
#: Every bucket's scale, in the same order.
SCALES = CODEC_PREFIX + "sign/scales"
PARTS = (SIGNS, SCALES)


@TRANSFORMS.register("sign")
class ScaledSign(UpdateCodec):
    """Each value's sign times its bucket's mean magnitude, on all or a shared random
    ``fraction`` of each tensor's coordinates.

    Args:
        fraction: of each tensor's coordinates sent each round (1: all of them).
        bucket_size: values (of those sent) sharing one float32 scale (fewer sent: one
            bucket).
        error_feedback: keep what was not sent in the client's private state and add it
            to the next update (a compressed downlink has its own, on the server: there
            it must be off).
    """

    codec_name = "sign"

    class Params(BaseModel):
        """The recipe's ``params`` of a ``sign`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        fraction: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
        bucket_size: int = Field(2048, ge=1)
        error_feedback: bool = True

    def __init__(
        self, fraction: float = 1.0, bucket_size: int = 2048, error_feedback: bool = True
    ) -> None:
        self.fraction = float(fraction)
        self.bucket_size = int(bucket_size)
        self.error_feedback = bool(error_feedback)
        #: The run's shared support seed (``bind_seed``); unused at fraction 1.
        self.mask_seed = 0

    @property
    def dp_compatible(self) -> bool:
        """Without error feedback the sent norm stays within the update's (module doc)."""
        return not self.error_feedback

    def bind_seed(self, root_seed: int) -> None:
        self.mask_seed = derive_seed(root_seed, "sign")

    def _support(self, key: str, numel: int, round: int) -> torch.Tensor | None:
        """The coordinates sent (None: every one)."""
        if self.fraction >= 1.0:
            return None
        return shared_support(self.mask_seed, round, key, numel, self.fraction)

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        encoded = passed_through(update)
        signs: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        plain = 0
        for key in coded_keys(update):
            value = update[key]
            plain += value.numel() * 4
            positive, scale = self._encode_tensor(key, value, ctx)
            signs.append(positive)
            scales.append(scale)
        # One array of signs and one of scales for the whole update: at a bit a value or
        # less, a header entry per tensor and part would weigh as much as the values.
        encoded[SIGNS] = pack(torch.cat(signs) if signs else torch.zeros(0, dtype=torch.int64), 1)
        encoded[SCALES] = torch.cat(scales) if scales else torch.zeros(0)
        sent = encoded[SIGNS].numel() + encoded[SCALES].numel() * 4
        return encoded, {"encoded_fraction": sent / plain if plain else 1.0}

    def _encode_tensor(
        self, key: str, value: torch.Tensor, ctx: TransformContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``key``'s signs (1: non-negative) on its support, and its buckets' scales."""
        flat = value.detach().reshape(-1).to(torch.float32)
        if self.error_feedback:
            flat = with_residual(flat, key, self.codec_name, ctx)
        support = self._support(key, flat.numel(), ctx.round)
        kept = flat if support is None else flat[support]
        n = kept.numel()
        rows = buckets(kept, self.bucket_size)  # zero-padded: the padding adds no magnitude
        # The mean over each bucket's own values: the last one's padding is not counted.
        counts = unpadded(n, self.bucket_size).sum(dim=1).to(torch.float32)
        scale = rows.abs().sum(dim=1) / counts
        positive = (kept >= 0).to(torch.int64)
        if self.error_feedback and ctx.private is not None:
            sent = self._values(positive, scale)
            left = flat.clone()
            if support is None:
                left -= sent
            else:
                left[support] -= sent
            keep_residual(left, key, self.codec_name, value.shape, ctx)
        return positive, scale

    def _values(self, positive: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The sent values: +-scale of each value's bucket."""
        width = bucket_width(positive.numel(), self.bucket_size)
        per_value = scale.repeat_interleave(width)[: positive.numel()]
        return per_value * (2.0 * positive.to(torch.float32) - 1.0)

    def decode(self, update: StateDict, reference: StateDict, ctx: TransformContext) -> StateDict:
        """One client's update as the model's tensors, from what ``on_client`` sent.

        Raises:
            ValueError: the signs or scales are missing, of the wrong size or malformed.
        """
        keys = whole_update_keys(update, reference, PARTS, self.codec_name)
        supports = {k: self._support(k, reference[k].numel(), ctx.round) for k in keys}
        kept = [reference[k].numel() if s is None else s.numel() for k, s in supports.items()]
        rows = [math.ceil(n / bucket_width(n, self.bucket_size)) for n in kept]
        signs = unpack(
            expect(update.get(SIGNS), "signs", torch.uint8, packed_size(sum(kept), 1)), 1, sum(kept)
        )
        scales = expect(update.get(SCALES), "scales", torch.float32, sum(rows))
        check_scales(scales)
        decoded = {k: v for k, v in update.items() if k not in PARTS}
        for key, support, these_signs, these_scales in zip(
            keys, supports.values(), signs.split(kept), scales.split(rows), strict=True
        ):
            ref = reference[key]
            values = self._values(these_signs, these_scales)
            if support is None:
                flat = values
            else:
                flat = torch.zeros(ref.numel(), dtype=torch.float32)
                flat[support] = values
            decoded[key] = flat.reshape(ref.shape).to(ref.dtype)
        return decoded

    def state_dict(self) -> dict[str, Any]:
        return {"mask_seed": self.mask_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "mask_seed" in state:
            self.mask_seed = int(state["mask_seed"])
