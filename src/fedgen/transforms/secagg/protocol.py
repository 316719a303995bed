"""One round of secure aggregation, run end to end: what the round loop calls.

``secure_aggregate`` plays every client's half (``SecAggClient``) and the
server's half (``SecAggServer``) of SecAgg (Bonawitz et al. 2017) or SecAgg+
(Bell et al. 2020) in one process, passing only messages between them through
a byte-counting ``Channel``: the server object receives public keys,
ciphertexts, masked vectors and revealed shares, never a client or an update.

Weighted FedAvg: each client sends ``[w_u / W * x_u / clip, w_u / W]``, its
update scaled by its normalised weight, plus the weight as one extra
coordinate; the sum of survivors then gives both the weighted sum and the
weight sum. ``W`` is a public bound on the weights (the largest weight of the
round by default: in fedgen the example counts are already public), so every
coordinate lies in [-1, 1] before fixed-point encoding.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from fedgen.seeding import derive_seed, numpy_rng
from fedgen.transforms.secagg.channel import PHASES, Channel
from fedgen.transforms.secagg.client_half import SecAggClientHalf
from fedgen.transforms.secagg.config import SecAggConfig, SecAggPlan
from fedgen.transforms.secagg.errors import SecAggConfigError, SecAggError
from fedgen.transforms.secagg.fixed_point import decode_sum, rounding_error_bound
from fedgen.transforms.secagg.graph import neighbour_graph
from fedgen.transforms.secagg.keys import Entropy
from fedgen.transforms.secagg.link import ClientLink, LocalLink
from fedgen.transforms.secagg.requests import MaskRequest, ShareBatch, StartRound
from fedgen.transforms.secagg.server import SecAggServer
from fedgen.types import StateDict

T = TypeVar("T")


@dataclass
class SecureSum:
    """The unmasked result of a secure-aggregation round and what it cost.

    ``weighted_sum`` is the sum over survivors of ``weight * update``;
    ``max_abs_error`` bounds the fixed-point error of each of its coordinates
    (clipping aside: ``clipped`` counts clipped coordinates over survivors).
    Bytes and seconds are per phase, summed over clients.
    """

    weighted_sum: StateDict
    weight_sum: float
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    plan: SecAggPlan
    max_abs_error: float
    #: Coordinates the survivors' encodings clipped; None where only clients know it.
    clipped: int | None
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    client_seconds: dict[str, float] = field(default_factory=dict)
    server_seconds: dict[str, float] = field(default_factory=dict)

    def mean(self) -> StateDict:
        """The weighted mean ``weighted_sum / weight_sum`` (FedAvg's aggregate)."""
        return {k: v / self.weight_sum for k, v in self.weighted_sum.items()}

    def metrics(self) -> dict[str, float]:
        """Flat figures for a round's metrics: bytes, seconds, survivors."""
        n = self.plan.num_clients
        return {
            "survivors": float(len(self.survivors)),
            "dropped": float(len(self.dropped)),
            "bytes_up_per_client": sum(self.bytes_up.values()) / n,
            "bytes_down_per_client": sum(self.bytes_down.values()) / n,
            "client_seconds_per_client": sum(self.client_seconds.values()) / n,
            "server_seconds": sum(self.server_seconds.values()),
            "max_abs_error": self.max_abs_error,
            **({} if self.clipped is None else {"clipped": float(self.clipped)}),
        }


def simulate_dropouts(
    client_ids: Collection[int], rate: float, seed: int, round: int
) -> tuple[int, ...]:
    """``round(rate * n)`` clients, drawn from the round's seed, that drop after sharing keys."""
    ids = sorted(client_ids)
    count = round_half_up(rate * len(ids))
    order = numpy_rng(seed, "secagg", "dropouts", round).permutation(len(ids))
    return tuple(sorted(ids[i] for i in order[:count]))


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _flatten(
    updates: Mapping[int, StateDict],
) -> tuple[list[str], list[torch.Size], dict[int, np.ndarray]]:
    first = next(iter(updates.values()))
    names = list(first)
    shapes = [first[k].shape for k in names]
    flat = {}
    for cid, upd in updates.items():
        if list(upd) != names or any(upd[k].shape != s for k, s in zip(names, shapes, strict=True)):
            raise SecAggError(
                f"client {cid}'s update has other tensors or shapes than client "
                f"{next(iter(updates))}'s; every update of a round must match the global state"
            )
        vec = torch.cat([upd[k].detach().reshape(-1).double() for k in names]).numpy()
        if not np.isfinite(vec).all():
            raise SecAggError(f"client {cid}'s update holds NaN or Inf; reject it before secagg")
        flat[cid] = vec
    return names, shapes, flat


def _unflatten(vec: np.ndarray, names: list[str], shapes: list[torch.Size]) -> StateDict:
    # float64, like FedAvg's aggregate: a float32 cast would add error beyond the fixed-point bound.
    out, start = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = math.prod(shape)
        out[name] = torch.from_numpy(vec[start : start + size].copy()).reshape(shape)
        start += size
    return out


def secure_aggregate(
    updates: Mapping[int, StateDict],
    weights: Mapping[int, float],
    *,
    config: SecAggConfig,
    seed: int,
    round: int,
    drop_after_sharing: Collection[int] = (),
    weight_bound: float | None = None,
    channel: Channel | None = None,
    entropy: Entropy = os.urandom,
) -> SecureSum:
    """Run one round of SecAgg/SecAgg+ over ``updates`` and return the unmasked weighted sum.

    Every client's half runs in this process (``LocalLink``); the server's half sees
    only the messages that pass through ``channel``.

    Args:
        updates: client id (>= 0) -> update (same tensor names and shapes for all).
        weights: client id -> weight > 0 (e.g. example count).
        config: the secure-aggregation configuration.
        seed: root seed; rounding and the SecAgg+ graph derive from it.
        round: the round number; every key, share and message is bound to it.
        drop_after_sharing: clients that share keys, then send no masked input.
        weight_bound: public bound ``W`` on the weights; default: the largest weight.
        channel: the wire (counts bytes; tests pass one that tampers).
        entropy: key material source; ``os.urandom`` except in reproducible tests.

    Raises:
        SecAggRoundFailedError: too few clients survived to remove the masks.
        ShareTamperedError: a share or ciphertext was altered, swapped or replayed.
        SecAggConfigError: the configuration is unsound for this round.
    """
    ids = sorted(updates)
    if not ids or set(weights) != set(ids):
        raise SecAggConfigError(
            "updates and weights must name the same, non-empty set of clients; "
            f"got {sorted(updates)} and {sorted(weights)}"
        )
    names, shapes, flat = _flatten(updates)
    halves = {
        cid: SecAggClientHalf(cid, round, flat[cid], rounding_seed(seed, round, cid), entropy)
        for cid in ids
    }
    return run_secure_sum(
        weights,
        config=config,
        seed=seed,
        round=round,
        names=names,
        shapes=shapes,
        link=LocalLink(halves, channel or Channel()),
        drop_after_sharing=drop_after_sharing,
        weight_bound=weight_bound,
    )


def rounding_seed(seed: int, round: int, client_id: int) -> int:
    """The seed of ``client_id``'s stochastic rounding in ``round`` of a run seeded ``seed``."""
    return derive_seed(seed, "secagg", "rounding", round, client_id)


def _own(replies: Mapping[int, Any], asked: Sequence[int]) -> list[Any]:
    """The replies of the clients ``asked`` that name the client that sent them.

    The link knows who answered; a message names its client itself. One that names
    another client (a node speaking for a neighbour) is dropped, so its sender, not the
    client it names, is the phase's dropout.
    """
    return [replies[c] for c in asked if c in replies and _names(replies[c], "client_id", c)]


def _own_shares(cid: int, batch: Any) -> tuple[Any, ...]:
    """The shares of client ``cid``'s batch, if the batch is well formed and every share
    names ``cid`` as its sender; else none (``cid`` did not share: a dropout of phase 1)."""
    if not isinstance(batch, ShareBatch) or not _names(batch, "client_id", cid):
        return ()
    shares = batch.shares
    if not isinstance(shares, tuple) or not all(_names(x, "sender", cid) for x in shares):
        return ()
    return shares


def _names(message: Any, field: str, cid: int) -> bool:
    """Whether ``message``'s ``field`` is exactly the id ``cid`` (an int, not a bool)."""
    value = getattr(message, field, None)
    return type(value) is int and value == cid


def run_secure_sum(
    weights: Mapping[int, float],
    *,
    config: SecAggConfig,
    seed: int,
    round: int,
    names: list[str],
    shapes: list[torch.Size],
    link: ClientLink,
    drop_after_sharing: Collection[int] = (),
    weight_bound: float | None = None,
) -> SecureSum:
    """The server's side of one round, over ``link``: the unmasked weighted sum.

    ``weights`` names the round's clients (each holds its update, flattened in the
    order of ``names``/``shapes``); the server sends them requests, routes their
    shares and unmasks the sum of their masked inputs, and never holds an update.
    Raises what ``secure_aggregate`` raises.
    """
    ids = sorted(weights)
    if not ids:
        raise SecAggConfigError("secure aggregation needs at least one client")
    if any(not (math.isfinite(w) and w > 0) for w in weights.values()):
        raise SecAggConfigError(f"weights must be finite and > 0, got {dict(weights)}")
    unknown = set(drop_after_sharing) - set(ids)
    if unknown:
        raise SecAggConfigError(f"drop_after_sharing names clients {sorted(unknown)} not in round")
    plan = config.plan(len(ids))
    bound = max(weights.values()) if weight_bound is None else float(weight_bound)
    if max(weights.values()) > bound:
        raise SecAggConfigError(f"weight_bound {bound} is below the largest weight")
    length = sum(math.prod(s) for s in shapes) + 1
    server_s: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def timed(phase: str, fn: Callable[..., T], *args: Any) -> T:
        t0 = time.perf_counter()
        out = fn(*args)
        server_s[phase] += time.perf_counter() - t0
        return out

    graph = neighbour_graph(ids, plan.neighbours, seed, round)
    server = SecAggServer(
        round, plan, graph, length, threshold_hint=f"lower threshold (now {config.threshold:.3g})"
    )
    start = StartRound(
        round,
        len(ids),
        length,
        config.threshold,
        config.modulus_bits,
        config.clip,
        config.value_bits,
        config.neighbours,
        config.rounding,
    )
    phase = "advertise_keys"
    adverts = link.ask(phase, dict.fromkeys(ids, start))
    directories = timed(phase, server.collect_keys, _own(adverts, ids))
    phase = "share_keys"
    batches = link.ask(phase, directories)
    shares = [share for cid in sorted(batches) for share in _own_shares(cid, batches[cid])]
    inboxes = timed(phase, server.route_shares, shares)
    phase = "masked_input"
    dropped = set(drop_after_sharing)
    asks = {
        cid: MaskRequest(round, tuple(inbox), weights[cid] / bound)
        for cid, inbox in inboxes.items()
        if cid not in dropped
    }
    masked = link.ask(phase, asks)
    requests = timed(phase, server.collect_masked, _own(masked, sorted(asks)))
    phase = "unmasking"
    # A dropout is offline: a masked input forged in its name gets no answer.
    asked = {c: r for c, r in requests.items() if c not in dropped}
    responses = link.ask(phase, asked)
    total = timed(phase, server.unmask, _own(responses, sorted(asked)))

    survivors = tuple(sorted(server.masked))
    decoded = decode_sum(total, plan.levels, plan.modulus_bits)
    weighted = decoded[:-1] * (config.clip * bound)
    per_client = rounding_error_bound(plan.levels, config.rounding)
    return SecureSum(
        weighted_sum=_unflatten(weighted, names, shapes),
        weight_sum=float(decoded[-1] * bound),
        survivors=survivors,
        dropped=tuple(sorted(set(ids) - set(survivors))),
        plan=plan,
        max_abs_error=len(survivors) * per_client * config.clip * bound,
        clipped=link.clipped(survivors),
        bytes_up=dict(link.bytes_up),
        bytes_down=dict(link.bytes_down),
        client_seconds=dict(link.client_seconds),
        server_seconds=server_s,
    )
