"""A simulated clock for client compute: how long each client's job takes, no sleeping.

Asynchronous federation is only faster than synchronous rounds when clients run at
different speeds, so the simulation needs speeds it can reproduce: every client's
step time is drawn once from the root seed (or read from the HuSCF device
profiles), and every job's time is that step time times the job's local steps,
times an optional per-job jitter seeded by the client and the job's number. The
same seed gives the same times on every machine and on resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedgen.config import ClockConfig
from fedgen.errors import ConfigError
from fedgen.seeding import numpy_rng
from fedgen.split.devices import PUBLISHED_DEVICES, assign_profiles


class ClientClock:
    """Per-client step times and per-job durations in simulated seconds.

    Args:
        config: the recipe's ``federation.clock``.
        client_ids: every client of the federation.
        seed: the run's root seed.
    """

    def __init__(self, config: ClockConfig, client_ids: Sequence[int], seed: int) -> None:
        if not client_ids:
            raise ConfigError("a simulated clock needs at least one client")
        self.config = config
        self.seed = seed
        ids = sorted(client_ids)
        base = config.seconds_per_step
        if config.speeds == "equal":
            factors = np.ones(len(ids))
        elif config.speeds == "lognormal":
            # Heavy-tailed, as device speeds in cross-device FL are (FedBuff, section 5).
            z = numpy_rng(seed, "clock", "speeds").standard_normal(len(ids))
            factors = np.exp(config.sigma * z)
        else:
            profiles = assign_profiles(
                len(ids), len(PUBLISHED_DEVICES), numpy_rng(seed, "clock", "profiles")
            )
            flops = np.array([d.flops_per_second for d in PUBLISHED_DEVICES])
            # Relative to the median device, so seconds_per_step is the median's step time.
            factors = float(np.median(flops)) / flops[profiles]
        #: Simulated seconds one local step takes on each client.
        self.step_seconds: dict[int, float] = {
            cid: base * float(f) for cid, f in zip(ids, factors, strict=True)
        }

    def duration(self, client_id: int, job: int, steps: int) -> float:
        """Simulated seconds of the ``job``-th job (0-based) of ``client_id``: ``steps`` steps."""
        seconds = self.step_seconds[client_id] * steps
        if self.config.jitter > 0:
            z = numpy_rng(self.seed, "clock", "job", client_id, job).standard_normal()
            seconds *= math.exp(min(self.config.jitter * float(z), 709.0))
        if not math.isfinite(seconds):
            raise ConfigError(
                f"federation.clock gives client {client_id}'s job {job} no finite duration "
                f"({self.step_seconds[client_id]!r} s a step x {steps} steps); lower "
                "seconds_per_step, sigma or jitter"
            )
        return seconds

    @staticmethod
    def finish(start: float, seconds: float) -> float:
        """When a job started at ``start`` ends: strictly later, even where ``seconds`` is
        below the float spacing at ``start`` (a long simulation of very unequal speeds),
        since schedules rely on a job sent at an instant not arriving at that instant."""
        return max(start + seconds, math.nextafter(start, math.inf))
