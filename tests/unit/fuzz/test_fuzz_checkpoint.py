"""Fuzzing checkpoint loading: bytes, payloads and federation states a damaged or foreign
file can hold all end in ``CheckpointError`` (naming the file and what to do), and a
checkpoint that loads leaves the federation in a state that fits its model.
"""

from __future__ import annotations

import copy
import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from strategies import fuzz, mutated, nested, only_raises, scalars, tensors

from fedgen.engine.checkpoint import (
    MAGIC,
    checkpoint_path,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from fedgen.errors import CheckpointError

B = "checkpoint"
FORMAT = 1
# Module-scoped federations are reset before every example.
SLOW_OK = {"suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


class Trained:
    """A federation after one round, its config's fingerprint and its state then."""

    def __init__(self, mnist_dir: Path, **overrides: object) -> None:
        from tiny_federation import tiny_config

        from fedgen.experiment import build_experiment

        self.cfg = tiny_config(mnist_dir, **{"federation.rounds": 1, **overrides})
        self.exp = build_experiment(self.cfg)
        self.fed = self.exp.federation
        self.fed.run()
        self.state = copy.deepcopy(self.fed.state_dict())
        self.private = self.exp.task.private_state()

    def payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.cfg.fingerprint(),
            "federation": copy.deepcopy(self.state),
        }

    def reset(self) -> None:
        self.fed.load_state_dict(copy.deepcopy(self.state))

    def restore(self, path: Path) -> None:
        self.reset()
        restore_checkpoint(
            self.fed,
            path,
            format=FORMAT,
            fingerprint=self.cfg.fingerprint(),
            private_reference=self.private,
        )


@pytest.fixture(scope="module")
def runs(mnist_dir: Path) -> dict[str, Trained]:
    """FedAvg with a moving average; and client-level DP with adaptive clipping."""
    return {
        "ema": Trained(mnist_dir, **{"strategy.params": "{min_clients: 2, ema_decay: 0.9}"}),
        "dp": Trained(
            mnist_dir,
            **{
                "strategy.params": "{min_clients: 1, sampling: poisson, weighted: false, "
                "fixed_denominator: true, fraction: 0.5}",
                "transforms": "[{name: clip, params: {max_norm: 1.0, target_quantile: 0.5, "
                "count_noise_stddev: 1.0}}, "
                "{name: client_dp, params: {noise_multiplier: 1.0}}]",
            },
        ),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def fresh_path(folder: Path) -> Path:
    return checkpoint_path(folder / uuid.uuid4().hex, 0)


def raw_file(folder: Path, body: bytes, digest: bytes | None = None) -> Path:
    """A file with fedgen's header over ``body`` (its true checksum unless ``digest``)."""
    path = fresh_path(folder)
    path.parent.mkdir(parents=True)
    path.write_bytes(MAGIC + (digest or hashlib.sha256(body).digest()) + body)
    return path


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def assert_fits(run: Trained) -> None:
    """After a load that succeeded: the federation's state has its model's structure."""
    state = run.fed.state_dict()
    model = run.state["global_state"]
    assert state["global_state"].keys() == model.keys()
    for key, ref in model.items():
        value = state["global_state"][key]
        assert value.shape == ref.shape and value.dtype == ref.dtype
        assert bool(torch.isfinite(value).all())
    assert type(state["next_round"]) is int and state["next_round"] >= 0
    assert len(state["transforms"]) == len(run.state["transforms"])


# -- bytes -----------------------------------------------------------------------------


@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=MAGIC)
@example(data=MAGIC + bytes(32))
@fuzz(B, max_examples=150)
def test_any_bytes_are_refused(folder: Path, data: bytes) -> None:
    path = fresh_path(folder)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with only_raises(B, CheckpointError) as err:
        load_checkpoint(path)
    assert err and str(path) in str(err[0])


@given(data=st.data())
@fuzz(B, max_examples=200, **SLOW_OK)
def test_damaged_checkpoint_files_are_refused(
    runs: dict[str, Trained], folder: Path, data: st.DataObject
) -> None:
    run = runs[data.draw(st.sampled_from(sorted(runs)))]
    good = save_checkpoint(fresh_path(folder), run.payload()).read_bytes()
    path = fresh_path(folder)
    path.parent.mkdir(parents=True)
    path.write_bytes(data.draw(mutated(good)))
    with only_raises(B, CheckpointError) as err:
        run.restore(path)
    assert err, "a damaged file was loaded"
    assert str(path) in str(err[0]) and "delete it" in str(err[0])


@given(data=st.data())
@example(data=None)
@fuzz(B, max_examples=200, **SLOW_OK)
def test_a_valid_header_over_a_garbage_payload_is_refused_or_fits(
    runs: dict[str, Trained], folder: Path, data: st.DataObject | None
) -> None:
    run = runs["ema"]
    good = torch_bytes(run.payload())
    body = b"PK\x03\x04" + bytes(100) if data is None else data.draw(mutated(good))
    path = raw_file(folder, body)
    with only_raises(B, CheckpointError) as err:
        run.restore(path)
    if err:
        assert str(path) in str(err[0])
    else:
        assert_fits(run)


# -- payloads of the wrong structure ---------------------------------------------------


def paths_in(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts and lists, ``()`` included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_in(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_in(v, (*prefix, i))
    return out


def hostile_value(like: Any) -> st.SearchStrategy[Any]:
    """Something in place of ``like``: a tensor of another shape or dtype, NaN, a plain value."""
    options = [scalars, nested(max_leaves=6), tensors(), tensors().map(lambda t: t.to_sparse())]
    if isinstance(like, torch.Tensor) and like.layout == torch.strided:
        shape = tuple(like.shape)
        options += [
            tensors(shape, like.dtype),
            tensors(shape),
            st.just(like.reshape(-1)),
            st.just(torch.zeros(*shape, 2)),
            st.just(like.to(torch.float64) if like.dtype != torch.float64 else like.half()),
        ]
    return st.one_of(options)


@st.composite
def restructured(draw: st.DrawFn, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with 1-3 entries replaced, deleted or added anywhere inside it."""
    out = copy.deepcopy(payload)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths_in(out)))
        if not where:
            continue
        node: Any = out
        for part in where[:-1]:
            node = node[part]
        last = where[-1]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete" and isinstance(node, dict):
            del node[last]
        elif action == "add" and isinstance(node, dict):
            node[draw(st.one_of(st.text(max_size=4), st.integers(), st.none()))] = draw(
                hostile_value(None)
            )
        else:
            node[last] = draw(hostile_value(node[last]))
    return out


@given(data=st.data())
@example(data=None)
@fuzz(B, max_examples=300, **SLOW_OK)
def test_payloads_of_the_wrong_structure_are_refused_or_fit(
    runs: dict[str, Trained], folder: Path, data: st.DataObject | None
) -> None:
    if data is None:  # the shape bug the old load_state_dict let through: a wrong dtype
        run = runs["ema"]
        payload = run.payload()
        gs = payload["federation"]["global_state"]
        gs[next(iter(gs))] = gs[next(iter(gs))].double()
    else:
        run = runs[data.draw(st.sampled_from(sorted(runs)))]
        payload = data.draw(restructured(run.payload()))
    path = save_checkpoint(fresh_path(folder), payload)
    with only_raises(B, CheckpointError) as err:
        run.restore(path)
    if err:
        assert str(path) in str(err[0])
    else:
        assert_fits(run)


@given(
    header=st.fixed_dictionaries(
        {},
        optional={
            "format": st.one_of(scalars, st.just(torch.ones(2)), st.just(FORMAT)),
            "fingerprint": st.one_of(scalars, st.just(torch.ones(2)), st.just([1])),
        },
    ),
    body=st.one_of(st.just("dict"), scalars, nested(max_leaves=4), tensors()),
)
@example(header={"format": torch.ones(2)}, body="dict")
@fuzz(B, max_examples=150, **SLOW_OK)
def test_foreign_payloads_are_refused(
    runs: dict[str, Trained], folder: Path, header: dict[str, Any], body: Any
) -> None:
    run = runs["ema"]
    payload = {**run.payload(), **header} if body == "dict" else body
    path = save_checkpoint(fresh_path(folder), payload)
    with only_raises(B, CheckpointError) as err:
        run.restore(path)
    if not err:
        assert header.get("format", FORMAT) == FORMAT
        assert_fits(run)


def test_a_good_checkpoint_restores_exactly(runs: dict[str, Trained], folder: Path) -> None:
    for run in runs.values():
        path = save_checkpoint(fresh_path(folder), run.payload())
        run.restore(path)
        state = run.fed.state_dict()
        for key, value in run.state["global_state"].items():
            assert torch.equal(state["global_state"][key], value)
        assert state["transforms"] == run.state["transforms"] or len(state["transforms"]) == len(
            run.state["transforms"]
        )
        assert state["next_round"] == run.state["next_round"] == 1


# -- through the experiment ------------------------------------------------------------


def test_restore_latest_refuses_a_payload_of_the_wrong_structure(
    runs: dict[str, Trained], tmp_path: Path
) -> None:
    from fedgen.experiment import restore_latest

    run = runs["ema"]
    run.reset()
    payload = run.payload()
    payload["federation"]["private_states"] = {"x": [1]}
    save_checkpoint(checkpoint_path(tmp_path, 0), payload)
    with pytest.raises(CheckpointError, match="private_states"):
        restore_latest(run.fed, tmp_path, run.cfg)


def test_a_moving_average_missing_tensors_is_refused(runs: dict[str, Trained], folder: Path):
    run = runs["ema"]
    payload = run.payload()
    ema = payload["federation"]["strategy"]["ema"]
    del ema[next(iter(ema))]
    path = save_checkpoint(fresh_path(folder), payload)
    with pytest.raises(CheckpointError, match="ema"):
        run.restore(path)
