"""Unbiased stochastic quantization of updates to 8, 4, 2 or (``quantize``) 1 bit a value.

Two codes, both with a float32 scale per bucket of ``bucket_size`` values sent
alongside the packed integers (``fedgen.transforms.bitpack``):

- ``quantize``: stochastic uniform quantization between the bucket's minimum and
  maximum on ``2**bits - 1`` steps (as in Suresh et al. 2017, "Distributed Mean
  Estimation with Limited Communication"); a value between two levels rounds up with
  probability equal to its distance from the lower one, so ``E[decode] = x``. At one
  bit a value is sent as its bucket's minimum or maximum: unbiased, with a variance
  that only error feedback makes usable (the downlink's, as in EF21-P).
- ``qsgd``: QSGD (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via
  Gradient Quantization and Encoding"): ``x_i = ||v|| * sign(v_i) * l_i / s`` with
  ``l_i`` the stochastic rounding of ``|v_i| / ||v|| * s`` over the bucket's L2
  norm and ``s = 2**(bits - 1) - 1`` levels (bits 2: the ternary {-1, 0, 1}).

The rounding noise is drawn from the client's round seed and the tensor's name, so
a resumed run draws the same.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.registry import TRANSFORMS
from fedgen.seeding import torch_generator
from fedgen.transforms.base import TransformContext
from fedgen.transforms.bitpack import pack, packed_size, unpack
from fedgen.transforms.codec import UpdateCodec, check_parts, expect


def buckets(value: torch.Tensor, size: int) -> torch.Tensor:
    """``value`` flattened (float32), zero-padded into rows of ``size``: (buckets, size)."""
    flat = value.detach().reshape(-1).to(torch.float32)
    padded = torch.zeros(math.ceil(flat.numel() / size) * size, dtype=torch.float32)
    padded[: flat.numel()] = flat
    return padded.reshape(-1, size)


def _uniform(key: str, ctx: TransformContext, codec: str, shape: torch.Size) -> torch.Tensor:
    """U[0, 1) rounding noise of one client, round and tensor."""
    gen = torch_generator(ctx.seed, codec, key)
    return torch.rand(shape, generator=gen, dtype=torch.float32)


class _BucketQuantizer(UpdateCodec):
    """What both codes share: bits, buckets, the packed levels and one scale array."""

    def __init__(self, bits: int, bucket_size: int) -> None:
        self.bits = int(bits)
        self.bucket_size = int(bucket_size)

    def _levels(self, parts: dict[str, torch.Tensor], reference: torch.Tensor) -> torch.Tensor:
        """The levels packed in ``parts["q"]``, as (buckets, bucket_size) int64."""
        n = reference.numel()
        rows = math.ceil(n / self.bucket_size)
        q = expect(parts.get("q"), "q", torch.uint8, packed_size(n, self.bits))
        levels = torch.zeros(rows * self.bucket_size, dtype=torch.int64)
        levels[:n] = unpack(q, self.bits, n)
        return levels.reshape(rows, self.bucket_size)

    def _pack(self, levels: torch.Tensor, n: int) -> torch.Tensor:
        return pack(levels.reshape(-1)[:n], self.bits)


@TRANSFORMS.register("quantize")
class StochasticQuantization(_BucketQuantizer):
    """Stochastic uniform quantization to ``bits`` bits between each bucket's min and max.

    Args:
        bits: 8, 4, 2 or 1 bits a value.
        bucket_size: values sharing one (minimum, step) pair of float32 scales.
    """

    codec_name = "quantize"

    class Params(BaseModel):
        """The recipe's ``params`` of a ``quantize`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        bits: Literal[1, 2, 4, 8] = 8
        bucket_size: int = Field(512, ge=1)

    def __init__(self, bits: Literal[1, 2, 4, 8] = 8, bucket_size: int = 512) -> None:
        super().__init__(bits, bucket_size)

    def encode_tensor(
        self, key: str, value: torch.Tensor, ctx: TransformContext
    ) -> dict[str, torch.Tensor]:
        rows = buckets(value, self.bucket_size)
        top = (1 << self.bits) - 1
        lo = rows.min(dim=1).values
        step = (rows.max(dim=1).values - lo) / top
        step = torch.where(step > 0, step, torch.ones_like(step))  # a constant bucket
        position = (rows - lo[:, None]) / step[:, None]  # in [0, top]
        levels = torch.floor(position + _uniform(key, ctx, self.codec_name, rows.shape))
        levels = levels.clamp(0, top).to(torch.int64)
        scale = torch.stack([lo, step], dim=1).reshape(-1)
        return {"q": self._pack(levels, value.numel()), "scale": scale}

    def decode_tensor(
        self,
        key: str,
        parts: dict[str, torch.Tensor],
        reference: torch.Tensor,
        ctx: TransformContext,
    ) -> torch.Tensor:
        check_parts(parts, {"q", "scale"})
        levels = self._levels(parts, reference)
        scale = expect(parts.get("scale"), "scale", torch.float32, 2 * levels.shape[0])
        lo, step = scale.reshape(-1, 2).unbind(dim=1)
        rows = lo[:, None] + levels.to(torch.float32) * step[:, None]
        return rows.reshape(-1)[: reference.numel()].reshape(reference.shape).to(reference.dtype)


@TRANSFORMS.register("qsgd")
class QSGD(_BucketQuantizer):
    """QSGD (Alistarh et al. 2017): signed levels of each bucket's L2 norm, ``bits`` bits a value.

    Args:
        bits: 8, 4 or 2 bits a value (127, 7 or 1 levels each side of zero).
        bucket_size: values sharing one float32 norm (the paper's bucket ``d``).
    """

    codec_name = "qsgd"

    class Params(BaseModel):
        """The recipe's ``params`` of a ``qsgd`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        bits: Literal[2, 4, 8] = 4
        bucket_size: int = Field(512, ge=1)

    def __init__(self, bits: Literal[2, 4, 8] = 4, bucket_size: int = 512) -> None:
        super().__init__(bits, bucket_size)
        #: s, the levels on each side of zero; a level is sent as ``sign * l + s``.
        self.levels = (1 << (self.bits - 1)) - 1

    def encode_tensor(
        self, key: str, value: torch.Tensor, ctx: TransformContext
    ) -> dict[str, torch.Tensor]:
        rows = buckets(value, self.bucket_size)
        s = self.levels
        norm = rows.norm(dim=1)
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        position = rows.abs() / safe[:, None] * s  # in [0, s]
        magnitude = torch.floor(position + _uniform(key, ctx, self.codec_name, rows.shape))
        signed = torch.sign(rows) * magnitude.clamp(0, s)
        return {"q": self._pack(signed.to(torch.int64) + s, value.numel()), "norm": norm}

    def decode_tensor(
        self,
        key: str,
        parts: dict[str, torch.Tensor],
        reference: torch.Tensor,
        ctx: TransformContext,
    ) -> torch.Tensor:
        check_parts(parts, {"q", "norm"})
        s = self.levels
        levels = self._levels(parts, reference) - s
        if int(levels.abs().max()) > s:
            raise ValueError(f"a level beyond +-{s}")
        norm = expect(parts.get("norm"), "norm", torch.float32, levels.shape[0])
        rows = norm[:, None] * levels.to(torch.float32) / s
        return rows.reshape(-1)[: reference.numel()].reshape(reference.shape).to(reference.dtype)
