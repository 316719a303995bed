"""Update transforms; importing this package registers them."""

from fedgen.transforms.base import PRIVATE_PREFIX, TransformContext, UpdateTransform
from fedgen.transforms.cast import CastCodec
from fedgen.transforms.clip import AUX_PREFIX, UNCLIPPED_KEY, NormClip, global_norm
from fedgen.transforms.codec import UpdateCodec, decode_arrival
from fedgen.transforms.dp import ClientLevelDP, effective_noise_multiplier
from fedgen.transforms.lowrank import LowRank
from fedgen.transforms.quantize import QSGD, StochasticQuantization
from fedgen.transforms.secagg import SecureAggregation
from fedgen.transforms.sign import ScaledSign
from fedgen.transforms.sparsify import RandomMask, TopK
from fedgen.transforms.subspace import Subspace

__all__ = [
    "AUX_PREFIX",
    "PRIVATE_PREFIX",
    "QSGD",
    "UNCLIPPED_KEY",
    "CastCodec",
    "ClientLevelDP",
    "LowRank",
    "NormClip",
    "RandomMask",
    "ScaledSign",
    "SecureAggregation",
    "StochasticQuantization",
    "Subspace",
    "TopK",
    "TransformContext",
    "UpdateCodec",
    "UpdateTransform",
    "decode_arrival",
    "effective_noise_multiplier",
    "global_norm",
]
