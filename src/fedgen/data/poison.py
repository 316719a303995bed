"""Data-poisoning adversaries: what a malicious client does to its own shard.

A simulated attacker trains the task's honest code on poisoned data, so its update
looks like any other client's in kind (these attacks go through every backend,
transform and DP setting unchanged). ``fedgen.assembly.attack`` chooses the
attackers and hands each its poisoned shard.

- ``label_flip``: every label y becomes C - 1 - y (Tolpegin et al. 2020, "Data
  Poisoning Attacks Against Federated Learning Systems"): a conditional generator
  learns to draw class C - 1 - y for y.
- ``mode_collapse``: every image becomes one image of the shard, labels kept, so the
  attacker's generator update pushes every class toward that one output (the
  collapse GAN training fears, forced; fedgen's attacker for the issue's scenario).
- ``backdoor``: a trigger of ``pixels`` bright pixels (3 of 784: 0.38% of a 28 x 28
  image) stamped near the bottom-right corner of every image, after Jin and Li 2022's
  finding that a trigger under 0.5% of the image corrupts a federated GAN; the
  backdoor succeeds when the global generator draws the trigger
  (``trigger_rate``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.data.client_data import ClientData
from fedgen.registry import ADVERSARIES


class DataPoisoner(ABC):
    """An adversary that poisons its client's shard before any training."""

    class Params(BaseModel):
        """No params."""

        model_config = ConfigDict(extra="forbid")

    @abstractmethod
    def poison(self, data: ClientData) -> ClientData:
        """The shard the malicious client trains on instead of ``data``."""


@ADVERSARIES.register("label_flip")
class LabelFlip(DataPoisoner):
    """Labels y -> C - 1 - y (Tolpegin et al. 2020)."""

    def poison(self, data: ClientData) -> ClientData:
        c = data.data.num_classes
        flipped = replace(data.data, labels=(c - 1 - data.data.labels).contiguous())
        return ClientData(data.client_id, flipped)


@ADVERSARIES.register("mode_collapse")
class ModeCollapse(DataPoisoner):
    """Every image replaced by the shard's first one, labels kept."""

    def poison(self, data: ClientData) -> ClientData:
        images = data.data.images
        one = images[:1].expand_as(images).contiguous()
        return ClientData(data.client_id, replace(data.data, images=one))


@ADVERSARIES.register("backdoor")
class Backdoor(DataPoisoner):
    """A bar of ``pixels`` bright pixels near the bottom-right corner of every image
    (after Jin and Li 2022).

    Args:
        pixels: the trigger's length in pixels (3 of a 28 x 28 image: 0.38%).
    """

    class Params(BaseModel):
        """The trigger's size."""

        model_config = ConfigDict(extra="forbid")

        pixels: int = Field(3, ge=1, le=8)

    def __init__(self, pixels: int = 3) -> None:
        self.pixels = pixels

    def poison(self, data: ClientData) -> ClientData:
        images = data.data.images.clone()
        mask = trigger_mask(tuple(images.shape[1:]), self.pixels)
        images[:, mask] = 255
        return ClientData(data.client_id, replace(data.data, images=images))


def trigger_mask(image_shape: tuple[int, ...], pixels: int) -> torch.Tensor:
    """The trigger's pixels: a bar of ``pixels`` in the second row from the bottom, ending
    two columns from the right edge; a bool mask of ``image_shape`` (C, H, W)."""
    c, h, w = image_shape
    mask = torch.zeros(c, h, w, dtype=torch.bool)
    mask[:, h - 2, w - 2 - pixels : w - 2] = True
    return mask


def trigger_rate(images: torch.Tensor, pixels: int, threshold: float = 0.75) -> float:
    """The share of ``images`` (N, C, H, W) in [0, 1] that carry the trigger: every
    trigger pixels' mean brighter than ``threshold`` (backdoor success rate; an untrained
    generator's grey, 0.5, is not a trigger)."""
    mask = trigger_mask(tuple(images.shape[1:]), pixels)
    inside = images[:, mask].mean(dim=1)
    return float((inside > threshold).float().mean())
