"""Server-side checks on a received client update.

A malformed update (missing or extra tensors, wrong shapes or dtypes,
NaN/Inf, an absurd norm) becomes a failure value: it is logged and left out
of the aggregate, and the round goes on while enough clients remain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedgen.errors import ClientUpdateError
from fedgen.types import ClientResult, StateDict

#: Largest magnitude of an auxiliary tensor: they carry bits and fractions (e.g.
#: adaptive clipping's centred unclipped bit, +-0.5), never model values.
MAX_AUXILIARY = 1.0
#: Longest metric name and most metrics one client may report.
MAX_METRIC_NAME = 64
MAX_METRICS = 64
#: Longest signature accepted, in hex digits (an Ed25519 signature has 128).
MAX_SIGNATURE = 256


def check_update(
    update: StateDict,
    reference: StateDict,
    max_norm: float | None,
    auxiliary: frozenset[str] = frozenset(),
) -> float:
    """Raise ``ClientUpdateError`` if ``update`` does not fit ``reference``; return its L2 norm.

    An accepted update is a dict holding exactly the reference's keys (plus
    ``auxiliary``), each a dense tensor on the reference's device with its shape and
    dtype and finite values, with a finite L2 norm (over every model tensor, integer
    ones included) of at most ``max_norm``. Anything else a client could send raises
    ``ClientUpdateError``, and nothing else is raised.

    ``auxiliary`` names side-channel tensors the transforms add to every update (e.g.
    adaptive clipping's unclipped bit): each must be present, a floating tensor of shape
    (1,), finite and within +-``MAX_AUXILIARY``; they do not count toward the norm.
    """
    if not isinstance(update, Mapping):
        raise ClientUpdateError(f"update is a {type(update).__name__}, not a mapping of tensors")
    odd = [k for k in update if not isinstance(k, str)]
    if odd:
        raise ClientUpdateError(f"update keys must be tensor names, got {_short(odd[0])}")
    missing = (reference.keys() | auxiliary) - update.keys()
    extra = update.keys() - reference.keys() - auxiliary
    if missing or extra:
        raise ClientUpdateError(
            f"update keys differ from the model: missing {sorted(missing)[:3]}"
            f", unexpected {[_short(k) for k in sorted(extra)[:3]]}"
        )
    floating: list[tuple[str, torch.Tensor]] = []
    parts: dict[str, float] = {}
    for key, ref in reference.items():
        value = _dense(update[key], key, ref.device)
        if value.shape != ref.shape:
            raise ClientUpdateError(
                f"{key}: shape {tuple(value.shape)}, model has {tuple(ref.shape)}"
            )
        if value.dtype != ref.dtype:
            raise ClientUpdateError(f"{key}: dtype {value.dtype}, model has {ref.dtype}")
        plain = value.detach()
        if plain.is_complex():
            parts[key] = float(torch.linalg.vector_norm(plain, dtype=torch.complex128))
        elif plain.is_floating_point():
            floating.append((key, plain))
        else:  # integer tensors count toward the norm too
            parts[key] = float(torch.linalg.vector_norm(plain.double()))
    if floating:
        # Every real tensor's float64 L2 norm in one call (a small model's many tensors
        # cost more in per-call overhead than in arithmetic). A norm is NaN or Inf
        # exactly when a value is (float32 squares cannot overflow float64), so it is
        # also the check for non-finite values.
        norms = torch._foreach_norm([t for _, t in floating], 2, dtype=torch.float64)
        parts.update(zip([k for k, _ in floating], torch.stack(norms).tolist(), strict=True))
    sq = 0.0
    for key in reference:
        if not math.isfinite(parts[key]):
            raise ClientUpdateError(f"{key}: contains NaN or Inf")
        sq += parts[key] * parts[key]
    for key in sorted(auxiliary):
        value = _dense(update[key], key, None)
        if value.shape != (1,) or not value.is_floating_point():
            raise ClientUpdateError(
                f"{key}: expected a floating tensor of shape (1,), got {value.dtype} "
                f"{tuple(value.shape)}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ClientUpdateError(f"{key}: contains NaN or Inf")
        if float(value.abs().max()) > MAX_AUXILIARY:
            raise ClientUpdateError(
                f"{key}: {float(value[0]):.3g} is outside [-{MAX_AUXILIARY:g}, {MAX_AUXILIARY:g}]"
            )
    norm = sq**0.5
    if not math.isfinite(norm):
        raise ClientUpdateError("update norm overflows float64")
    if max_norm is not None and norm > max_norm:
        raise ClientUpdateError(
            f"update norm {norm:.3g} exceeds federation.max_update_norm={max_norm:.3g}"
        )
    return norm


def check_result(
    result: ClientResult,
    reference: StateDict,
    max_norm: float | None,
    auxiliary: frozenset[str] = frozenset(),
    max_examples: int | None = None,
    client_id: int | None = None,
    secure: bool | None = None,
) -> float:
    """Check every field of a result a client reports as a success; return its update's norm.

    For the round loop, before a result is aggregated: besides ``check_update`` on its
    update, the fields a client controls must be what the loop assumes, since they
    weight the aggregate and land in the run's metrics:

    - ``client_id`` is the id the server sent the work to (``client_id``, when given);
    - ``held`` (the update kept for secure aggregation) is what the round asked for
      (``secure``, when given): a held update in a plain round has nothing to aggregate;
    - ``num_examples`` is an int in 1..``max_examples`` (the client's shard size, public
      in fedgen: a weight of 0 fails a secure-aggregation round, a huge one takes over
      the weighted mean);
    - ``metrics`` is at most ``MAX_METRICS`` names (text up to ``MAX_METRIC_NAME``
      characters) with finite int or float values;
    - ``bytes_up`` and ``bytes_down`` are ints >= 0; ``signature`` is None or hex (the
      ledger verifies it); ``extras`` maps names to finite dense tensors;
      ``private_keys`` is a frozenset of the update's model keys.

    Raises:
        ClientUpdateError: naming the first field at fault; nothing else is raised.
    """
    if not isinstance(result, ClientResult):
        raise ClientUpdateError(f"a client sent a {type(result).__name__}, not a ClientResult")
    if client_id is not None and (
        type(result.client_id) is not int or result.client_id != client_id
    ):
        raise ClientUpdateError(
            f"result names client {_short(result.client_id)}, but the work went to client "
            f"{client_id}"
        )
    if result.failure is not None:
        raise ClientUpdateError(f"the client reported a failure: {_short(result.failure, 200)}")
    if result.held is not False and result.held is not True:
        raise ClientUpdateError(f"held must be true or false, got {_short(result.held)}")
    if secure is not None and result.held is not secure:
        raise ClientUpdateError(
            "the client says it holds its update for secure aggregation, in a round without it"
            if result.held
            else "the client sent its update in plain, in a round of secure aggregation"
        )
    if result.held and result.update is not None:
        raise ClientUpdateError("the client says it holds its update, and sent it")
    if result.update is None and not result.held:
        raise ClientUpdateError("the client sent no update")
    n = result.num_examples
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ClientUpdateError(f"num_examples must be an int >= 1, got {_short(n)}")
    if max_examples is not None and n > max_examples:
        raise ClientUpdateError(
            f"num_examples {n} exceeds the client's {max_examples} training examples"
        )
    _check_metrics(result.metrics)
    for name in ("bytes_up", "bytes_down"):
        count = getattr(result, name)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ClientUpdateError(f"{name} must be an int >= 0, got {_short(count)}")
    signature = result.signature
    if signature is not None and not (
        isinstance(signature, str)
        and len(signature) <= MAX_SIGNATURE
        and all(c in "0123456789abcdef" for c in signature)
    ):
        raise ClientUpdateError(
            f"signature must be lowercase hex of at most {MAX_SIGNATURE} digits, "
            f"got {_short(signature)}"
        )
    if not isinstance(result.extras, dict):
        raise ClientUpdateError(f"extras must be a dict of tensors, got {_short(result.extras)}")
    for key, value in result.extras.items():
        if not isinstance(key, str):
            raise ClientUpdateError(f"extras keys must be names, got {_short(key)}")
        tensor = _dense(value, f"extras[{key!r}]", None)
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
            torch.isfinite(tensor).all()
        ):
            raise ClientUpdateError(f"extras[{key!r}]: contains NaN or Inf")
    private = result.private_keys
    if not isinstance(private, frozenset) or not private <= reference.keys():
        raise ClientUpdateError(
            f"private_keys must be a frozenset of the model's tensor names, got {_short(private)}"
        )
    if result.update is None:
        # Held for secure aggregation: the client checked its update before masking.
        return 0.0
    return check_update(result.update, reference, max_norm, auxiliary)


def _check_metrics(metrics: object) -> None:
    if not isinstance(metrics, dict):
        raise ClientUpdateError(f"metrics must be a dict, got {_short(metrics)}")
    if len(metrics) > MAX_METRICS:
        raise ClientUpdateError(f"{len(metrics)} metrics, at most {MAX_METRICS} are accepted")
    for name, value in metrics.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_METRIC_NAME:
            raise ClientUpdateError(
                f"metric names must be text of 1..{MAX_METRIC_NAME} characters, got {_short(name)}"
            )
        # An int beyond a float's range (JSON allows 10**400) overflows math.isfinite.
        if type(value) not in (int, float) or not math.isfinite(_as_float(value)):
            raise ClientUpdateError(f"metric {name!r} must be a finite number, got {_short(value)}")


def _as_float(value: float) -> float:
    """``value`` as a float; infinite where it is beyond a float's range."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _dense(value: object, key: str, device: torch.device | None) -> torch.Tensor:
    """``value`` if it is a dense (strided) tensor on ``device`` (any device when None)."""
    if not isinstance(value, torch.Tensor):
        raise ClientUpdateError(f"{key}: expected a tensor, got {type(value).__name__}")
    if value.layout != torch.strided or value.is_meta or value.is_quantized:
        raise ClientUpdateError(f"{key}: expected a dense tensor, got layout {value.layout}")
    if device is not None and value.device != device:
        raise ClientUpdateError(f"{key}: on device {value.device}, model is on {device}")
    return value


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: what a client sends can be huge."""
    try:
        text = repr(value)
    except Exception:  # a hostile object's __repr__, or an int past the digit limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
