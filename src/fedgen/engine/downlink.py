"""Downlink compression: each client receives the model as a compressed delta from the
last model it saw, not the float32 model every round.

The server keeps one public chain of models, the same for every client::

    V_r = V_{r-1} + decode(encode(G_r - V_{r-1}))

``G_r`` is the server's global model and ``encode`` an update codec (``quantize``,
``qsgd``, ``cast``, ``topk``, ``random_mask``). The server goes on training ``G``;
what compression dropped, ``G_r - V_r``, is part of the next delta, so nothing is lost
for good (error feedback on the server, as in DoubleSqueeze, Tang et al. 2019, and
EF21-P, Gruntkowska et al. 2023). Clients train from ``V_r``: their updates are
relative to it (the round's ``Job.start``), and the strategy applies their aggregate
to ``G_r``.

A client that last saw ``V_s`` receives the encoded deltas ``s+1 .. r`` and adds them
to its own copy of ``V_s``, kept in its private state (``DOWNLINK_PREFIX``). Every
client already holds ``V_{-1}``, the initial model: it builds it from the recipe's seed
(``ClientKit.initial_state``), so even its first job is deltas. A client whose missed
deltas would outweigh the model, or that failed a round, receives ``V_r`` whole. Every
job names ``V_r``'s digest: a client whose copy does not reach it (a lost private
state, a job it never got) fails that round with the reason before it trains, and the
server sends it the whole model the next time. Because every client holds the same
``V_r``, a round's clients still start from one state, as without compression.

A codec may share state with the clients beside the model (``subspace``: the basis the
next replies are coded in, which each broadcast moves). The server keeps it in
``Downlink.shared``, a client in its private state; both update it by decoding the same
deltas, the digest covers it, and a job that sends the model whole sends it too.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from fedgen.ledger.digest import state_digest
from fedgen.registry import TRANSFORMS
from fedgen.seeding import derive_seed
from fedgen.transforms.base import PRIVATE_PREFIX, TransformContext
from fedgen.transforms.codec import UpdateCodec
from fedgen.types import StateDict, state_nbytes

#: Where a client keeps its copy of the model it last received (a transform-like
#: private tensor per model tensor: checkpoints check each against its model tensor).
DOWNLINK_PREFIX = PRIVATE_PREFIX + "downlink/"
#: Array names of a job's deltas: ``DELTA_PREFIX + "<version>/" + <encoded array name>``.
DELTA_PREFIX = "__down__/"


class DownlinkSource(Protocol):
    """What a client's job carries for its start model: arrays and their description."""

    def payload(self, client_id: int) -> tuple[StateDict, dict[str, Any]]:
        """The arrays and meta of ``client_id``'s job (``receive`` reads them)."""
        ...


def codec_from_spec(spec: dict[str, Any]) -> UpdateCodec:
    """The codec a job's ``spec`` names (``{"name", "params", "state"}``).

    Raises:
        ValueError: the spec names no registered codec, or params it does not take.
    """
    try:
        name, params, state = spec["name"], spec["params"], spec["state"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a malformed downlink codec spec: {exc!r}") from exc
    if not isinstance(name, str) or name not in TRANSFORMS:
        raise ValueError(f"the downlink codec {str(name)[:40]!r} is not registered")
    cls = TRANSFORMS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, UpdateCodec)):
        raise ValueError(
            f"{name!r} is not a codec (quantize, qsgd, cast, topk, random_mask, sign, "
            "lowrank, subspace)"
        )
    if not isinstance(params, dict):
        raise ValueError("the downlink codec's params must be a mapping")
    try:
        checked = cls.Params(**params).model_dump()  # type: ignore[attr-defined]
    except ValueError as exc:
        raise ValueError(f"the downlink codec's params are not {name}'s: {exc}") from exc
    codec = cls(**checked)
    codec.load_state_dict(state)
    return codec


def _context(seed: int, version: int, shared: StateDict | None = None) -> TransformContext:
    """Where the server encodes (and a client decodes) the delta to ``version``; a codec
    that shares state with the clients (a basis) reads and moves it in ``shared``."""
    return TransformContext(
        round=version,
        client_id=None,
        seed=derive_seed(seed, version),
        num_clients=0,
        private=shared,
    )


def shared_part(codec: UpdateCodec, tensors: StateDict) -> StateDict:
    """The tensors of ``tensors`` that are ``codec``'s shared state (none for most)."""
    prefix = codec.shared_prefix
    return {} if prefix is None else {k: v for k, v in tensors.items() if k.startswith(prefix)}


def public_digest(view: StateDict, shared: StateDict) -> str:
    """What a client's copy must match: the public model and the codec's shared state."""
    return state_digest({**view, **shared})


class Downlink:
    """The server's side: the public chain of models, its recent deltas, who holds what.

    Args:
        codec: encodes each delta (its own error feedback is the server's, so a ``topk``
            must come without its client-side residual).
        spec: how a client builds the same codec (``codec_from_spec``).
        seed: the run's root seed; each delta's rounding noise is drawn from it.
        initial: the initial model (version -1), as every client builds it.
    """

    def __init__(
        self, codec: UpdateCodec, spec: dict[str, Any], seed: int, initial: StateDict
    ) -> None:
        self.codec = codec
        self.spec = spec
        self.seed = derive_seed(seed, "downlink")
        #: The initial model (version -1), which every client builds from the recipe; a
        #: simulation hands its clients this copy (``LocalWork.initial_state``).
        self.initial: StateDict = {k: v.clone() for k, v in initial.items()}
        #: The public model, from version -1 on.
        self.view: StateDict = dict(self.initial)
        #: The codec's state shared with every client (a ``subspace`` basis), moved by
        #: each broadcast's decode; {} for most codecs.
        self.shared: StateDict = codec.initial_shared(self.initial, self.seed)
        self.version = -1
        self.digest = public_digest(self.view, self.shared)
        #: Encoded delta to each kept version from the one before it ({}: no change).
        self.deltas: dict[int, StateDict] = {}
        #: The version each client holds, as far as the server knows (absent: the
        #: initial model; None: unknown, so the model goes out whole).
        self.synced: dict[int, int | None] = {}

    def advance(self, version: int, global_state: StateDict) -> StateDict:
        """Bring the public model to ``version`` from ``global_state``; return it."""
        if version != self.version:
            diff = {
                k: (g - self.view[k]) if g.is_floating_point() else g
                for k, g in global_state.items()
            }
            if all(
                torch.equal(d, self.view[k]) if not d.is_floating_point() else not d.any()
                for k, d in diff.items()
            ):
                # Nothing changed (round 0 starts from the initial model): nothing to send.
                self.deltas[version] = {}
            else:
                ctx = _context(self.seed, version, self.shared)
                encoded, _ = self.codec.on_client(diff, ctx)
                decoded = self.codec.decode(encoded, self.view, ctx)
                self.view = apply_delta(self.view, decoded)
                self.deltas[version] = encoded
                self.digest = public_digest(self.view, self.shared)
            self._prune()
        self.version = version
        return self.view

    def _prune(self) -> None:
        """Keep only the newest deltas that together weigh less than the model: a
        client further behind gets the model whole."""
        budget = state_nbytes(self.view)
        kept = 0
        for version in sorted(self.deltas, reverse=True):
            kept += state_nbytes(self.deltas[version])
            if kept > budget:
                del self.deltas[version]

    def payload(self, client_id: int) -> tuple[StateDict, dict[str, Any]]:
        """``client_id``'s job arrays: the deltas since the model it holds, or the model."""
        base = self.synced.get(client_id, -1)
        meta = {
            "codec": self.spec,
            "seed": self.seed,
            "version": self.version,
            "digest": self.digest,
        }
        missing = range(base + 1, self.version + 1) if base is not None else range(0)
        if base is None or base > self.version or any(v not in self.deltas for v in missing):
            # The whole model, and the shared state the deltas would have brought.
            return {**self.view, **self.shared}, {**meta, "base": None}
        arrays = {
            f"{DELTA_PREFIX}{v}/{name}": tensor
            for v in missing
            for name, tensor in self.deltas[v].items()
        }
        return arrays, {**meta, "base": base}

    def settle(self, client_id: int, delivered: bool) -> None:
        """After a client's result: it holds this version, or (failed) maybe not."""
        # A failed client may never have got the job, or kept its old copy (or built
        # another initial model): the model goes out whole the next time.
        self.synced[client_id] = self.version if delivered else None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue bit-identically."""
        return {
            "version": self.version,
            "view": {k: v.clone() for k, v in self.view.items()},
            "shared": {k: v.clone() for k, v in self.shared.items()},
            "deltas": {str(v): dict(d) for v, d in self.deltas.items()},
            "synced": {str(c): v for c, v in self.synced.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.version = int(state["version"])
        self.view = dict(state["view"])
        self.shared = dict(state.get("shared", {}))
        try:
            self.codec.check_shared(self.shared, self.initial)
        except ValueError as err:
            raise ValueError(
                f"the checkpoint's downlink state does not fit this experiment: {err}; "
                "resume from a checkpoint of this recipe"
            ) from err
        self.deltas = {int(v): dict(d) for v, d in state["deltas"].items()}
        self.synced = {int(c): None if v is None else int(v) for c, v in state["synced"].items()}
        self.digest = public_digest(self.view, self.shared)


class ReceivedDownlink:
    """A client's side of a decoded job: the arrays and meta it was sent."""

    def __init__(self, arrays: StateDict, meta: dict[str, Any], client_id: int) -> None:
        self.arrays, self.meta, self.client_id = arrays, meta, client_id

    def payload(self, client_id: int) -> tuple[StateDict, dict[str, Any]]:
        if client_id != self.client_id:
            raise ValueError(f"a job for client {self.client_id} read by client {client_id}")
        return self.arrays, self.meta


def apply_delta(view: StateDict, delta: StateDict) -> StateDict:
    """``view`` plus ``delta`` (a non-floating tensor's delta is its new value)."""
    return {
        k: (v + delta[k]) if v.is_floating_point() else delta[k].clone() for k, v in view.items()
    }


def receive(
    source: DownlinkSource,
    client_id: int,
    own: StateDict,
    model: StateDict,
    initial: StateDict | None,
) -> StateDict:
    """The model a client starts from: its copy brought up to the job's version.

    ``own`` is the client's transforms' private tensors, where its copy lives; it is
    updated in place. ``model`` names the tensors (shapes, dtypes) the job must give;
    ``initial`` is the initial model the client built from the recipe (version -1).

    Raises:
        ValueError: the client's copy is missing or does not reach the job's digest.
    """
    arrays, meta = source.payload(client_id)
    codec = codec_from_spec(meta["codec"])
    base, version = meta["base"], int(meta["version"])
    # The codec's shared state (a basis), brought up to date beside the model.
    shared = shared_part(codec, own)
    if base is None:
        shared = shared_part(codec, arrays)
        arrays = {k: v for k, v in arrays.items() if k not in shared}
        if arrays.keys() != model.keys():
            raise ValueError("the job's model has other tensors than this task's")
        view = dict(arrays)
    else:
        base = int(base)
        if base == -1:
            if initial is None:
                raise ValueError(
                    "the job sends deltas from the initial model, which this client lacks"
                )
            view = {k: initial[k] for k in model if k in initial}
            shared = codec.initial_shared(view, int(meta["seed"]))
        else:
            view = {k: own[DOWNLINK_PREFIX + k] for k in model if DOWNLINK_PREFIX + k in own}
        if view.keys() != model.keys():
            raise ValueError(
                f"the job sends deltas from version {base}, but this client keeps no copy "
                "of that model (a lost private state): the server sends the whole model "
                "the next time"
            )
        by_version: dict[int, StateDict] = {}
        for name, tensor in arrays.items():
            head, sep, rest = name.removeprefix(DELTA_PREFIX).partition("/")
            if not name.startswith(DELTA_PREFIX) or not sep or not head.isdecimal():
                raise ValueError(f"a job's array {name[:60]!r} is not a downlink delta")
            by_version.setdefault(int(head), {})[rest] = tensor
        if not set(by_version) <= set(range(base + 1, version + 1)):
            raise ValueError(f"the job's deltas are not of versions {base + 1}..{version}")
        # A version absent from the job changed nothing (its delta is empty).
        for v in sorted(by_version):
            ctx = _context(int(meta["seed"]), v, shared)
            view = apply_delta(view, codec.decode(by_version[v], view, ctx))
    if public_digest(view, shared) != meta["digest"]:
        raise ValueError(
            f"this client's copy of model version {version} differs from the server's "
            "(digest mismatch): the server sends the whole model the next time"
        )
    for key, tensor in view.items():
        own[DOWNLINK_PREFIX + key] = tensor
    for key in list(shared_part(codec, own)):
        del own[key]
    own.update(shared)
    return view
