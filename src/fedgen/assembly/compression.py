"""Check where an update codec sits in an experiment, before round 1.

A codec's client half (``fedgen.transforms.codec``) turns an update into an encoding
(packed integers, indices, scales), so whatever runs after it on the client sees
that encoding, not an update. Called from ``fedgen.experiment.build_experiment``,
which raises these problems together with every other component's, each with why
and what to do.

Rules:
- at most one codec: a second would encode an encoding;
- ``clip`` before the codec: the clip bounds the update the codec compresses (a clip
  after it would measure packed integers, and the server decodes before it could);
- after the codec only transforms whose client half leaves the message alone:
  ``client_dp`` (server-side noise) and ``secagg``;
- ``secagg`` after a codec only when the codec is linear over a support every client
  of the round shares (``random_mask``: the mask comes from a shared seed, so masked
  sums of encodings are the encoding of the sum); ``topk`` picks each client's own
  coordinates, and quantizers scale each client differently, so their encodings
  cannot be summed under masks. A rescaled random mask can leave the fixed-point
  range secagg binds to the clip bound, so under secagg it must not rescale;
- differential privacy: DP-SGD's guarantee is on the update a client releases, and a
  codec is post-processing of it: its accounting is unchanged. Client-level DP adds
  noise at the server, calibrated to the clip bound on what the clients send, so
  there the codec must keep a clipped update's norm within the bound
  (``dp_compatible``: ``topk`` without error feedback and ``random_mask`` without
  rescaling send a subset of the coordinates, ``lowrank`` at 32 bits without error
  feedback a projection; quantizers, casts and error feedback can exceed it);
- a codec whose replies are coefficients in a basis the broadcast brings
  (``subspace``) needs ``federation.downlink`` with the same codec and rank;
- not the ``split`` backend, whose clients exchange activations, not updates.

On success each codec is bound to the run's root seed (a shared-seed support derives
from it: ``random_mask``, ``sign`` with a fraction).

``build_downlink`` checks and builds the codec of ``federation.downlink`` (the
broadcast, compressed as deltas: ``fedgen.engine.downlink``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from fedgen.config import ComponentConfig
from fedgen.engine.downlink import Downlink
from fedgen.registry import TRANSFORMS
from fedgen.transforms.base import UpdateTransform
from fedgen.transforms.clip import NormClip
from fedgen.transforms.codec import UpdateCodec
from fedgen.transforms.dp import ClientLevelDP
from fedgen.transforms.secagg.transform import SecureAggregation
from fedgen.transforms.sparsify import RandomMask
from fedgen.types import StateDict

log = logging.getLogger(__name__)


def compression_problems(
    *,
    transforms: Sequence[UpdateTransform | None],
    backend: str,
    root_seed: int,
    dpsgd: bool,
    downlink: ComponentConfig | None = None,
) -> list[str]:
    """Every unsound use of a codec in the pipeline, each with its fix; [] if none.

    ``transforms`` may hold None for one that failed to build (its checks are skipped);
    ``downlink`` is ``federation.downlink`` (a codec sharing a basis needs its own there).
    """
    codecs = [(i, t) for i, t in enumerate(transforms) if isinstance(t, UpdateCodec)]
    if not codecs:
        return []
    problems: list[str] = []
    names = [type(t).__name__ if t is not None else "?" for t in transforms]
    if len(codecs) > 1:
        listed = ", ".join(f"transforms[{i}] ({t.codec_name})" for i, t in codecs)
        problems.append(
            f"transforms: {listed} are all codecs; keep one (a second codec would encode "
            "the first one's packed integers, not an update)"
        )
    i_codec, codec = codecs[0]
    for i, t in enumerate(transforms):
        if t is None:
            continue  # failed to build: its own problem is reported, its placement unknown
        if isinstance(t, NormClip) and i > i_codec:
            problems.append(
                f"transforms: clip (transforms[{i}]) comes after the codec {codec.codec_name} "
                f"(transforms[{i_codec}]); list clip first, so it bounds the update the codec "
                "compresses (after it, it would measure the encoding)"
            )
        elif i > i_codec and not isinstance(t, ClientLevelDP | SecureAggregation | UpdateCodec):
            problems.append(
                f"transforms[{i}] ({names[i]}) comes after the codec {codec.codec_name} and "
                "would see its encoding, not an update; move the codec after it"
            )
    if any(isinstance(t, SecureAggregation) for t in transforms):
        if not codec.linear_shared_support:
            problems.append(
                f"transforms: {codec.codec_name} before secagg: its encodings are not linear "
                "over a support every client shares (each client sends its own coordinates "
                "or scales), so they cannot be summed under the masks; use random_mask "
                "(a shared-seed mask), or drop secagg"
            )
        elif isinstance(codec, RandomMask) and codec.rescale:
            problems.append(
                "transforms: random_mask with rescale: true before secagg can scale an update "
                "past the fixed-point range secagg binds to the clip bound; set rescale: false"
            )
    if any(isinstance(t, ClientLevelDP) for t in transforms) and not getattr(
        codec, "dp_compatible", False
    ):
        problems.append(
            f"transforms: client_dp calibrates its noise to the clip bound on what clients "
            f"send, but {codec.codec_name} can send an update whose norm exceeds it "
            "(quantization and casts round values up, error feedback adds the residual); "
            "use topk or sign with error_feedback: false, lowrank with bits: 32 and "
            "error_feedback: false, or random_mask with rescale: false, or DP-SGD "
            "(dpsgd:), after which any codec is post-processing"
        )
    if dpsgd:
        log.info(
            "%s compresses updates DP-SGD already made private: post-processing, the "
            "privacy accounting is unchanged",
            codec.codec_name,
        )
    if codec.shared_prefix is not None:
        rank = getattr(codec, "rank", None)
        if downlink is None or downlink.name != codec.codec_name:
            problems.append(
                f"transforms: {codec.codec_name} sends each update's coefficients in a basis "
                "that comes with the compressed broadcast; add federation.downlink: {name: "
                f"{codec.codec_name}, params: {{rank: {rank}, error_feedback: false}}}}"
            )
        elif downlink.params.get("rank", 4) != rank:
            problems.append(
                f"transforms: {codec.codec_name} rank {rank} but federation.downlink rank "
                f"{downlink.params.get('rank', 4)}: the replies use the broadcast's basis, so "
                "the two ranks must be equal"
            )
    if backend == "split":
        problems.append(
            f"transforms: {codec.codec_name} compresses model updates, but the split backend's "
            "clients exchange activations and gradients; drop the codec or use backend "
            "inprocess/process_pool"
        )
    if not problems:
        for _, t in codecs:
            t.bind_seed(root_seed)
    return problems


def codec_names() -> list[str]:
    """The registered transforms that are codecs."""
    return [
        name
        for name in TRANSFORMS.names()
        if isinstance(cls := TRANSFORMS.get(name), type) and issubclass(cls, UpdateCodec)
    ]


def build_downlink(
    spec: ComponentConfig,
    *,
    mode: str,
    backend: str,
    root_seed: int,
    initial: StateDict,
    problems: list[str],
) -> Downlink | None:
    """The compressed downlink ``federation.downlink`` names, from the ``initial`` model;
    None (and a problem with its fix appended to ``problems``) when it cannot be built or
    does not fit the run."""
    codecs = codec_names()
    if spec.name not in codecs:
        problems.append(
            f"federation.downlink.name: {spec.name!r} is not a codec; choose from "
            f"{', '.join(codecs)}"
        )
        return None
    cls = TRANSFORMS.get(spec.name)
    try:
        params: dict[str, Any] = cls.Params(**spec.params).model_dump()  # type: ignore[attr-defined]
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        problems.append(f"federation.downlink.params: {detail}")
        return None
    count = len(problems)
    if params.get("error_feedback"):
        problems.append(
            f"federation.downlink: {spec.name}'s error_feedback keeps a residual on a client; the "
            "downlink's own error feedback is the server's (what a delta left out is part "
            "of the next one): set federation.downlink.params.error_feedback: false"
        )
    if mode != "sync":
        problems.append(
            f"federation.downlink compresses a synchronous round's broadcast, but "
            f"federation.mode {mode} sends clients different models; set "
            "federation.mode: sync or remove federation.downlink"
        )
    if backend == "split":
        problems.append(
            "federation.downlink: the split backend sends each client its own blocks and "
            "activations, not the global model; drop federation.downlink or use backend "
            "inprocess/process_pool/flower"
        )
    if len(problems) > count:
        return None
    codec = cls(**params)
    codec.bind_seed(root_seed)
    spec_state = {"name": spec.name, "params": params, "state": codec.state_dict()}
    return Downlink(codec, spec_state, root_seed, initial)
