"""Topping up a client's under-represented classes with synthetic samples, as GeFL.

GeFL (Kang et al. 2024, "GeFL: Model-Agnostic Federated Learning with Generative
Models") lets clients train their classifiers on real data plus samples of a
federated generator. Under label skew what a client lacks is whole classes, so here a
client draws, before its first round, the samples that bring every class up to
``ratio`` times its own largest class: ``ratio`` 0 adds nothing, 1 balances the shard.
"""

from __future__ import annotations

import math

import torch

from fedgen.data.client_data import ClientData
from fedgen.data.dataset import ImageDataset
from fedgen.downstream.synthetic import synthesize
from fedgen.tasks.base import Task


def topup_counts(counts: list[int], ratio: float, cap: int) -> list[int]:
    """How many synthetic samples of each class a client with ``counts`` draws.

    Every class is brought up to ``min(ceil(ratio * max(counts)), cap)`` examples.
    Raises ``ValueError`` for a ratio outside [0, 1] or a negative cap.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"topup ratio {ratio:g} is outside [0, 1]; give a value in [0, 1]")
    if cap < 0:
        raise ValueError(f"topup cap {cap} is negative; give 0 or more")
    target = min(math.ceil(ratio * max(counts, default=0)), cap)
    return [max(0, target - n) for n in counts]


def topped_up(
    client: ClientData, generator_task: Task, ratio: float, cap: int, generator: torch.Generator
) -> tuple[ClientData, int]:
    """The client's shard plus its top-up, and how many synthetic examples that added."""
    real = client.data
    counts = torch.bincount(real.labels, minlength=real.num_classes).tolist()
    extra = topup_counts(counts, ratio, cap)
    if sum(extra) == 0:
        return client, 0
    synth = synthesize(generator_task, extra, real.class_names, generator)
    merged = ImageDataset(
        name=f"{real.name}+synthetic",
        images=torch.cat([real.images, synth.images]),
        labels=torch.cat([real.labels, synth.labels]),
        class_names=real.class_names,
    )
    return ClientData(client.client_id, merged), len(synth)
