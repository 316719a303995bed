"""Device and server profiles for the analytic split-learning latency model.

HuSCF-GAN (Tawfilis et al. 2025, arXiv 2507.12979) models each client as a
clock (MHz) times FLOPs per cycle and an uplink data rate in bytes/s, and the
server as 42 GHz x 16 FLOPs/cycle with a 1e9 B/s downlink. Profiles load from
YAML (``configs/huscf/devices.yaml``); a zero, negative or missing speed or
rate is a ``ConfigError`` naming the profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedgen.errors import ConfigError


def _positive(owner: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{owner}: {field} must be a number, got {value!r}")
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(
            f"{owner}: {field} is {value}; a device needs a finite speed and data rate > 0"
        )
    return float(value)


@dataclass(frozen=True)
class DeviceProfile:
    """A client device: ``mhz * 1e6 * flops_per_cycle`` FLOP/s, uplink ``bytes_per_second``."""

    name: str
    mhz: float
    flops_per_cycle: float
    bytes_per_second: float

    def __post_init__(self) -> None:
        for f in ("mhz", "flops_per_cycle", "bytes_per_second"):
            _positive(f"device {self.name!r}", f, getattr(self, f))

    @property
    def flops_per_second(self) -> float:
        return self.mhz * 1e6 * self.flops_per_cycle


@dataclass(frozen=True)
class ServerProfile:
    """The server: ``ghz * 1e9 * flops_per_cycle`` FLOP/s; downlink in bytes/s."""

    ghz: float = 42.0
    flops_per_cycle: float = 16.0
    downlink_bytes_per_second: float = 1e9

    def __post_init__(self) -> None:
        for f in ("ghz", "flops_per_cycle", "downlink_bytes_per_second"):
            _positive("server", f, getattr(self, f))

    @property
    def flops_per_second(self) -> float:
        return self.ghz * 1e9 * self.flops_per_cycle


#: The seven profiles of the published code (``configs/huscf/devices.yaml`` holds the same).
PUBLISHED_DEVICES: tuple[DeviceProfile, ...] = tuple(
    DeviceProfile(f"device{i + 1}", mhz, fpc, rate)
    for i, (mhz, fpc, rate) in enumerate(
        [
            (480, 1, 50e6),
            (6000, 8, 150e6),
            (15600, 8, 1e9),
            (5720, 8, 300e6),
            (4000, 4, 50e6),
            (9000, 4, 100e6),
            (12000, 10, 800e6),
        ]
    )
)


def load_profiles(path: str | Path) -> tuple[ServerProfile, list[DeviceProfile]]:
    """Read ``server`` and ``devices`` from a YAML file like ``configs/huscf/devices.yaml``."""
    if not Path(path).is_file():
        raise ConfigError(
            f"device profile file {path} does not exist; give a YAML file like "
            "configs/huscf/devices.yaml (paths are relative to the working directory)"
        )
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("devices"), list) or not raw["devices"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'devices' list")
    server = ServerProfile(**(raw.get("server") or {}))
    devices = []
    for i, d in enumerate(raw["devices"]):
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: devices[{i}] must be a mapping, got {d!r}")
        missing = {"mhz", "flops_per_cycle", "bytes_per_second"} - set(d)
        if missing:
            raise ConfigError(f"{path}: devices[{i}] lacks {sorted(missing)}")
        devices.append(
            DeviceProfile(
                name=str(d.get("name", f"device{i + 1}")),
                mhz=d["mhz"],
                flops_per_cycle=d["flops_per_cycle"],
                bytes_per_second=d["bytes_per_second"],
            )
        )
    return server, devices


def assign_profiles(num_clients: int, num_profiles: int, rng: np.random.Generator) -> np.ndarray:
    """Profile index per client, as the published code assigns them.

    Every profile gets ``num_clients // num_profiles`` clients; the remainder
    go to distinct randomly chosen profiles; the list is then shuffled.
    """
    if num_clients < 1 or num_profiles < 1:
        raise ConfigError(f"need >= 1 client and profile, got {num_clients}, {num_profiles}")
    base = np.repeat(np.arange(num_profiles), num_clients // num_profiles)
    extra = rng.choice(num_profiles, size=num_clients % num_profiles, replace=False)
    return rng.permutation(np.concatenate([base, extra])).astype(np.int64)
