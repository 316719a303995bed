"""Stacking many clients' tensors and step inputs along a new leading client dimension.

The vectorized backend keeps a group's tensors and optimizer state as nests of dicts
whose leaves are ``(clients, ...)`` tensors; these helpers build, slice and write back
such nests, and pad step inputs of unequal batch size (a shard smaller than the
batch) with a 0/1 mask per input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

#: A nest of dicts whose leaves are tensors (tensors by module, optimizer states).
Nest = Any


def nest_map(fn: Callable[..., torch.Tensor], nest: Nest, *others: Nest) -> Nest:
    """``fn`` applied leaf by leaf to nests of the same structure."""
    if isinstance(nest, dict):
        return {k: nest_map(fn, v, *(o[k] for o in others)) for k, v in nest.items()}
    return fn(nest, *others)


def stack(nests: Sequence[Nest]) -> Nest:
    """Nests of the same structure stacked leaf by leaf into ``(len(nests), ...)`` leaves."""
    return nest_map(lambda *leaves: torch.stack(leaves), nests[0], *nests[1:])


def rows(nest: Nest, count: int) -> Nest:
    """The first ``count`` clients of a stacked nest (views, no copy)."""
    return nest_map(lambda t: t[:count], nest)


def write_rows(stacked: Nest, head: Nest) -> Nest:
    """``stacked`` with its first rows replaced by ``head``'s (all of them: ``head`` itself)."""

    def put(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        if part.shape[0] == whole.shape[0]:
            return part
        whole[: part.shape[0]] = part
        return whole

    return nest_map(put, stacked, head)


def pad_and_stack(
    draws: Sequence[dict[str, torch.Tensor]], mask_dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-client step inputs stacked to ``(clients, longest, ...)``, and their masks.

    Each input is padded with zeros to the longest batch among the clients;
    ``masks[name]`` is ``(clients, longest)``: 1 for a client's own rows, 0 for padding.
    """
    inputs: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for name in draws[0]:
        parts = [d[name] for d in draws]
        lengths = [p.shape[0] for p in parts]
        longest = max(lengths)
        if all(n == longest for n in lengths):
            inputs[name] = torch.stack(parts)
            masks[name] = torch.ones(len(parts), longest, dtype=mask_dtype)
            continue
        first = parts[0]
        padded = torch.zeros((len(parts), longest, *first.shape[1:]), dtype=first.dtype)
        mask = torch.zeros(len(parts), longest, dtype=mask_dtype)
        for i, (part, n) in enumerate(zip(parts, lengths, strict=True)):
            padded[i, :n] = part
            mask[i, :n] = 1
        inputs[name], masks[name] = padded, mask
    return inputs, masks
