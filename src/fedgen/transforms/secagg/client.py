"""One client's half of secure aggregation, as a state machine over the protocol's phases.

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving
Machine Learning", Fig. 4, honest-but-curious variant), with the neighbour
graph of Bell et al. 2020 (SecAgg+): advertise two public keys -> send
encrypted Shamir shares of the mask-key secret ``s_u^SK`` and the self-mask
seed ``b_u`` to each neighbour -> send the update masked as
``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv)`` -> reveal, for each neighbour,
either its ``b`` share (it survived) or its ``s^SK`` share (it dropped), never
both. Phases run in order; calling one out of order is an error.

Beyond Fig. 4, each encrypted share carries a digest of the pair's mask public keys as
its sender saw them (``mask_key_view``), so a key directory altered in transit aborts
the round instead of silently corrupting the sum. A server that actively replaces both
keys of a pair (a full man-in-the-middle) is outside this honest-but-curious model, as
in the paper without its PKI of signed keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedgen.transforms.secagg import share_encryption
from fedgen.transforms.secagg.config import SecAggPlan
from fedgen.transforms.secagg.errors import (
    SecAggError,
    SecAggRoundFailedError,
    ShareTamperedError,
)
from fedgen.transforms.secagg.fixed_point import encode, modulus_mask, to_wire
from fedgen.transforms.secagg.keys import (
    Entropy,
    agree,
    derive,
    generate_private_key,
    public_bytes,
)
from fedgen.transforms.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    check,
)
from fedgen.transforms.secagg.prg import expand_mask
from fedgen.transforms.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split

#: HKDF purposes; the server derives the same keys from rebuilt secrets.
PAIRWISE_MASK = "pairwise-mask"
SELF_MASK = "self-mask"
SHARE_ENCRYPTION = "share-encryption"

_PLAINTEXT = struct.Struct(">QQ")
#: Length of the mask-key view a share carries (a SHA-256 digest).
VIEW_BYTES = 32


def mask_key_view(sender_mask_key: bytes, receiver_mask_key: bytes, round: int) -> bytes:
    """What a share's sender believes the pair's two mask public keys are, as a digest.

    The share travels encrypted and authenticated under the pair's encryption keys, so
    its receiver can compare: a mask key altered in one client's key directory (by a
    faulty server or an unauthenticated relay) would otherwise make the pair's masks
    differ, and the round would complete with a wrong sum. An encryption key altered
    there already fails the share's authentication.
    """
    return hashlib.sha256(
        b"fedgen-secagg-mask-key-view"
        + round.to_bytes(8, "big")
        + sender_mask_key
        + receiver_mask_key
    ).digest()


def shamir_point(client_id: int) -> int:
    """The field point of ``client_id``'s shares (ids start at 0; the point 0 is the secret)."""
    return client_id + 1


def mask_sign(owner: int, peer: int) -> int:
    """+1 if ``owner`` adds ``PRG(s_owner,peer)``, -1 if it subtracts it; opposite for ``peer``."""
    return 1 if owner < peer else -1


class SecAggClient:
    """A client's protocol state for one round (see module docstring).

    Args:
        client_id: the client's id (>= 0).
        round: the round; every message and key is bound to it.
        plan: the round's resolved configuration.
        rounding: fixed-point rounding, ``"stochastic"`` or ``"nearest"``.
        rng: seeded generator for stochastic rounding (not for keys).
        entropy: source of key material; ``os.urandom`` unless a test needs it reproducible.
    """

    def __init__(
        self,
        client_id: int,
        round: int,
        plan: SecAggPlan,
        rounding: Literal["stochastic", "nearest"],
        rng: np.random.Generator,
        entropy: Entropy = os.urandom,
    ) -> None:
        if client_id < 0 or round < 0:
            raise SecAggError(f"client id and round must be >= 0, got {client_id}, {round}")
        self.client_id = client_id
        self.round = round
        self.plan = plan
        self.rounding: Literal["stochastic", "nearest"] = rounding
        self.clipped = 0
        self._rng = rng
        self._entropy = entropy
        self._enc_key = generate_private_key(entropy)  # c_u
        self._mask_key = generate_private_key(entropy)  # s_u
        self._phase = "advertise_keys"
        self._neighbours: dict[int, tuple[bytes, bytes]] = {}
        self._self_seed = b""  # b_u
        # owner -> (share of s_owner^SK, share of b_owner) held by this client
        self._held: dict[int, tuple[int, int]] = {}

    def _advance(self, expected: str, following: str) -> None:
        if self._phase != expected:
            raise SecAggError(
                f"client {self.client_id}: phase {expected!r} called while in {self._phase!r}; "
                "run advertise_keys, share_keys, masked_input, unmask in this order"
            )
        self._phase = following

    def advertise_keys(self) -> AdvertiseKeys:
        """Phase 0: the two public keys of this round."""
        self._advance("advertise_keys", "share_keys")
        return AdvertiseKeys(
            self.client_id, self.round, public_bytes(self._enc_key), public_bytes(self._mask_key)
        )

    def share_keys(self, directory: KeyDirectory) -> list[EncryptedShare]:
        """Phase 1: Shamir-share ``s_u^SK`` and ``b_u`` among self and neighbours; encrypt each."""
        self._advance("share_keys", "masked_input")
        check(directory, KeyDirectory, f"client {self.client_id}")
        if directory.round != self.round:
            raise ShareTamperedError(
                f"client {self.client_id}: key directory of round {directory.round} "
                f"received in round {self.round} (replayed); the round is aborted"
            )
        keys = {v: k for v, k in directory.keys.items() if v != self.client_id}
        if len(set(map(tuple, keys.values()))) != len(keys):
            raise ShareTamperedError("two neighbours advertised the same public keys (replayed)")
        self._neighbours = keys
        holders = sorted([self.client_id, *keys])
        t = self.plan.threshold
        if len(holders) < t:
            raise SecAggRoundFailedError(
                f"round {self.round}: client {self.client_id} has {len(holders)} share holders "
                f"(itself and its neighbours), threshold {t}; lower the threshold or sample "
                "more clients"
            )
        self._self_seed = self._entropy(32)
        points = [shamir_point(h) for h in holders]
        key_secret = int.from_bytes(self._mask_key.private_bytes_raw(), "big")
        key_shares = split(key_secret, t, points, self._entropy)
        seed_shares = split(int.from_bytes(self._self_seed, "big"), t, points, self._entropy)
        me = shamir_point(self.client_id)
        self._held[self.client_id] = (key_shares[me], seed_shares[me])
        out = []
        own_mask_key = public_bytes(self._mask_key)
        for v, (c_pk, s_pk) in sorted(keys.items()):
            key = agree(self._enc_key, c_pk, SHARE_ENCRYPTION, self.round, self.client_id, v)
            x = shamir_point(v)
            plaintext = (
                _PLAINTEXT.pack(self.client_id, v)
                + mask_key_view(own_mask_key, s_pk, self.round)
                + share_to_bytes(key_shares[x])
                + share_to_bytes(seed_shares[x])
            )
            ciphertext = share_encryption.encrypt(
                key, plaintext, self.round, self.client_id, v, self._entropy
            )
            out.append(EncryptedShare(self.client_id, v, self.round, ciphertext))
        return out

    def _open(self, msg: EncryptedShare) -> None:
        check(msg, EncryptedShare, f"client {self.client_id}")
        if msg.receiver != self.client_id or msg.round != self.round:
            raise ShareTamperedError(
                f"client {self.client_id} in round {self.round} got a share addressed to client "
                f"{msg.receiver} in round {msg.round} (misrouted or replayed); round aborted"
            )
        if msg.sender not in self._neighbours or msg.sender in self._held:
            raise ShareTamperedError(
                f"client {self.client_id}: unexpected or duplicate share from client "
                f"{msg.sender} in round {self.round} (replayed or swapped); round aborted"
            )
        c_pk = self._neighbours[msg.sender][0]
        key = agree(self._enc_key, c_pk, SHARE_ENCRYPTION, self.round, self.client_id, msg.sender)
        plaintext = share_encryption.decrypt(
            key, msg.ciphertext, self.round, msg.sender, self.client_id
        )
        head = _PLAINTEXT.size + VIEW_BYTES
        if len(plaintext) != head + 2 * SHARE_BYTES or _PLAINTEXT.unpack(
            plaintext[: _PLAINTEXT.size]
        ) != (msg.sender, self.client_id):
            raise ShareTamperedError(
                f"share from client {msg.sender} to {self.client_id} names other clients inside"
            )
        expected = mask_key_view(
            self._neighbours[msg.sender][1], public_bytes(self._mask_key), self.round
        )
        if plaintext[_PLAINTEXT.size : head] != expected:
            raise ShareTamperedError(
                f"round {self.round}: clients {msg.sender} and {self.client_id} were given "
                "different mask keys for each other (a key directory altered in transit); "
                "their masks would not cancel, so the round is aborted - check the transport "
                "between clients and server"
            )
        key_share = share_from_bytes(plaintext[head : head + SHARE_BYTES])
        seed_share = share_from_bytes(plaintext[head + SHARE_BYTES :])
        self._held[msg.sender] = (key_share, seed_share)

    def masked_input(self, inbox: Sequence[EncryptedShare], values: np.ndarray) -> MaskedInput:
        """Phase 2: decrypt the shares received, then send ``values`` encoded and masked.

        ``values`` is the client's vector already divided by the clip bound
        (float64, coordinates meant to lie in [-1, 1]).
        """
        self._advance("masked_input", "unmask")
        for msg in inbox:
            self._open(msg)
        k = self.plan.modulus_bits
        y, self.clipped = encode(values, self.plan.levels, k, self.rounding, self._rng)
        length = y.shape[0]
        seed = derive(self._self_seed, SELF_MASK, self.round, self.client_id)
        y += expand_mask(seed, length, k)
        # Pairwise masks only with neighbours whose shares arrived (U2): the
        # server can remove a mask of a dropout only if it holds its shares.
        for v in sorted(self._held):
            if v == self.client_id:
                continue
            s_pk = self._neighbours[v][1]
            pair_seed = agree(self._mask_key, s_pk, PAIRWISE_MASK, self.round, self.client_id, v)
            mask = expand_mask(pair_seed, length, k)
            if mask_sign(self.client_id, v) > 0:
                y += mask
            else:
                y -= mask  # uint64 wraps modulo 2^64, a multiple of 2^k
        y &= modulus_mask(k)
        return MaskedInput(self.client_id, self.round, to_wire(y, k))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Phase 3: reveal ``b`` shares of survivors and ``s^SK`` shares of dropouts, never both."""
        self._advance("unmask", "done")
        check(request, UnmaskRequest, f"client {self.client_id}")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if request.round != self.round:
            raise ShareTamperedError(
                f"client {self.client_id}: unmask request of round {request.round} in round "
                f"{self.round} (replayed); round aborted"
            )
        if survivors & dropped or self.client_id not in survivors:
            raise ShareTamperedError(
                f"client {self.client_id}: inconsistent unmask request (a client listed as "
                "both survivor and dropout, or this client as a dropout); refusing to reveal"
            )
        alive = survivors & set(self._held)
        if len(alive) < self.plan.threshold:
            raise SecAggRoundFailedError(
                f"round {self.round}: client {self.client_id} sees only {len(alive)} surviving "
                f"share holders, threshold {self.plan.threshold}; refusing to unmask"
            )
        seeds = {u: share_to_bytes(self._held[u][1]) for u in sorted(alive)}
        keys = {u: share_to_bytes(self._held[u][0]) for u in sorted(dropped & set(self._held))}
        return UnmaskResponse(self.client_id, self.round, seeds, keys)

    # -- custody between messages --------------------------------------------------

    def export(self) -> dict[str, object]:
        """This client's protocol state as plain values (bytes, ints, strings).

        For a client that answers each phase in a fresh process (a Flower ClientApp)
        and keeps its state on its own node between phases; it holds private keys,
        so it never leaves the client. The rounding generator is not kept: it is
        rebuilt from its seed and only drawn from in ``masked_input``.
        """
        return {
            "client_id": self.client_id,
            "round": self.round,
            "plan": dataclasses.asdict(self.plan),
            "rounding": self.rounding,
            "clipped": self.clipped,
            "phase": self._phase,
            "enc_key": self._enc_key.private_bytes_raw(),
            "mask_key": self._mask_key.private_bytes_raw(),
            "self_seed": self._self_seed,
            "neighbours": {v: [c, s] for v, (c, s) in self._neighbours.items()},
            "held": {u: [share_to_bytes(k), share_to_bytes(b)] for u, (k, b) in self._held.items()},
        }

    @classmethod
    def restore(
        cls, state: dict[str, Any], rng: np.random.Generator, entropy: Entropy = os.urandom
    ) -> SecAggClient:
        """The client ``export`` described (raises ``SecAggError`` if it is malformed)."""
        try:
            client = cls(
                int(state["client_id"]),
                int(state["round"]),
                SecAggPlan(**state["plan"]),
                state["rounding"],
                rng,
                entropy,
            )
            client.clipped = int(state["clipped"])
            client._phase = str(state["phase"])
            client._enc_key = X25519PrivateKey.from_private_bytes(state["enc_key"])
            client._mask_key = X25519PrivateKey.from_private_bytes(state["mask_key"])
            client._self_seed = bytes(state["self_seed"])
            client._neighbours = {
                int(v): (bytes(c), bytes(s)) for v, (c, s) in state["neighbours"].items()
            }
            client._held = {
                int(u): (share_from_bytes(bytes(k)), share_from_bytes(bytes(b)))
                for u, (k, b) in state["held"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise SecAggError(f"a malformed secure-aggregation client state: {exc!r:.200}") from exc
        return client
