"""Cast an update to a 16-bit float format for the wire: half the bytes of float32.

``float16`` keeps 10 mantissa bits and overflows past 65504; ``bfloat16`` keeps
float32's range with 7 mantissa bits (Micikevicius et al. 2018, "Mixed Precision
Training", on what each keeps). Rounding is to nearest, so the code is deterministic
and lossless for values already on the target grid.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import TransformContext
from fedgen.transforms.codec import UpdateCodec, check_parts

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@TRANSFORMS.register("cast")
class CastCodec(UpdateCodec):
    """Send each floating tensor as ``dtype`` (16 bits a value) and cast it back on arrival.

    Args:
        dtype: ``float16`` or ``bfloat16``.
    """

    codec_name = "cast"

    class Params(BaseModel):
        """The recipe's ``params`` of a ``cast`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        dtype: Literal["float16", "bfloat16"] = "float16"

    def __init__(self, dtype: Literal["float16", "bfloat16"] = "float16") -> None:
        self.dtype = _DTYPES[dtype]

    def encode_tensor(
        self, key: str, value: torch.Tensor, ctx: TransformContext
    ) -> dict[str, torch.Tensor]:
        return {"v": value.detach().to(self.dtype)}

    def decode_tensor(
        self,
        key: str,
        parts: dict[str, torch.Tensor],
        reference: torch.Tensor,
        ctx: TransformContext,
    ) -> torch.Tensor:
        check_parts(parts, {"v"})
        value = parts["v"]
        if value.dtype != self.dtype or value.shape != reference.shape:
            raise ValueError(
                f"expected {self.dtype} of shape {tuple(reference.shape)}, got {value.dtype} "
                f"{tuple(value.shape)}"
            )
        return value.to(reference.dtype)
