"""Alternating-subspace low rank: PowerSGD's power iteration spread over rounds.

PowerSGD (Vogels et al. 2019) compresses each matrix ``M`` of an update to rank ``r``
with one step of subspace iteration: ``P = M Q`` with the previous step's ``Q``
(warm start), ``P`` orthonormalized, then ``Q = M^T P``; both products are summed
over workers, so the sum of compressed updates is itself rank ``r``. Here the two
halves of that step fall in different messages, one factor each:

- a round's basis ``B`` (one side of each matrix, ``n x r`` on the right or ``m x r``
  on the left) is known to the server and every client before the round;
- a client sends only the coefficients of its update in that basis, ``C = M B
  (B^T B)^+`` (``m x r`` for a right basis), so the server decodes ``C B^T``: the
  orthogonal projection of ``M`` onto the matrices whose rows lie in ``span(B)``.
  Every client's decoded update, and so the mean, lies in that span;
- the broadcast of the next model delta ``D`` (the mean plus what earlier broadcasts
  left out, ``fedgen.engine.downlink``) is projected the same way, ``F = D B (B^T
  B)^+``; ``F = Q R`` (QR), ``Q`` is rounded to ``bits`` and ``R`` refitted to the
  rounded ``Q``; the broadcast sends ``Q`` and ``R`` (``r x r``, float32), and
  everyone applies ``Q R B^T``. ``Q`` is the next round's basis, on the other side:
  power iteration on the stream of updates, as PowerSGD's warm start is.

A mean of replies in one basis is exactly representable in it, so the broadcast
loses only what quantization and earlier rounds left, where sending each side's
best rank-r factors (``lowrank``) both ways truncates the sum of the clients'
rank-r replies again; and each message carries one factor instead of two, so the
same bytes buy about twice the rank. The first basis (version -1 of the downlink)
is a random orthonormal one drawn from the run's downlink seed, as PowerSGD starts
from a random ``Q``.

The basis lives in the downlink's shared state (server) and in each client's
private state (``SHARED_PREFIX``), so this codec needs ``federation.downlink:
subspace``; the broadcast half is called with ``ctx.client_id`` None (the server
encodes the delta every client receives), the reply half with a client's id.
Tensors that would not gain on average (vectors, ``r (m + n) >= 2 m n``) travel value
by value in ``bits``, as in ``lowrank``. With ``error_feedback`` a client keeps what its reply
left out (the projection's remainder and the rounding) and adds it to its next
update; the projection is orthogonal, so the remainder never exceeds the update.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedgen.registry import TRANSFORMS
from fedgen.seeding import torch_generator
from fedgen.transforms.base import FREE_SHAPE, PRIVATE_PREFIX, TransformContext
from fedgen.transforms.bitpack import pack, packed_size, unpack
from fedgen.transforms.codec import (
    CODEC_PREFIX,
    check_scales,
    coded_keys,
    expect,
    passed_through,
    whole_update_keys,
)
from fedgen.transforms.lowrank import _DTYPES, _PACKED, _TOPS, LowRank
from fedgen.transforms.sparsify import keep_residual, with_residual
from fedgen.types import StateDict

#: Where the round's basis of each matrix lives (the server's downlink shared state, a
#: client's private state): ``SHARED_PREFIX + "left/" + key`` (``m x r``) or
#: ``SHARED_PREFIX + "right/" + key`` (``n x r``), one of the two per matrix.
SHARED_PREFIX = PRIVATE_PREFIX + "subspace/" + FREE_SHAPE
VALUES = CODEC_PREFIX + "subspace/values"
SCALES = CODEC_PREFIX + "subspace/scales"
#: The broadcast's ``R`` of every factored matrix in turn (float32, ``r x r`` each).
COEFS = CODEC_PREFIX + "subspace/coefs"
_SIDES = ("left", "right")


@TRANSFORMS.register("subspace")
class Subspace(LowRank):
    """Each matrix of an update as its coefficients in the round's shared rank-``rank`` basis.

    Args:
        rank: the basis' columns (a matrix of lower rank uses its own).
        bits: 8 or 4 (integer levels with a float32 scale per column or bucket), 16
            (float16) or 32.
        bucket_size: values of a tensor sent whole that share one scale.
        error_feedback: keep what a reply left out in the client's private state (the
            broadcast has its own, on the server: there it must be off).
    """

    codec_name = "subspace"
    shared_prefix = SHARED_PREFIX

    class Params(BaseModel):
        """The recipe's ``params`` of a ``subspace`` transform (see Args)."""

        model_config = ConfigDict(extra="forbid")

        rank: int = Field(4, ge=1)
        bits: Literal[4, 8, 16, 32] = 4
        bucket_size: int = Field(2048, ge=1)
        error_feedback: bool = True

    def __init__(
        self,
        rank: int = 4,
        bits: Literal[4, 8, 16, 32] = 4,
        bucket_size: int = 2048,
        error_feedback: bool = True,
    ) -> None:
        if bits not in (4, 8, 16, 32):
            raise ValueError(f"subspace bits must be 4, 8, 16 or 32, got {bits}")
        super().__init__(rank, bits, bucket_size, error_feedback)

    @property
    def dp_compatible(self) -> bool:
        """Rounding, the residual and the broadcast's refit can exceed a clip bound."""
        return False

    def rank_of(self, shape: torch.Size, key: str = "") -> int:
        """The rank a tensor of ``shape`` is coded at (one for every tensor: ``key`` is
        not read); 0: sent value by value.

        A message carries one side's coefficients, ``m x r`` and ``n x r`` in turn, so a
        matrix gains on average whenever ``r (m + n) < 2 m n``: a 10 x 3136 label
        embedding at rank 10 sends 100 numbers one round and 31,360 the next, against
        31,360 every round whole (``lowrank``'s two factors gain only if ``r (m + n) <
        m n``)."""
        if len(shape) < 2 or not math.prod(shape):
            return 0
        m = shape[0]
        n = math.prod(shape) // m
        r = min(self.rank, m, n)
        return r if r * (m + n) < 2 * m * n else 0

    def initial_shared(self, reference: StateDict, seed: int) -> StateDict:
        """Version -1's basis: a random orthonormal right basis per factored matrix, drawn
        from ``seed`` (the downlink's), so the server and every client draw the same."""
        shared: StateDict = {}
        for key in coded_keys(reference):
            shape = reference[key].shape
            rank = self.rank_of(shape)
            if rank:
                n = math.prod(shape) // shape[0]
                gen = torch_generator(seed, "subspace", key)
                q, _ = torch.linalg.qr(torch.randn(n, rank, generator=gen))
                shared[SHARED_PREFIX + "right/" + key] = q.contiguous()
        return shared

    def check_shared(self, shared: StateDict, reference: StateDict) -> None:
        """Every factored matrix of ``reference`` has one basis of its shape in ``shared``,
        and nothing else is there."""
        factored = [k for k in coded_keys(reference) if self.rank_of(reference[k].shape)]
        for key in factored:
            self.layout(key, reference[key].shape, shared)
        if len(shared) != len(factored):
            raise ValueError(
                f"{len(shared)} shared bases for {len(factored)} factored matrices: they "
                "belong to another model or rank"
            )

    def basis(self, key: str, store: StateDict | None) -> tuple[str, torch.Tensor]:
        """The side (``left`` / ``right``) and basis of matrix ``key`` this round.

        Raises:
            ValueError: no basis is kept for it (no ``federation.downlink: subspace``).
        """
        if store is not None:
            for side in _SIDES:
                found = store.get(SHARED_PREFIX + side + "/" + key)
                if found is not None:
                    return side, found
        raise ValueError(
            f"{key}: no subspace basis for this round; the basis comes with the broadcast, "
            "so subspace needs federation.downlink: {name: subspace} at the same rank (a "
            "client that lost its copy gets the model and the basis whole next round)"
        )

    def layout(self, key: str, shape: torch.Size, store: StateDict | None) -> list[int]:
        """The segments (one scale each) a tensor of ``shape`` sends in this round."""
        rank = self.rank_of(shape)
        if not rank:
            return self.segments(shape)
        side, basis = self.basis(key, store)
        if basis.dim() != 2 or basis.shape[1] != rank:
            raise ValueError(
                f"{key}: a basis of shape {tuple(basis.shape)} for rank {rank}; the transform "
                "and federation.downlink must share one rank (or the checkpoint is another "
                "rank's run)"
            )
        m = shape[0]
        n = math.prod(shape) // m
        if basis.shape[0] != (n if side == "right" else m):
            raise ValueError(
                f"{key}: a {side} basis of {basis.shape[0]} rows for {m} x {n}: it belongs to "
                "another model; resume from this experiment's own checkpoint"
            )
        return [m if side == "right" else n] * rank

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        broadcast = ctx.client_id is None
        encoded = passed_through(update)
        codes: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        coefs: list[torch.Tensor] = []
        plain = 0
        for key in coded_keys(update):
            value = update[key]
            plain += value.numel() * 4
            flat = value.detach().reshape(-1).to(torch.float32)
            if self.error_feedback and not broadcast:
                flat = with_residual(flat, key, self.codec_name, ctx)
            lengths = self.layout(key, value.shape, ctx.private)
            rank = self.rank_of(value.shape)
            if not rank:
                these, scale = self._round(flat, lengths)
                sent = self._unround(these, scale, lengths)
            else:
                side, basis = self.basis(key, ctx.private)
                factor = _coefficients(flat.reshape(value.shape[0], -1), side, basis)
                if broadcast:
                    factor, r = _orthonormal(factor, ctx.seed, key)
                    these, scale = self._round(factor.T.reshape(-1), lengths)
                    rounded = self._unround(these, scale, lengths).reshape(rank, -1).T
                    r = _refit(rounded, factor @ r)
                    coefs.append(r.reshape(-1))
                    sent = _expand(rounded @ r, side, basis).reshape(-1)
                else:
                    these, scale = self._round(factor.T.reshape(-1), lengths)
                    rounded = self._unround(these, scale, lengths).reshape(rank, -1).T
                    sent = _expand(rounded, side, basis).reshape(-1)
            codes.append(these)
            scales.append(scale)
            if self.error_feedback and not broadcast and ctx.private is not None:
                keep_residual(flat - sent, key, self.codec_name, value.shape, ctx)
        flat_codes = torch.cat(codes) if codes else torch.zeros(0, dtype=_DTYPES[self.bits])
        if self.bits in _PACKED:
            flat_codes = pack(flat_codes.to(torch.int64) + _TOPS[self.bits], self.bits)
        encoded[VALUES] = flat_codes
        encoded[SCALES] = torch.cat(scales) if scales else torch.zeros(0)
        if broadcast:
            encoded[COEFS] = torch.cat(coefs) if coefs else torch.zeros(0)
        parts = (VALUES, SCALES, COEFS) if broadcast else (VALUES, SCALES)
        sent_bytes = sum(encoded[p].numel() * encoded[p].element_size() for p in parts)
        return encoded, {"encoded_fraction": sent_bytes / plain if plain else 1.0}

    def decode(self, update: StateDict, reference: StateDict, ctx: TransformContext) -> StateDict:
        """An update (a reply) or a model delta (the broadcast) from what was sent; a
        broadcast also moves each matrix's basis in ``ctx.private`` to its new side.

        Raises:
            ValueError: a part is missing, of the wrong size or malformed, or a basis is.
        """
        broadcast = ctx.client_id is None
        parts = (VALUES, SCALES, COEFS) if broadcast else (VALUES, SCALES)
        keys = whole_update_keys(update, reference, parts, self.codec_name)
        per_key = [self.layout(k, reference[k].shape, ctx.private) for k in keys]
        lengths = [n for these in per_key for n in these]
        count = sum(lengths)
        if self.bits in _PACKED:
            top = _TOPS[self.bits]
            packed = expect(
                update.get(VALUES), "values", torch.uint8, packed_size(count, self.bits)
            )
            codes = unpack(packed, self.bits, count) - top
            if count and int(codes.max()) > top:
                raise ValueError(f"a level beyond +-{top}")
        else:
            codes = expect(update.get(VALUES), "values", _DTYPES[self.bits], count)
        scales = expect(
            update.get(SCALES), "scales", torch.float32, len(lengths) if self.bits in _TOPS else 0
        )
        check_scales(scales)
        ranks = [self.rank_of(reference[k].shape) for k in keys]
        coefs = (
            expect(update.get(COEFS), "coefs", torch.float32, sum(r * r for r in ranks))
            if broadcast
            else torch.zeros(0)
        )
        if not bool(torch.isfinite(coefs).all()):
            raise ValueError("a broadcast coefficient that is not finite")
        numbers = self._unround(codes, scales, lengths)
        decoded = {k: v for k, v in update.items() if k not in parts}
        moved: list[tuple[str, str, torch.Tensor]] = []
        chunks = numbers.split([sum(t) for t in per_key])
        square = [r * r if broadcast else 0 for r in ranks]
        for key, chunk, rank, r in zip(keys, chunks, ranks, coefs.split(square), strict=True):
            ref = reference[key]
            if not rank:
                decoded[key] = chunk.reshape(ref.shape).to(ref.dtype)
                continue
            side, basis = self.basis(key, ctx.private)
            factor = chunk.reshape(rank, -1).T
            if broadcast:
                # A copy: at rank 1 the transpose is a view of the whole decoded buffer,
                # which every client's checkpoint would then hold.
                moved.append((key, side, factor.clone()))
                factor = factor @ r.reshape(rank, rank)
            decoded[key] = _expand(factor, side, basis).reshape(ref.shape).to(ref.dtype)
        if broadcast and ctx.private is not None:
            # The delta's factor is the next round's basis, on the other side.
            for key, side, factor in moved:
                other = "left" if side == "right" else "right"
                del ctx.private[SHARED_PREFIX + side + "/" + key]
                ctx.private[SHARED_PREFIX + other + "/" + key] = factor
        return decoded


def _coefficients(matrix: torch.Tensor, side: str, basis: torch.Tensor) -> torch.Tensor:
    """The least-squares coefficients of ``matrix`` in ``basis``: ``m x r`` for a right
    basis (``matrix ~ C B^T``), ``n x r`` for a left one (``matrix ~ B C^T``)."""
    if not bool(torch.isfinite(matrix).all()):
        # No projection of NaN: send NaN, which the server rejects as non-finite.
        rows = matrix.shape[0] if side == "right" else matrix.shape[1]
        return torch.full((rows, basis.shape[1]), float("nan"))
    inverse = torch.linalg.pinv(basis.T @ basis, hermitian=True)
    product = matrix @ basis if side == "right" else matrix.T @ basis
    return product @ inverse


def _orthonormal(factor: torch.Tensor, seed: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``factor = Q R`` with orthonormal ``Q`` (NaN stays NaN: the server never sends it).

    ``Q`` is the next round's basis. When ``factor`` has fewer than r independent columns
    (a matrix that did not move, or moved in fewer directions), QR would fill ``Q`` with
    arbitrary directions (coordinate axes for a zero factor), and the replies would keep
    only those rows; ``Q`` then spans ``factor``'s columns plus random directions drawn
    from ``seed`` and ``key``, so the basis keeps covering the matrix.
    """
    if not bool(torch.isfinite(factor).all()):
        return factor, torch.eye(factor.shape[1])
    q, r = torch.linalg.qr(factor)
    diagonal = r.diagonal().abs()
    scale = float(factor.norm())
    if diagonal.numel() and float(diagonal.min()) > 1e-6 * scale:
        return q, r
    u, sigma, _ = torch.linalg.svd(factor, full_matrices=False)
    kept = int((sigma > 1e-6 * max(scale, 1e-30)).sum())
    gen = torch_generator(seed, "subspace", key)  # only here: the usual case draws nothing
    filler = torch.randn(factor.shape[0], factor.shape[1] - kept, generator=gen)
    filler -= u[:, :kept] @ (u[:, :kept].T @ filler)
    q = torch.cat([u[:, :kept], torch.linalg.qr(filler)[0]], dim=1)
    return q, q.T @ factor


def _refit(rounded: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """The ``r x r`` ``R`` with ``rounded @ R`` closest to ``factor`` (least squares)."""
    return torch.linalg.pinv(rounded.T @ rounded, hermitian=True) @ (rounded.T @ factor)


def _expand(factor: torch.Tensor, side: str, basis: torch.Tensor) -> torch.Tensor:
    """The ``m x n`` matrix a factor stands for in ``basis``."""
    return factor @ basis.T if side == "right" else basis @ factor.T
