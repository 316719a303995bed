"""Update transforms; importing this package registers them."""

from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.clip import AUX_PREFIX, UNCLIPPED_KEY, NormClip, global_norm
from fedgen.transforms.dp import ClientLevelDP, effective_noise_multiplier
from fedgen.transforms.secagg import SecureAggregation

__all__ = [
    "AUX_PREFIX",
    "UNCLIPPED_KEY",
    "ClientLevelDP",
    "NormClip",
    "SecureAggregation",
    "TransformContext",
    "UpdateTransform",
    "effective_noise_multiplier",
    "global_norm",
]
