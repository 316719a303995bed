"""The server's half of secure aggregation: it routes, sums and unmasks, and sees no update.

Bonawitz et al. 2017 (Fig. 4, honest-but-curious variant) with the neighbour
graph of Bell et al. 2020 (SecAgg+). What this object ever holds is visible in
its fields: clients' public keys, the public neighbour graph, which clients
reached which phase, the running sum of *masked* vectors (bytes from the wire,
summed modulo 2^k) and the shares clients reveal in the unmasking phase. It is
never given a client object or an unmasked vector: every method takes messages
(see ``messages.py``) and nothing else.

Unmasking: for each survivor u it rebuilds ``b_u`` from ``t`` shares and
subtracts ``PRG(b_u)``; for each client u that shared keys but sent no masked
input it rebuilds ``s_u^SK`` (checked against u's advertised public key),
recomputes ``s_uv`` with each surviving neighbour v and removes the pairwise
mask v added. Pairwise masks between two survivors cancel in the sum.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedgen.transforms.secagg.client import (
    PAIRWISE_MASK,
    SELF_MASK,
    mask_sign,
    shamir_point,
)
from fedgen.transforms.secagg.config import SecAggPlan
from fedgen.transforms.secagg.errors import (
    MalformedMessageError,
    SecAggRoundFailedError,
    ShareTamperedError,
)
from fedgen.transforms.secagg.fixed_point import from_wire, modulus_mask, word_bytes
from fedgen.transforms.secagg.keys import agree, derive
from fedgen.transforms.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    is_id,
    problem,
)
from fedgen.transforms.secagg.prg import expand_mask
from fedgen.transforms.secagg.shamir import reconstruct, share_from_bytes


class SecAggServer:
    """The server of one round (see module docstring).

    Args:
        round: the round; messages of another round are rejected.
        plan: the round's resolved configuration.
        graph: the public neighbour graph ``{client: neighbours}``.
        vector_length: coordinates of every masked vector.
        threshold_hint: how to lower the threshold, for error messages.
    """

    def __init__(
        self,
        round: int,
        plan: SecAggPlan,
        graph: Mapping[int, tuple[int, ...]],
        vector_length: int,
        threshold_hint: str = "lower SecAggConfig.threshold",
    ) -> None:
        self.round = round
        self.plan = plan
        self.graph = {u: tuple(vs) for u, vs in graph.items()}
        self.vector_length = vector_length
        self._hint = threshold_hint
        self.public_keys: dict[int, tuple[bytes, bytes]] = {}  # U1
        self.shared: set[int] = set()  # U2: sent their encrypted shares
        self.masked: set[int] = set()  # U3: sent a masked input
        self.masked_sum = np.zeros(vector_length, dtype=np.uint64)
        #: Clients treated as dropouts because a message of theirs was unusable, and why.
        self.refused: dict[int, str] = {}

    def _check_round(self, who: int, round: int, what: str) -> None:
        if round != self.round:
            raise ShareTamperedError(
                f"server, round {self.round}: {what} of client {who} carries round {round} "
                "(replayed); the round is aborted"
            )

    def collect_keys(self, adverts: Sequence[AdvertiseKeys]) -> dict[int, KeyDirectory]:
        """Phase 0: store public keys; give each client its neighbours' keys.

        A client whose advertisement is malformed or whose keys are not usable X25519
        points is left out of U1: a dropout, as if it had sent nothing.
        """
        seen: set[int] = set()
        for a in adverts:
            why = problem(a, AdvertiseKeys)
            if why is not None and not is_id(getattr(a, "client_id", None)):
                continue  # unattributable: its sender is a client that sent nothing
            if a.client_id not in self.graph or a.client_id in seen:
                raise ShareTamperedError(
                    f"server: keys from unknown or repeated client {a.client_id}; round aborted"
                )
            seen.add(a.client_id)
            if why is None:
                self._check_round(a.client_id, a.round, "advertised keys")
                why = _unusable_keys(a)
            if why is not None:
                self.refused[a.client_id] = f"advertised keys: {why}"
                continue
            self.public_keys[a.client_id] = (a.encryption_key, a.mask_key)
        return {
            u: KeyDirectory(
                self.round, {v: self.public_keys[v] for v in self.graph[u] if v in self.public_keys}
            )
            for u in self.public_keys
        }

    def route_shares(self, shares: Sequence[EncryptedShare]) -> dict[int, list[EncryptedShare]]:
        """Phase 1: forward each ciphertext to its receiver; the senders form U2.

        A sender whose shares are malformed, go to a client not its neighbour in U1, or
        are not exactly one to each neighbour in U1, is left out of U2 and none of its
        shares is forwarded: a dropout, whose neighbours then hold no share of it and add
        no mask with it (``run_secure_sum`` passes only shares that name the client that
        sent them, so one client cannot drop another). A share that cannot be attributed
        to a sender aborts the round.
        """
        sent: dict[int, list[EncryptedShare]] = defaultdict(list)
        for s in shares:
            why = problem(s, EncryptedShare)
            if why is not None and not is_id(getattr(s, "sender", None)):
                raise MalformedMessageError(
                    f"server, round {self.round}: a share message without a valid sender "
                    f"({why}); its shares cannot be routed, round aborted"
                )
            if why is not None:
                self.refused[s.sender] = f"encrypted share: {why}"
                continue
            self._check_round(s.sender, s.round, "an encrypted share")
            if s.sender not in self.public_keys or s.receiver not in self.graph.get(s.sender, ()):
                self.refused[s.sender] = (
                    f"encrypted share to client {s.receiver}, not its neighbour in U1"
                )
                continue
            if any(m.receiver == s.receiver for m in sent[s.sender]):
                self.refused[s.sender] = f"two encrypted shares to client {s.receiver}"
                continue
            sent[s.sender].append(s)
        inbox: dict[int, list[EncryptedShare]] = defaultdict(list)
        for sender, messages in sorted(sent.items()):
            expected = {v for v in self.graph[sender] if v in self.public_keys}
            if sender in self.refused or {m.receiver for m in messages} != expected:
                self.refused.setdefault(sender, "encrypted shares: not one to each neighbour")
                continue
            self.shared.add(sender)
            for m in messages:
                inbox[m.receiver].append(m)
        return {u: inbox.get(u, []) for u in sorted(self.shared)}

    def _check_enough(self, alive: set[int], stage: str) -> None:
        """Every secret the server must rebuild needs ``t`` live share holders."""
        t = self.plan.threshold
        if self.plan.neighbours is None:
            if len(alive) < t:
                raise SecAggRoundFailedError(
                    f"secure aggregation round {self.round} fails: only {len(alive)} of "
                    f"{self.plan.num_clients} clients survived {stage}, threshold {t}; "
                    f"{self._hint}, or sample more clients per round / reduce dropouts"
                )
            return
        for u in sorted(self.shared):
            holders = {*self.graph[u], u} & alive & self.shared
            if len(holders) < t:
                raise SecAggRoundFailedError(
                    f"secure aggregation round {self.round} fails: client {u} has only "
                    f"{len(holders)} of its {len(self.graph[u]) + 1} share holders left after "
                    f"{stage}, threshold {t}; {self._hint}, or raise neighbours / "
                    "reduce dropouts"
                )

    def collect_masked(self, inputs: Sequence[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Phase 2: sum the masked vectors (U3); ask each survivor for the shares needed."""
        k = self.plan.modulus_bits
        expected = self.vector_length * word_bytes(k)
        seen: set[int] = set()
        for m in inputs:
            why = problem(m, MaskedInput)
            if why is not None and not is_id(getattr(m, "client_id", None)):
                continue  # unattributable: its sender is a client that sent nothing
            if why is None:
                self._check_round(m.client_id, m.round, "a masked input")
            if m.client_id not in self.shared or m.client_id in seen:
                raise ShareTamperedError(
                    f"server: masked input from client {m.client_id} that did not share keys "
                    "or sent twice (replayed); round aborted"
                )
            seen.add(m.client_id)
            if why is None and len(m.payload) != expected:
                why = f"{len(m.payload)} bytes, expected {expected}"
            if why is not None:
                # Not in U3: a dropout of this phase, whose masks unmasking removes.
                self.refused[m.client_id] = f"masked input: {why}"
                continue
            self.masked_sum += from_wire(m.payload, k)
            self.masked.add(m.client_id)
        self.masked_sum &= modulus_mask(k)
        self._check_enough(self.masked, "masked-input collection")
        dropped = self.shared - self.masked
        return {
            v: UnmaskRequest(
                self.round,
                tuple(sorted({v, *(set(self.graph[v]) & self.masked)})),
                tuple(sorted(set(self.graph[v]) & dropped)),
            )
            for v in sorted(self.masked)
        }

    def unmask(self, responses: Sequence[UnmaskResponse]) -> np.ndarray:
        """Phase 3: rebuild secrets from the shares given and remove every mask.

        Returns the sum over survivors of their fixed-point vectors, as
        ``uint64`` residues modulo ``2^k``.
        """
        k, t = self.plan.modulus_bits, self.plan.threshold
        dropped = self.shared - self.masked
        seed_shares: dict[int, dict[int, int]] = defaultdict(dict)
        key_shares: dict[int, dict[int, int]] = defaultdict(dict)
        responders, seen = set(), set()
        for r in responses:
            why = problem(r, UnmaskResponse)
            if why is not None and not is_id(getattr(r, "client_id", None)):
                continue  # unattributable: as if its sender had not answered
            if why is None:
                self._check_round(r.client_id, r.round, "an unmask response")
            if r.client_id not in self.masked or r.client_id in seen:
                raise ShareTamperedError(
                    f"server: unmask response from client {r.client_id} that sent no masked "
                    "input or answered twice; round aborted"
                )
            seen.add(r.client_id)
            if why is not None:
                continue  # a response the server cannot read counts as none
            if set(r.self_mask_shares) & set(r.key_shares):
                # Both shares of one client would unmask its update: neither is used, and
                # the response counts as none (one client cannot abort the round).
                continue
            try:
                seeds = {u: share_from_bytes(d) for u, d in r.self_mask_shares.items()}
                keys = {u: share_from_bytes(d) for u, d in r.key_shares.items()}
            except MalformedMessageError:
                continue  # a share outside the field: as if the client had not answered
            responders.add(r.client_id)
            x = shamir_point(r.client_id)
            for owner, value in seeds.items():
                if owner in self.masked:
                    seed_shares[owner][x] = value
            for owner, value in keys.items():
                if owner in dropped:
                    key_shares[owner][x] = value
        self._check_enough(responders, "unmasking")
        for what, owners, held in (
            ("self-mask seed", self.masked, seed_shares),
            ("mask key", dropped, key_shares),
        ):
            for u in sorted(owners):
                if len(held[u]) < t:
                    raise SecAggRoundFailedError(
                        f"secure aggregation round {self.round} fails: only {len(held[u])} "
                        f"shares of client {u}'s {what} arrived, threshold {t}; {self._hint}, "
                        "or sample more clients per round / reduce dropouts"
                    )
        total = self.masked_sum
        n = self.vector_length
        for u in sorted(self.masked):
            b_u = _secret_bytes(reconstruct(seed_shares[u], t), u, self.round)
            total -= expand_mask(derive(b_u, SELF_MASK, self.round, u), n, k)
        for u in sorted(dropped):
            secret = _secret_bytes(reconstruct(key_shares[u], t), u, self.round)
            s_sk = X25519PrivateKey.from_private_bytes(secret)
            if s_sk.public_key().public_bytes_raw() != self.public_keys[u][1]:
                raise ShareTamperedError(
                    f"round {self.round}: the key of dropped client {u} rebuilt from its shares "
                    "does not match its advertised public key (a share was altered); round aborted"
                )
            for v in self.graph[u]:
                if v not in self.masked:
                    continue
                seed = agree(s_sk, self.public_keys[v][1], PAIRWISE_MASK, self.round, u, v)
                mask = expand_mask(seed, n, k)
                # v added mask_sign(v, u) * PRG(s_vu); take it back out.
                if mask_sign(v, u) > 0:
                    total -= mask
                else:
                    total += mask
        return total & modulus_mask(k)


def _unusable_keys(advert: AdvertiseKeys) -> str | None:
    """Why the advertised keys are no X25519 public keys a peer could agree with, or None.

    A low-order point gives every peer the all-zero secret: ``cryptography`` refuses the
    exchange, which would abort each honest neighbour; the server drops the client instead.
    """
    for name in ("encryption_key", "mask_key"):
        try:
            X25519PrivateKey.generate().exchange(
                X25519PublicKey.from_public_bytes(getattr(advert, name))
            )
        except ValueError as exc:
            return f"{name} is not a usable X25519 key ({exc})"
    return None


def _secret_bytes(value: int, owner: int, round: int) -> bytes:
    """A rebuilt 32-byte secret; a field element past 2^256 can only come from a bad share."""
    if value >= 1 << 256:
        raise ShareTamperedError(
            f"round {round}: a secret of client {owner} rebuilt from its shares is not 32 bytes "
            "(a share was altered); round aborted"
        )
    return value.to_bytes(32, "big")
