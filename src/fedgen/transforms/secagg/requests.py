"""The server's requests that frame the protocol's phases, and the client's share batch.

Bonawitz et al. (2017) describe what each side computes; a deployment also needs
the envelopes that carry it. The server opens a client's round with a
``StartRound`` (the public configuration, the cohort size and the vector length,
so the client resolves the same plan), asks for its masked input with a
``MaskRequest`` (the encrypted shares addressed to it and its public weight), and
the client answers the key directory with one ``ShareBatch``. Sizes count as in
``messages.py``.

A round left with one client cannot be summed securely: the sum would be its update.
Under client-level DP the server instead sends that client a ``LoneRequest`` with the
noise its own server halves would have added to the sum, and the client answers with
a ``LoneRelease``: its update with that noise already in it, drawn with the client's
own key. The server then sees only what the round releases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedgen.transforms.secagg.messages import ID_BYTES, ROUND_BYTES, EncryptedShare

#: threshold, modulus bits, clip, value bits, neighbours, rounding, cohort, length.
_START_BYTES = ROUND_BYTES + 8 + 4 + 8 + 4 + 4 + 1 + ID_BYTES + 8


@dataclass(frozen=True)
class StartRound:
    """Server -> client, before phase 0: the round's public configuration."""

    round: int
    num_clients: int
    vector_length: int
    threshold: float
    modulus_bits: int
    clip: float
    value_bits: int | None
    neighbours: int | None
    rounding: str

    @property
    def nbytes(self) -> int:
        return _START_BYTES


@dataclass(frozen=True)
class ShareBatch:
    """Client -> server, phase 1: the client's encrypted shares, one per neighbour."""

    client_id: int
    round: int
    shares: tuple[EncryptedShare, ...]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shares)


@dataclass(frozen=True)
class MaskRequest:
    """Server -> client, phase 2: the shares addressed to the client and its weight.

    ``weight`` is the client's weight over the round's public bound, in (0, 1]
    (example counts are public in fedgen); the client scales its update by it.
    """

    round: int
    inbox: tuple[EncryptedShare, ...]
    weight: float

    @property
    def nbytes(self) -> int:
        return ROUND_BYTES + 8 + sum(s.nbytes for s in self.inbox)


@dataclass(frozen=True)
class LoneRequest:
    """Server -> client, instead of phase 0 when the client is the round's only one.

    The vector is cut into ``segments`` (lengths, in the layout's order); the client
    adds Gaussian noise of standard deviation ``stds[i]`` to every coordinate of
    segment i of its update, in the units of the round's sum (the strategy divides by
    its denominator afterwards, as it divides a secure sum; the weight is 1, as
    client-level DP's unweighted mean has it). The client checks ``stds`` against its
    own recipe's.
    """

    round: int
    segments: tuple[int, ...]
    stds: tuple[float, ...]

    @property
    def nbytes(self) -> int:
        return ROUND_BYTES + 12 * len(self.segments)


@dataclass(frozen=True)
class LoneRelease:
    """Client -> server: the lone client's update with the round's noise in it."""

    client_id: int
    round: int
    values: np.ndarray

    @property
    def nbytes(self) -> int:
        return ID_BYTES + ROUND_BYTES + 8 * int(self.values.size)
