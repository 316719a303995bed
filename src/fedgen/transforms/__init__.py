"""Update transforms; importing this package registers them."""

from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.clip import NormClip, global_norm

__all__ = ["NormClip", "TransformContext", "UpdateTransform", "global_norm"]
