"""Analytic per-iteration latency of U-shaped split GAN training with per-client cuts.

The model of HuSCF-GAN (Tawfilis et al. 2025, arXiv 2507.12979) as its
public code (``Cut_Selection/CutLayerSelection.py``) computes it. Each
network (generator, discriminator) has ``n >= 5`` blocks; per client two bits
say whether block 2 joins the head and block ``n-1`` joins the tail; blocks
``3..n-2`` always run on the server. For one network, with client speed
``s_i``, uplink ``r_i``, server speed ``S``, downlink ``R``, per-block
forward/backward FLOPs ``F``/``B`` and output bytes ``O``:

- forward: ``max(F2 * #head0 / S + max_{head0} head_i, max_{head1} head_i)``
  (clients that keep block 2 send later but skip the server's block 2), then
  the always-server blocks for all clients, then ``max_i tail_i`` (the
  server's block ``n-1`` for ``#tail0`` clients, the downlink, the client's tail);
- backward: the mirror image (tail gradients up, server, head gradients down).

Client compute and transmissions of the discriminator count three times per
iteration (fake, real, generator step); the server's discriminator compute
counts once, as in the code. ``reproduce_slip=True`` reproduces the code's
slip (the server's backward of block 2 timed with block ``n-1``'s FLOPs).

Cuts are arrays of bits ``(..., N, 4)``: (generator head, generator tail,
discriminator head, discriminator tail), 1 = the optional block on the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedgen.errors import ConfigError
from fedgen.split.devices import DeviceProfile, ServerProfile
from fedgen.split.flops import BlockCosts

#: Client-side multiplicity of each network per iteration (D runs on fake, real, fake).
GEN_TIMES, DISC_TIMES = 1, 3


def _masked_max(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Max over the last axis of ``values`` where ``mask``; 0 where nothing is selected."""
    return np.where(mask, values, 0.0).max(axis=-1)


@dataclass(frozen=True)
class NetworkLatency:
    """Latency of one network split into the head-bit part, tail-bit part and a constant."""

    head: np.ndarray  # depends only on the head bits
    tail: np.ndarray  # depends only on the tail bits
    constant: float  # the always-on-server blocks

    @property
    def total(self) -> np.ndarray:
        return self.head + self.tail + self.constant


class LatencyModel:
    """Per-iteration latency for clients with ``devices`` (one profile per client)."""

    def __init__(
        self,
        generator: BlockCosts,
        discriminator: BlockCosts,
        devices: Sequence[DeviceProfile],
        server: ServerProfile,
        reproduce_slip: bool = False,
    ) -> None:
        for name, costs in (("generator", generator), ("discriminator", discriminator)):
            if len(costs.forward_flops) < 5:
                raise ConfigError(
                    f"{name} has {len(costs.forward_flops)} blocks; the latency model needs >= 5 "
                    "(first and last on the client, one optional block each side, a server middle)"
                )
        if not devices:
            raise ConfigError("give at least one client device")
        self.generator = generator
        self.discriminator = discriminator
        self.server = server
        self.reproduce_slip = reproduce_slip
        self.speed = np.array([d.flops_per_second for d in devices])
        self.rate = np.array([d.bytes_per_second for d in devices])

    @property
    def num_clients(self) -> int:
        return len(self.speed)

    def network(
        self, costs: BlockCosts, head: np.ndarray, tail: np.ndarray, times: int
    ) -> NetworkLatency:
        """Latency parts of one network for head bits and tail bits of shape ``(..., N)``."""
        if head.shape[-1] != self.num_clients or tail.shape[-1] != self.num_clients:
            raise ConfigError(f"cuts must have one entry per client ({self.num_clients})")
        f = np.asarray(costs.forward_flops, dtype=np.float64)
        b = np.asarray(costs.backward_flops, dtype=np.float64)
        o = np.asarray(costs.output_bytes, dtype=np.float64)
        n = len(f)
        s_srv, r_down = self.server.flops_per_second, self.server.downlink_bytes_per_second
        h1, t1 = head.astype(bool), tail.astype(bool)
        n_h0 = (~h1).sum(axis=-1)
        n_t0 = (~t1).sum(axis=-1)
        n_all = self.num_clients
        m = times

        # Head bit: forward up to the server middle, and the head's backward.
        head_f = (
            m * np.where(h1, f[0] + f[1], f[0]) / self.speed
            + m * np.where(h1, o[1], o[0]) / self.rate
        )
        fwd_head = np.maximum(
            f[1] * n_h0 / s_srv + _masked_max(head_f, ~h1), _masked_max(head_f, h1)
        )
        srv_b2 = (b[n - 2] if self.reproduce_slip else b[1]) * n_h0 / s_srv
        head_b = (
            m * np.where(h1, o[1], o[0]) / r_down + m * np.where(h1, b[0] + b[1], b[0]) / self.speed
        )
        bwd_head = np.max(np.where(h1, 0.0, srv_b2[..., None]) + head_b, axis=-1)

        # Tail bit: forward from the server middle to the loss, and the tail's backward.
        down = m * np.where(t1, o[n - 3], o[n - 2])
        tail_f = down / r_down + m * np.where(t1, f[n - 2] + f[n - 1], f[n - 1]) / self.speed
        srv_f4 = f[n - 2] * n_t0 / s_srv
        fwd_tail = np.max(np.where(t1, 0.0, srv_f4[..., None]) + tail_f, axis=-1)
        tail_b = m * np.where(t1, b[n - 2] + b[n - 1], b[n - 1]) / self.speed + down / self.rate
        bwd_tail = np.maximum(
            b[n - 2] * n_t0 / s_srv + _masked_max(tail_b, ~t1), _masked_max(tail_b, t1)
        )
        middle = (f[2 : n - 2].sum() + b[2 : n - 2].sum()) * n_all / s_srv
        return NetworkLatency(fwd_head + bwd_head, fwd_tail + bwd_tail, float(middle))

    def parts(self, cuts: np.ndarray) -> tuple[NetworkLatency, NetworkLatency]:
        """(generator, discriminator) latency parts for ``cuts`` of shape ``(..., N, 4)``."""
        cuts = np.asarray(cuts)
        if cuts.shape[-1] != 4 or not np.isin(cuts, (0, 1)).all():
            raise ConfigError("cuts must be bits of shape (..., clients, 4)")
        gen = self.network(self.generator, cuts[..., 0], cuts[..., 1], GEN_TIMES)
        disc = self.network(self.discriminator, cuts[..., 2], cuts[..., 3], DISC_TIMES)
        return gen, disc

    def total(self, cuts: np.ndarray) -> np.ndarray:
        """Seconds per iteration for ``cuts`` of shape ``(..., N, 4)``."""
        gen, disc = self.parts(cuts)
        return gen.total + disc.total
