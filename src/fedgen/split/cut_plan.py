"""Each client's cut for a federation: device profiles, FLOPs, and the latency search.

HuSCF-GAN (Tawfilis et al. 2025, arXiv 2507.12979) gives every client a device
profile (assigned as its public code does), measures per-block FLOPs and
activation bytes, and picks per-client cuts that minimise the analytic
per-iteration latency. ``plan_cuts`` does exactly that (with the exact search,
the published genetic algorithm, or cuts given by hand) and keeps what is
needed to report the analytic latency of any subset of clients.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedgen.errors import ConfigError
from fedgen.split.cut import Cut
from fedgen.split.cut_search import exact_search, genetic_search
from fedgen.split.devices import (
    PUBLISHED_DEVICES,
    DeviceProfile,
    ServerProfile,
    assign_profiles,
    load_profiles,
)
from fedgen.split.flops import BlockCosts, Method, measure_block_costs
from fedgen.split.latency import LatencyModel

CutChoice = str | Sequence[Sequence[int]]


@dataclass(frozen=True)
class CutPlan:
    """Per client (by position in the sorted client ids): device, cut bits, and costs."""

    devices: tuple[DeviceProfile, ...]
    server: ServerProfile
    bits: np.ndarray  # (N, 4): G head, G tail, D head, D tail; 1 = optional block on client
    generator_costs: BlockCosts
    discriminator_costs: BlockCosts
    reproduce_slip: bool = False

    def cuts(self, index: int) -> tuple[Cut, Cut]:
        """(generator cut, discriminator cut) of the client at ``index``."""
        b = self.bits[index]
        return Cut.from_bits(int(b[0]), int(b[1])), Cut.from_bits(int(b[2]), int(b[3]))

    def latency(self, indices: Sequence[int]) -> float:
        """Analytic seconds per iteration when the clients at ``indices`` train together."""
        idx = list(indices)
        if not idx:
            return 0.0
        model = LatencyModel(
            self.generator_costs,
            self.discriminator_costs,
            [self.devices[i] for i in idx],
            self.server,
            self.reproduce_slip,
        )
        return float(model.total(self.bits[idx]))


def _given_bits(cuts: Sequence[Sequence[int]], num_clients: int) -> np.ndarray:
    rows = [list(c) for c in cuts]
    if len(rows) == 1:
        rows = rows * num_clients
    if len(rows) != num_clients or any(
        len(r) != 4 or any(isinstance(b, bool) or b not in (0, 1) for b in r) for r in rows
    ):
        raise ConfigError(
            f"backend cuts: give one list of 4 bits (G head, G tail, D head, D tail) for "
            f"all clients or one per client ({num_clients}), e.g. [[0, 0, 0, 0]]; got {cuts!r}"
        )
    return np.asarray(rows, dtype=np.int64)


def plan_cuts(
    generator_blocks: Sequence[nn.Module],
    discriminator_blocks: Sequence[nn.Module],
    latent_dim: int,
    batch_size: int,
    num_clients: int,
    cuts: CutChoice = "exact",
    devices: str | Path | None = None,
    seed: int = 0,
    reproduce_slip: bool = False,
    counting: Method = "torch",
) -> CutPlan:
    """Assign profiles, measure FLOPs on copies of the blocks, and choose the cuts.

    ``cuts``: ``"exact"`` (the exact latency search), ``"genetic"`` (the published
    GA: population 1000, 1000 generations), or bits given by hand. ``devices``: a
    YAML file of profiles, or None for the published seven.
    """
    if devices is None:
        server, profiles = ServerProfile(), list(PUBLISHED_DEVICES)
    else:
        server, profiles = load_profiles(devices)
    rng = np.random.default_rng(seed)
    profile_of_client = assign_profiles(num_clients, len(profiles), rng)
    client_devices = tuple(profiles[p] for p in profile_of_client)
    labels = torch.zeros(batch_size, dtype=torch.int64)  # FLOPs do not depend on labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g_costs = measure_block_costs(
            copy.deepcopy(list(generator_blocks)),
            (torch.randn(batch_size, latent_dim), labels),
            counting,
        )
        d_costs = measure_block_costs(
            copy.deepcopy(list(discriminator_blocks)),
            (torch.rand(batch_size, 1, 28, 28) * 2 - 1, labels),
            counting,
        )
    if isinstance(cuts, str):
        model = LatencyModel(g_costs, d_costs, client_devices, server, reproduce_slip)
        if cuts == "exact":
            bits = exact_search(model, profile_of_client).client_cuts
        elif cuts == "genetic":
            bits = genetic_search(model, profile_of_client, rng).client_cuts
        else:
            raise ConfigError(
                f"backend cuts={cuts!r}: use 'exact', 'genetic' or a list of 4-bit cuts"
            )
    else:
        bits = _given_bits(cuts, num_clients)
    return CutPlan(client_devices, server, np.asarray(bits), g_costs, d_costs, reproduce_slip)
