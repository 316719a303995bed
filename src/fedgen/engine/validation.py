"""Server-side checks on a received client update.

A malformed update (missing or extra tensors, wrong shapes or dtypes,
NaN/Inf, an absurd norm) becomes a failure value: it is logged and left out
of the aggregate, and the round goes on while enough clients remain.
"""

from __future__ import annotations

import torch

from fedgen.errors import ClientUpdateError
from fedgen.types import StateDict


def check_update(
    update: StateDict,
    reference: StateDict,
    max_norm: float | None,
    auxiliary: frozenset[str] = frozenset(),
) -> float:
    """Raise ``ClientUpdateError`` if ``update`` does not fit ``reference``; return its L2 norm.

    ``auxiliary`` names side-channel tensors the transforms add to every update (e.g.
    adaptive clipping's unclipped bit): each must be present, finite and of shape (1,);
    they do not count toward the norm.
    """
    missing = (reference.keys() | auxiliary) - update.keys()
    extra = update.keys() - reference.keys() - auxiliary
    if missing or extra:
        raise ClientUpdateError(
            f"update keys differ from the model: missing {sorted(missing)[:3]}"
            f", unexpected {sorted(extra)[:3]}"
        )
    sq = 0.0
    for key, ref in reference.items():
        value = update[key]
        if not isinstance(value, torch.Tensor):
            raise ClientUpdateError(f"{key}: expected a tensor, got {type(value).__name__}")
        if value.shape != ref.shape:
            raise ClientUpdateError(
                f"{key}: shape {tuple(value.shape)}, model has {tuple(ref.shape)}"
            )
        if value.dtype != ref.dtype:
            raise ClientUpdateError(f"{key}: dtype {value.dtype}, model has {ref.dtype}")
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise ClientUpdateError(f"{key}: contains NaN or Inf")
            sq += float(value.double().pow(2).sum())
    for key in sorted(auxiliary):
        value = update[key]
        if not isinstance(value, torch.Tensor) or value.shape != (1,):
            raise ClientUpdateError(f"{key}: expected a tensor of shape (1,)")
        if not bool(torch.isfinite(value).all()):
            raise ClientUpdateError(f"{key}: contains NaN or Inf")
    norm = sq**0.5
    if max_norm is not None and norm > max_norm:
        raise ClientUpdateError(
            f"update norm {norm:.3g} exceeds federation.max_update_norm={max_norm:.3g}"
        )
    return norm
