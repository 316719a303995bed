"""One client's whole part in a round of secure aggregation: it holds its update.

A client trains, keeps its update, and from then on only answers the server's
requests (``requests.py``) with protocol messages: a ``StartRound`` with its
``AdvertiseKeys``, the key directory with a ``ShareBatch``, a ``MaskRequest`` with
its ``MaskedInput`` (the only time the update is used, masked), an
``UnmaskRequest`` with its ``UnmaskResponse``. The update never leaves in the
clear; after masking the client forgets it. A client left alone in a round of
client-level DP answers a ``LoneRequest`` instead: it adds the round's noise itself,
with its own secret ``noise_seed``, and sends the noised update (``LoneRelease``).

The same object answers in every backend: in one process for a simulation, or
rebuilt from ``export()`` for each message where a fresh process answers each
phase (a Flower ClientApp keeps the export on its own node).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from fedgen.transforms.secagg.client import SecAggClient
from fedgen.transforms.secagg.config import SecAggConfig
from fedgen.transforms.secagg.errors import SecAggError, ShareTamperedError
from fedgen.transforms.secagg.keys import Entropy
from fedgen.transforms.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
)
from fedgen.transforms.secagg.requests import (
    LoneRelease,
    LoneRequest,
    MaskRequest,
    ShareBatch,
    StartRound,
)


class SecAggClientHalf:
    """A client's secure-aggregation round (see module docstring).

    Args:
        client_id: the client's id (>= 0).
        round: the round its update was trained in.
        values: the update, flattened in the global state's order (float64).
        rounding_seed: seeds the stochastic rounding of the fixed-point encoding.
        entropy: key material source; ``os.urandom`` except in reproducible tests.
        noise_seed: seeds the DP noise of a lone release, secret to the client (derived
            from its own noise key); None: the client cannot release alone.
        lone_noise: the noise of a lone release, as the client's own recipe sets it: the
            vector's segments (one per tensor, their lengths) and each one's standard
            deviation; a request for any other is refused (None: never released alone).
    """

    def __init__(
        self,
        client_id: int,
        round: int,
        values: np.ndarray | None,
        rounding_seed: int,
        entropy: Entropy = os.urandom,
        noise_seed: int | None = None,
        lone_noise: tuple[tuple[int, ...], tuple[float, ...]] | None = None,
    ) -> None:
        self.client_id = client_id
        self.round = round
        self.rounding_seed = rounding_seed
        self.noise_seed = noise_seed
        self.lone_noise = (
            None
            if lone_noise is None
            else (tuple(int(n) for n in lone_noise[0]), tuple(float(x) for x in lone_noise[1]))
        )
        self._values = values
        self._entropy = entropy
        self._client: SecAggClient | None = None
        self._clip = 1.0

    @property
    def clipped(self) -> int:
        """Coordinates the fixed-point encoding clipped (0 before masking)."""
        return 0 if self._client is None else self._client.clipped

    def answer(self, request: object) -> object:
        """The protocol's reply to one of the server's requests.

        Raises:
            SecAggError: a request out of order, for another round, or malformed
                (``ShareTamperedError``, ``MalformedMessageError`` as the client
                detects them).
        """
        if isinstance(request, StartRound):
            return self._start(request)
        if isinstance(request, LoneRequest):
            return self._release_alone(request)
        client = self._require_client(type(request).__name__)
        if isinstance(request, KeyDirectory):
            return ShareBatch(self.client_id, self.round, tuple(client.share_keys(request)))
        if isinstance(request, MaskRequest):
            return self._mask(client, request)
        if isinstance(request, UnmaskRequest):
            return client.unmask(request)
        raise SecAggError(f"client {self.client_id}: no phase answers a {type(request).__name__}")

    def _start(self, request: StartRound) -> AdvertiseKeys:
        if self._client is not None:
            raise SecAggError(f"client {self.client_id}: the round was started twice")
        if request.round != self.round:
            raise ShareTamperedError(
                f"client {self.client_id}: asked to aggregate round {request.round} with the "
                f"update of round {self.round} (replayed); refusing"
            )
        if self._values is None or request.vector_length != self._values.shape[0] + 1:
            held = None if self._values is None else self._values.shape[0] + 1
            raise SecAggError(
                f"client {self.client_id}: the server's vector length {request.vector_length} "
                f"is not this update's ({held}); client and server built different models"
            )
        config = SecAggConfig(
            threshold=request.threshold,
            modulus_bits=request.modulus_bits,
            clip=request.clip,
            value_bits=request.value_bits,
            neighbours=request.neighbours,
            rounding=request.rounding,  # type: ignore[arg-type]  # checked by SecAggConfig
        )
        self._clip = config.clip
        self._client = SecAggClient(
            self.client_id,
            self.round,
            config.plan(request.num_clients),
            config.rounding,
            np.random.default_rng(self.rounding_seed),
            self._entropy,
        )
        return self._client.advertise_keys()

    def _mask(self, client: SecAggClient, request: MaskRequest) -> MaskedInput:
        if not (isinstance(request.weight, float) and 0.0 < request.weight <= 1.0):
            raise SecAggError(
                f"client {self.client_id}: weight {request.weight!r:.30} is not in (0, 1]"
            )
        if self._values is None:
            raise SecAggError(f"client {self.client_id}: its update was already masked")
        values = np.append(self._values * (request.weight / self._clip), request.weight)
        masked = client.masked_input(list(request.inbox), values)
        self._values = None  # the update is not needed again, so it is not kept
        return masked

    def _release_alone(self, request: LoneRequest) -> LoneRelease:
        """The update plus the noise the client's own recipe sets (the request's)."""
        if self._client is not None:
            raise SecAggError(
                f"client {self.client_id}: a lone release after the round's StartRound; "
                "a client alone is never masked"
            )
        if request.round != self.round:
            raise ShareTamperedError(
                f"client {self.client_id}: asked to release round {request.round} with the "
                f"update of round {self.round} (replayed); refusing"
            )
        if self._values is None:
            raise SecAggError(f"client {self.client_id}: its update was already sent")
        if self.noise_seed is None or self.lone_noise is None:
            raise SecAggError(
                f"client {self.client_id} cannot add the noise of a lone release itself (its "
                "recipe adds no noise on the server, or its noise would be root-seeded, which "
                "the server can regenerate); it will not send its update alone"
            )
        # Only the noise the client's own recipe sets, on its own layout: a server asking
        # for less gets nothing, nor one asking for more (two releases of one update
        # under two noise scales of the same draw would cancel it).
        segments, stds = self.lone_noise
        if request.stds != stds:
            raise SecAggError(
                f"client {self.client_id}: a lone release is sent with the noise its own "
                f"recipe sets (stds {stds!r:.80}); the request asked for {request.stds!r:.80}"
            )
        if request.segments != segments:
            raise SecAggError(
                f"client {self.client_id}: the lone request's segments do not cover its update "
                f"as it holds it ({segments!r:.80}); client and server built different models"
            )
        # torch's generator, as every other DP draw of fedgen (``noise_generator``).
        gen = torch.Generator().manual_seed(self.noise_seed)
        noise = torch.randn(self._values.shape[0], generator=gen, dtype=torch.float64).numpy()
        released = self._values + np.repeat(np.asarray(stds), segments) * noise
        self._values = None  # sent once: a second request gets nothing
        return LoneRelease(self.client_id, self.round, released)

    def _require_client(self, what: str) -> SecAggClient:
        if self._client is None:
            raise SecAggError(
                f"client {self.client_id}: a {what} before the round's StartRound; "
                "the server must open the round first"
            )
        return self._client

    # -- custody between messages --------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything to answer the next request in another process (see module doc)."""
        return {
            "client_id": self.client_id,
            "round": self.round,
            "rounding_seed": self.rounding_seed,
            "clip": self._clip,
            "values": self._values,
            "client": None if self._client is None else self._client.export(),
            "noise_seed": self.noise_seed,
            "lone_noise": self.lone_noise,
        }

    @classmethod
    def restore(cls, state: dict[str, Any], entropy: Entropy = os.urandom) -> SecAggClientHalf:
        """The half ``export`` described (raises ``SecAggError`` if it is malformed)."""
        try:
            half = cls(
                int(state["client_id"]),
                int(state["round"]),
                state["values"],
                int(state["rounding_seed"]),
                entropy,
                None if state.get("noise_seed") is None else int(state["noise_seed"]),
                state.get("lone_noise"),
            )
            half._clip = float(state["clip"])
            if state["client"] is not None:
                half._client = SecAggClient.restore(
                    state["client"], np.random.default_rng(half.rounding_seed), entropy
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise SecAggError(f"a malformed secure-aggregation client state: {exc!r:.200}") from exc
        return half
