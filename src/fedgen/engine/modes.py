"""``federation.mode`` -> the ``Schedule`` the round loop runs (sync, fedbuff, gossip)."""

from __future__ import annotations

from collections.abc import Sequence

from fedgen.config import ClockConfig, FedBuffConfig, FederationConfig, GossipConfig
from fedgen.engine.client_clock import ClientClock
from fedgen.engine.fedbuff import FedBuffSchedule
from fedgen.engine.fedbuff_wall import WallClockFedBuff
from fedgen.engine.gossip import GossipSchedule
from fedgen.engine.schedule import Schedule, SynchronousSchedule


def schedule_for(config: FederationConfig, client_ids: Sequence[int], seed: int) -> Schedule:
    """The schedule of ``config.mode`` with its section (defaults when absent).

    FedBuff without a ``clock`` section runs on equal speeds (every update fresh when
    the buffer holds every client). Raises ``ConfigError`` for values no federation of
    ``client_ids`` can run (e.g. a buffer larger than the clients in flight).
    """
    ids = sorted(client_ids)
    clock = None if config.clock is None else ClientClock(config.clock, ids, seed)
    if config.mode == "fedbuff" and config.fedbuff is not None and config.fedbuff.timing == "wall":
        return WallClockFedBuff(config.fedbuff, ids, seed)
    if config.mode == "fedbuff":
        return FedBuffSchedule(
            config.fedbuff or FedBuffConfig(),
            clock or ClientClock(ClockConfig(), ids, seed),
            ids,
            seed,
        )
    if config.mode == "gossip":
        return GossipSchedule(config.gossip or GossipConfig(), clock, ids, seed)
    return SynchronousSchedule(clock)
