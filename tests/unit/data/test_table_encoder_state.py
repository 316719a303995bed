"""The merged table encoder as JSON values: exact round trip, a client side built from the
recipe without fitting it again, and a table recipe on the process pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fedgen.data.table_encoder as table_encoder
from fedgen.config import load_config
from fedgen.data.table_data import SiloPartition
from fedgen.data.table_encoder import encoder_from_state, encoder_state
from fedgen.data.table_schema import SchemaError
from fedgen.experiment import RecipeClientSide, build_experiment

TINY = [
    "data.num_clients=2",
    "data.partition.params={max_modes: 2}",
    "task.params={batch_size: 100, pac: 10, hidden: 32, noise_dim: 16}",
    "federation.rounds=2",
    "federation.local_steps=2",
    "eval.every=0",
    "eval.final=false",
    "threads=1",
]


def test_the_encoder_state_is_json_and_round_trips_exactly():
    fair = SiloPartition(max_modes=3).federate("fair", 2, seed=0)
    state = json.loads(json.dumps(encoder_state(fair.encoder)))
    again = encoder_from_state(state, fair.schema)
    rows = fair.clients[0].rows
    rng = [np.random.default_rng(5) for _ in range(2)]
    assert np.array_equal(fair.encoder.encode(rows, rng[0]), again.encode(rows, rng[1]))
    assert np.array_equal(fair.encoder.correlation, again.correlation)
    assert again.client_bytes == fair.encoder.client_bytes
    with pytest.raises(SchemaError, match="not the table's"):
        encoder_from_state({**state, "encodings": state["encodings"][1:]}, fair.schema)


def test_a_client_side_built_from_the_recipe_does_not_fit_the_encoder(monkeypatch):
    # Prepare: the server's build, then no mixture may be fitted any more.
    cfg = load_config("configs/tabular_fair_ctgan.yaml", TINY)
    server = build_experiment(cfg)
    side = server.federation.client_side
    assert isinstance(side, RecipeClientSide) and side.table_encoder is not None

    def no_fit(*args, **kwargs):
        raise AssertionError("the client side fitted a mixture again")

    monkeypatch.setattr(table_encoder, "_fit_mixture", no_fit)
    monkeypatch.setattr(table_encoder, "_FITTED", {})  # nor be taken from this process's fits
    # Execute
    kit = side.open()
    # Assert: the client encodes its rows exactly as the server's build did.
    for theirs in server.data.clients:
        assert torch.equal(kit.data(theirs.client_id).encoded, theirs.encoded)


def test_a_table_recipe_on_the_process_pool_trains_the_in_process_model():
    cfg = load_config("configs/tabular_fair_ctgan.yaml", TINY)
    pool_cfg = load_config(
        "configs/tabular_fair_ctgan.yaml",
        [*TINY, "backend.name=process_pool", "backend.params={workers: 2}"],
    )
    ref, pool = build_experiment(cfg).federation, build_experiment(pool_cfg).federation
    try:
        assert ref.run() and pool.run()
    finally:
        pool.backend.close()
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], pool.global_state[k]), k
    for cid, private in ref.private_states.items():
        assert all(torch.equal(v, pool.private_states[cid][k]) for k, v in private.items())


def test_a_table_built_again_in_one_process_reuses_the_fit_and_owns_its_copy(monkeypatch):
    # Prepare: the first build fits the encoder; after it no mixture may be fitted.
    cfg = load_config("configs/tabular_fair_ctgan.yaml", TINY)
    monkeypatch.setattr(table_encoder, "_FITTED", {})
    first = build_experiment(cfg).data

    def no_fit(*args, **kwargs):
        raise AssertionError("the same table's encoder was fitted again")

    monkeypatch.setattr(table_encoder, "_fit_mixture", no_fit)
    # Execute: the same recipe again, and with another seed (which must fit).
    again = build_experiment(cfg).data
    with pytest.raises(AssertionError, match="fitted again"):
        build_experiment(load_config("configs/tabular_fair_ctgan.yaml", [*TINY, "seed=7"]))
    # Assert: an equal encoder, not the same object, encoding the rows alike.
    assert again.encoder is not first.encoder
    assert encoder_state(again.encoder) == encoder_state(first.encoder)
    for mine, theirs in zip(again.clients, first.clients, strict=True):
        assert torch.equal(mine.encoded, theirs.encoded)
