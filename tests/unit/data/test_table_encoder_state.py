"""The merged table encoder as JSON values: exact round trip, a client side built from the
recipe without fitting it again, and a table recipe on the process pool."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import fedgen.data.table_encoder as table_encoder
from fedgen.config import load_config
from fedgen.data.table_data import SiloPartition
from fedgen.data.table_encoder import (
    TableEncoder,
    encoder_from_state,
    encoder_state,
    fit_encoder_federated,
)
from fedgen.data.table_schema import SchemaError, TableSchema
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


def test_an_encoder_fit_is_reused_only_for_the_same_rows_and_settings(monkeypatch):
    # Prepare: fair's client rows; every mixture fit counted; this process's fits forgotten.
    fair = build_experiment(load_config("configs/tabular_fair_ctgan.yaml", TINY)).data
    frames = [c.rows for c in fair.clients]
    fits: list[int] = []
    fit_mixture = table_encoder._fit_mixture

    def counted(*args, **kwargs):
        fits.append(1)
        return fit_mixture(*args, **kwargs)

    monkeypatch.setattr(table_encoder, "_fit_mixture", counted)
    monkeypatch.setattr(table_encoder, "_FITTED", {})

    def fitted(rows=frames, modes=4, seed=11) -> tuple[TableEncoder, bool]:
        before = len(fits)
        return fit_encoder_federated(rows, fair.schema, modes, seed), len(fits) > before

    first, fitted_first = fitted()
    # Execute: equal rows (copies) and settings; then one setting or one value changed.
    again, fitted_again = fitted([f.copy() for f in frames])
    renamed = frames[0].copy()
    column = fair.schema.categorical()[0]
    renamed.loc[0, column] = next(v for v in renamed[column].unique() if v != renamed[column][0])
    changed = [fitted(seed=12)[1], fitted(modes=3)[1], fitted([renamed, *frames[1:]])[1]]
    # Assert: the equal input is answered from memory with an equal encoder that shares
    # no array with the first; every change fits again.
    assert fitted_first and not fitted_again and all(changed)
    assert encoder_state(again) == encoder_state(first)
    assert again.correlation is not None and first.correlation is not None
    assert again.correlation is not first.correlation
    assert all(again.pairs[k] is not first.pairs[k] for k in first.pairs)


def test_the_fit_digest_tells_missing_values_apart_as_the_fit_does():
    # None and NaN are one value to pandas' hash but "None" and "nan" to the fit.
    schema = TableSchema.from_mapping({"kind": "categorical", "size": "continuous"})
    with_none = pd.DataFrame({"kind": ["a", None], "size": [1.0, 2.0]})
    with_nan = pd.DataFrame({"kind": ["a", np.nan], "size": [1.0, 2.0]})
    assert table_encoder._fit_input_digest(with_none, schema) != (
        table_encoder._fit_input_digest(with_nan, schema)
    )
    assert table_encoder._fit_input_digest(with_none, schema) == (
        table_encoder._fit_input_digest(with_none.copy(), schema)
    )
