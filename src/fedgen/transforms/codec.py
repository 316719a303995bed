"""The codec contract: an update transform whose client half encodes for the wire.

A codec's client half turns each floating model tensor of an update into a few
compact arrays (packed low-bit integers, indices, scales); those arrays, not the
float32 update, are what the client's reply message carries, so the byte counts the
round loop records are the compressed ones. The server decodes each client's
message on arrival (``decode_arrival``), before the update is checked and
aggregated, so strategies, validation and the ledger's norms see ordinary updates.

An encoded update names its arrays ``CODEC_PREFIX + "<model tensor>/<part>"``.
Side-channel tensors of other transforms (``AUX_PREFIX``, e.g. adaptive clipping's
bit) and non-floating tensors travel as they are. ``on_server`` stays the identity:
by the time the aggregate exists every update has been decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, overload

import torch

from fedgen.errors import ClientUpdateError
from fedgen.transforms.base import TransformContext, UpdateTransform
from fedgen.transforms.clip import AUX_PREFIX
from fedgen.types import StateDict

#: Names of an encoded update's arrays start with this (a side channel, never a model key).
CODEC_PREFIX = "__codec__/"


def part_name(key: str, part: str) -> str:
    """The array name of one ``part`` of model tensor ``key``'s encoding."""
    return f"{CODEC_PREFIX}{key}/{part}"


def encoded_key(name: str) -> str | None:
    """The model tensor whose encoding holds the array ``name`` (None: not an encoding's)."""
    if not name.startswith(CODEC_PREFIX):
        return None
    key, sep, _ = name.removeprefix(CODEC_PREFIX).rpartition("/")
    return key if sep else None


class UpdateCodec(UpdateTransform):
    """Encode each floating tensor of a client's update; decode it on the server.

    Subclasses implement ``encode_tensor`` and ``decode_tensor``; they declare whether
    the code is linear over a support every client shares in a round
    (``linear_shared_support``: encoded updates can then be summed under secure
    aggregation's masks) and whether it is lossless.
    """

    #: The registered name; it keys the codec's private tensors and metrics.
    codec_name: ClassVar[str] = "codec"
    #: Encodings of one round can be summed coordinate by coordinate (same support).
    linear_shared_support: ClassVar[bool] = False
    #: ``decode(encode(x)) == x`` exactly for every float32 update.
    lossless: ClassVar[bool] = False
    #: Where a codec whose server and clients share state between rounds (a basis that
    #: comes with the compressed broadcast) keeps it: the downlink's shared state and
    #: each client's private state, under this prefix. None: nothing shared.
    shared_prefix: ClassVar[str | None] = None

    def initial_shared(self, reference: StateDict, seed: int) -> StateDict:
        """The shared state before the first broadcast, drawn from the downlink's ``seed``
        (the same on the server and every client); {} for a codec that shares none."""
        return {}

    def check_shared(self, shared: StateDict, reference: StateDict) -> None:
        """Raise ``ValueError`` when ``shared`` (restored from a checkpoint) does not fit
        a model shaped like ``reference`` (default: nothing is shared, nothing to check)."""

    def bind_seed(self, root_seed: int) -> None:
        """Take the run's root seed, which every client's recipe holds: a codec whose
        support is drawn from a shared seed derives it here (default: nothing to do)."""

    def encode_tensor(
        self, key: str, value: torch.Tensor, ctx: TransformContext
    ) -> dict[str, torch.Tensor]:
        """The parts that carry ``value`` (a floating model tensor) on the wire."""
        raise NotImplementedError

    def decode_tensor(
        self,
        key: str,
        parts: dict[str, torch.Tensor],
        reference: torch.Tensor,
        ctx: TransformContext,
    ) -> torch.Tensor:
        """``key``'s update from its parts, with ``reference``'s shape and dtype.

        Raises:
            ValueError: the parts are not what ``encode_tensor`` sends for this tensor.
        """
        raise NotImplementedError

    def on_client(
        self, update: StateDict, ctx: TransformContext
    ) -> tuple[StateDict, dict[str, float]]:
        encoded: StateDict = {}
        plain = sent = 0
        for key, value in update.items():
            if key.startswith(AUX_PREFIX) or not value.is_floating_point():
                encoded[key] = value
                continue
            plain += value.numel() * 4
            for part, tensor in self.encode_tensor(key, value, ctx).items():
                encoded[part_name(key, part)] = tensor
                sent += tensor.numel() * tensor.element_size()
        return encoded, {"encoded_fraction": sent / plain if plain else 1.0}

    def decode(self, update: StateDict, reference: StateDict, ctx: TransformContext) -> StateDict:
        """One client's update as the model's tensors, from what ``on_client`` sent.

        Raises:
            ValueError: a tensor's encoding is missing, extra or malformed.
        """
        groups: dict[str, dict[str, torch.Tensor]] = {}
        decoded: StateDict = {}
        for name, tensor in update.items():
            if not name.startswith(CODEC_PREFIX):
                decoded[name] = tensor
                continue
            key, sep, part = name.removeprefix(CODEC_PREFIX).rpartition("/")
            if not sep:
                raise ValueError(f"an encoded array is named {name[:80]!r}, without a part")
            groups.setdefault(key, {})[part] = tensor
        for key, ref in reference.items():
            if not ref.is_floating_point():
                continue
            parts = groups.pop(key, None)
            if parts is None:
                raise ValueError(f"{key}: no {self.codec_name} encoding in the update")
            if key in decoded:
                raise ValueError(f"{key}: sent both encoded and as a plain tensor")
            value = self.decode_tensor(key, parts, ref, ctx)
            if value.shape != ref.shape or value.dtype != ref.dtype:
                raise ValueError(f"{key}: decoded to {value.dtype} {tuple(value.shape)}")
            decoded[key] = value
        if groups:
            raise ValueError(f"encodings of tensors the model lacks: {sorted(groups)[:3]}")
        return decoded


def coded_keys(state: StateDict) -> list[str]:
    """The tensors of ``state`` a codec that packs a whole update into a few arrays
    codes (floating, not a side channel), in the order their numbers travel."""
    return sorted(
        k for k, v in state.items() if v.is_floating_point() and not k.startswith(AUX_PREFIX)
    )


def passed_through(update: StateDict) -> StateDict:
    """What a whole-update codec sends as it is: side channels and non-floating tensors."""
    return {
        k: v for k, v in update.items() if k.startswith(AUX_PREFIX) or not v.is_floating_point()
    }


def whole_update_keys(
    update: StateDict, reference: StateDict, parts: Sequence[str], codec_name: str
) -> list[str]:
    """The coded tensors of ``reference`` (``coded_keys``) that a codec sending the whole
    update as the arrays ``parts`` decodes.

    Raises:
        ValueError: the update holds an encoded array the codec does not send, or a
            coded tensor sent as a plain one too.
    """
    extra = sorted(k for k in update if k.startswith(CODEC_PREFIX) and k not in parts)
    if extra:
        raise ValueError(f"arrays a {codec_name} update does not send: {extra[:3]}")
    keys = coded_keys(reference)
    for key in keys:
        if key in update:
            raise ValueError(f"{key}: sent both encoded and as a plain tensor")
    return keys


def check_scales(scales: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every scale is finite and not negative."""
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("a scale of NaN or Inf: the encoded update was not finite")
    if bool((scales < 0).any()):
        raise ValueError("a negative scale")


def codecs_of(transforms: Sequence[UpdateTransform]) -> list[UpdateCodec]:
    """The codecs among ``transforms``, in pipeline order."""
    return [t for t in transforms if isinstance(t, UpdateCodec)]


@overload
def decode_arrival(
    transforms: Sequence[UpdateTransform],
    update: StateDict,
    reference: StateDict,
    round: int,
    client_id: int,
    shared: StateDict | None = None,
) -> StateDict: ...


@overload
def decode_arrival(
    transforms: Sequence[UpdateTransform],
    update: StateDict | None,
    reference: StateDict,
    round: int,
    client_id: int,
    shared: StateDict | None = None,
) -> StateDict | None: ...


def decode_arrival(
    transforms: Sequence[UpdateTransform],
    update: StateDict | None,
    reference: StateDict,
    round: int,
    client_id: int,
    shared: StateDict | None = None,
) -> StateDict | None:
    """A client's update decoded by the pipeline's codecs (server side, on arrival).

    ``reference`` is the global state the client started from (shapes, dtypes);
    ``round`` the round it trained in (a shared mask is drawn from it); ``shared`` what
    the compressed broadcast shares with the round's clients (a ``subspace`` basis),
    read only. Without a codec, or without an update, the update is returned unchanged.

    Raises:
        ClientUpdateError: the update is not a well-formed encoding (a failure value);
            nothing else is raised, so a client's bytes never end the run.
    """
    codecs = codecs_of(transforms)
    if update is None or not codecs:
        return update
    ctx = TransformContext(round=round, client_id=client_id, seed=0, num_clients=0, private=shared)
    try:
        for codec in reversed(codecs):
            update = codec.decode(update, reference, ctx)
    except Exception as exc:  # whatever a client's bytes make a decoder raise (as check_update)
        raise ClientUpdateError(f"undecodable {codecs[0].codec_name} update: {exc}") from exc
    return update


def fitting_index_dtype(size: int) -> torch.dtype:
    """The narrowest unsigned integer dtype that holds every index below ``size``."""
    for dtype, limit in ((torch.uint8, 1 << 8), (torch.uint16, 1 << 16), (torch.uint32, 1 << 32)):
        if size <= limit:
            return dtype
    return torch.int64


def expect(part: torch.Tensor | None, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """``part`` if it is a flat ``dtype`` tensor of ``numel`` elements; else ``ValueError``."""
    if part is None:
        raise ValueError(f"the part {name!r} is missing")
    if not isinstance(part, torch.Tensor) or part.dtype != dtype or part.shape != (numel,):
        raise ValueError(
            f"the part {name!r} must be {dtype} of shape ({numel},), got "
            f"{getattr(part, 'dtype', type(part).__name__)} {tuple(getattr(part, 'shape', ()))}"
        )
    return part


def check_parts(parts: dict[str, torch.Tensor], names: set[str]) -> None:
    """Raise ``ValueError`` unless ``parts`` has exactly the parts ``names``."""
    if set(parts) != names:
        raise ValueError(f"parts {sorted(parts)[:4]}, expected {sorted(names)}")
