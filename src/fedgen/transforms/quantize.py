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


def bucket_width(numel: int, size: int) -> int:
    """Values a bucket of a ``numel``-value tensor holds: ``size``, or all of them when
    fewer (at least 1), so a huge ``size`` never pads a small tensor to its length."""
    return max(1, min(size, numel))


def buckets(value: torch.Tensor, size: int) -> torch.Tensor:
    """``value`` flattened (float32) into rows of ``bucket_width``, the last zero-padded:
    (buckets, width)."""
    flat = value.detach().reshape(-1).to(torch.float32)
    width = bucket_width(flat.numel(), size)
    padded = torch.zeros(math.ceil(flat.numel() / width) * width, dtype=torch.float32)
    padded[: flat.numel()] = flat
    return padded.reshape(-1, width)


def unpadded(numel: int, size: int) -> torch.Tensor:
    """Where ``buckets`` puts a ``numel``-value tensor's own values: (buckets, width) bool,
    False at the last bucket's padding (a statistic over a bucket must skip it)."""
    width = bucket_width(numel, size)
    rows = math.ceil(numel / width)
    return (torch.arange(rows * width) < numel).reshape(rows, width)


def _uniform(key: str, ctx: TransformContext, codec: str, shape: torch.Size) -> torch.Tensor:
    """U[0, 1) rounding noise of one client, round and tensor."""
    gen = torch_generator(ctx.seed, codec, key)
    return torch.rand(shape, generator=gen, dtype=torch.float32)


#: Why the server refuses a bucket's scale of NaN or Inf.
_NOT_FINITE = "a scale of NaN or Inf: the encoded update was not finite"


def _finite_buckets(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Which buckets (rows of ``buckets``) hold only finite values and got a finite
    ``scale``: (buckets,) bool.

    The others cannot be coded (a NaN level has no integer: cast, it is garbage that
    ``pack`` refuses); they are sent as level 0 with a NaN scale, as the other codecs
    send a non-finite update, and the server rejects the update as not finite.
    """
    return torch.isfinite(rows).all(dim=1) & torch.isfinite(scale)


class _BucketQuantizer(UpdateCodec):
    """What both codes share: bits, buckets, the packed levels and one scale array."""

    def __init__(self, bits: int, bucket_size: int) -> None:
        self.bits = int(bits)
        self.bucket_size = int(bucket_size)

    def _levels(self, parts: dict[str, torch.Tensor], reference: torch.Tensor) -> torch.Tensor:
        """The levels packed in ``parts["q"]``, as (buckets, width) int64."""
        n = reference.numel()
        width = bucket_width(n, self.bucket_size)
        rows = math.ceil(n / width)
        q = expect(parts.get("q"), "q", torch.uint8, packed_size(n, self.bits))
        levels = torch.zeros(rows * width, dtype=torch.int64)
        levels[:n] = unpack(q, self.bits, n)
        return levels.reshape(rows, width)

    def _pack(self, levels: torch.Tensor, n: int) -> torch.Tensor:
        return pack(levels.reshape(-1)[:n], self.bits)


@TRANSFORMS.register("quantize")
class StochasticQuantization(_BucketQuantizer):
    """Stochastic uniform quantization to ``bits`` bits between each bucket's min and max.

    Args:
        bits: 8, 4, 2 or 1 bits a value.
        bucket_size: values sharing one (minimum, step) pair of float32 scales (a
            smaller tensor is one bucket).
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
        # The range of each bucket's own values: the zero padding of the last would
        # stretch it to 0 (a bucket of 5..6 sent on 0..6).
        real = unpadded(value.numel(), self.bucket_size)
        lo = rows.masked_fill(~real, math.inf).min(dim=1).values
        step = (rows.masked_fill(~real, -math.inf).max(dim=1).values - lo) / top
        step = torch.where(step > 0, step, torch.ones_like(step))  # a constant bucket
        finite = _finite_buckets(rows, step)
        position = (rows - lo[:, None]) / step[:, None]  # in [0, top]
        levels = torch.floor(position + _uniform(key, ctx, self.codec_name, rows.shape))
        levels = torch.where(finite[:, None], levels.clamp(0, top), 0).to(torch.int64)
        lo = torch.where(finite, lo, math.nan)
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
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(_NOT_FINITE)
        lo, step = scale.reshape(-1, 2).unbind(dim=1)
        rows = lo[:, None] + levels.to(torch.float32) * step[:, None]
        return rows.reshape(-1)[: reference.numel()].reshape(reference.shape).to(reference.dtype)


@TRANSFORMS.register("qsgd")
class QSGD(_BucketQuantizer):
    """QSGD (Alistarh et al. 2017): signed levels of each bucket's L2 norm, ``bits`` bits a value.

    Args:
        bits: 8, 4 or 2 bits a value (127, 7 or 1 levels each side of zero).
        bucket_size: values sharing one float32 norm (the paper's bucket ``d``; a
            smaller tensor is one bucket).
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
        norm = rows.norm(dim=1)  # the zero padding adds nothing to a norm
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        finite = _finite_buckets(rows, norm)
        position = rows.abs() / safe[:, None] * s  # in [0, s]
        magnitude = torch.floor(position + _uniform(key, ctx, self.codec_name, rows.shape))
        signed = torch.where(finite[:, None], torch.sign(rows) * magnitude.clamp(0, s), 0)
        norm = torch.where(finite, norm, math.nan)
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
        if levels.numel() and int(levels.abs().max()) > s:
            raise ValueError(f"a level beyond +-{s}")
        norm = expect(parts.get("norm"), "norm", torch.float32, levels.shape[0])
        if not bool(torch.isfinite(norm).all()):
            raise ValueError(_NOT_FINITE)
        rows = norm[:, None] * levels.to(torch.float32) / s
        return rows.reshape(-1)[: reference.numel()].reshape(reference.shape).to(reference.dtype)
