"""Table sources and federations: checksums, silos, Dirichlet skew, holdout, DP refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedgen.data.table_data import (
    SiloPartition,
    TableDirichletPartition,
    federate_tables,
    split_holdout,
)
from fedgen.data.table_sources import FAIR, RANDHIE, get_table_source
from fedgen.errors import ChecksumError, ConfigError, DataMissingError


@pytest.fixture(scope="module")
def fair_silos():
    return SiloPartition(max_modes=3).federate("fair", 3, seed=0)


def test_the_bundled_tables_load_as_documented():
    fair = FAIR.load()
    assert fair.shape == (6366, 9) and set(fair["had_affair"]) == {"yes", "no"}
    randhie = RANDHIE.load()
    assert randhie.shape == (20190, 8)
    assert sorted(set(randhie["coins"]), key=int) == ["0", "25", "50", "95", "100"]
    assert randhie["health"].value_counts().to_dict() == {
        "excellent": 11019,
        "good": 7309,
        "fair": 1560,
        "poor": 302,
    }


def test_a_changed_file_or_a_missing_package_is_a_clear_error():
    with pytest.raises(ChecksumError, match="expected 0000"):
        dataclasses.replace(FAIR, sha256="0" * 64).load()
    with pytest.raises(DataMissingError, match="pip install"):
        dataclasses.replace(FAIR, module="no_such_package_here").load()
    tables = "breast_cancer, fair, heart_disease, randhie, titanic"
    with pytest.raises(ConfigError, match=f"not a table source; choose one of: {tables}"):
        get_table_source("mnist")


def test_silos_are_whole_values_of_the_column_and_the_holdout_is_apart(fair_silos):
    table = FAIR.load()
    owners = [set(c.rows["occupation"]) for c in fair_silos.clients]
    assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    assert set().union(*owners) == set(table["occupation"])
    assert len(fair_silos.holdout) == round(0.2 * len(table))
    assert sum(c.num_examples for c in fair_silos.clients) + len(fair_silos.holdout) == len(table)
    # Largest value first to the lightest client: occupation 3 (2,244 training rows) alone.
    assert owners[0] == {"3"}


def test_holdout_folds_test_every_row_once_and_refuse_a_fold_out_of_range(shared_data, monkeypatch):
    # heart_disease is read from orange3's wheel, which set-up puts in the test data
    # folder (or, when that is read-only, in the default one, which is searched too).
    monkeypatch.setenv("FEDGEN_DATA_DIR", str(shared_data))
    table = get_table_source("heart_disease").load()
    held = [split_holdout(table, 0.2, seed=3, fold=f) for f in range(5)]
    for train, holdout in held:
        assert len(train) + len(holdout) == len(table)
        assert set(train.index).isdisjoint(holdout.index)
        assert abs(len(holdout) - len(table) / 5) <= 1
    every = np.concatenate([holdout.index.to_numpy() for _, holdout in held])
    assert sorted(every) == list(table.index)
    # The partitioner passes its fold on: the federation's holdout is that fold's rows.
    fed = TableDirichletPartition(min_size=5, holdout_fold=2).federate("heart_disease", 2, seed=3)
    assert len(fed.holdout) == len(held[2][1])
    assert (fed.holdout.to_numpy() == held[2][1].to_numpy()).all()
    with pytest.raises(ConfigError, match=r"makes 5 folds; use a fold in 0\.\.4"):
        split_holdout(table, 0.2, seed=3, fold=5)


def test_clients_hold_their_rows_encoded_by_the_merged_encoder(fair_silos):
    client = fair_silos.clients[1]
    assert client.encoded.shape == (client.num_examples, fair_silos.encoder.dim)
    decoded = fair_silos.encoder.decode(client.encoded.numpy())
    assert (decoded["had_affair"] == client.rows["had_affair"]).all()
    assert fair_silos.to_json()["encoder"]["client_bytes"] == list(fair_silos.encoder.client_bytes)


def test_dirichlet_skew_on_the_target_gives_unequal_target_shares():
    fed = TableDirichletPartition(alpha=0.3, min_size=50, max_modes=2).federate("fair", 4, 1)
    shares = [float((c.rows["had_affair"] == "yes").mean()) for c in fed.clients]
    assert min(c.num_examples for c in fed.clients) >= 50
    assert max(shares) - min(shares) > 0.2


def test_recipes_that_cannot_work_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="at most 6 clients"):
        SiloPartition(max_modes=2).federate("fair", 7, 0)
    with pytest.raises(ConfigError, match="'age' is not one of"):
        SiloPartition(column="age").federate("fair", 2, 0)
    with pytest.raises(ConfigError, match="differential privacy is refused"):
        federate_tables(["fair"], SiloPartition(), 3, 0, dp=True)
    with pytest.raises(ConfigError, match="a table federates alone"):
        federate_tables(["fair", "randhie"], SiloPartition(), 3, 0, dp=False)
    with pytest.raises(ConfigError, match="split by table_silos or table_dirichlet"):
        federate_tables(["fair"], object(), 3, 0, dp=False)


def test_training_batches_are_encoded_rows_of_the_client(fair_silos):
    import torch

    client = fair_silos.clients[2]
    x, idx = next(client.batches(64, torch.Generator().manual_seed(0)))
    assert x.shape == (64, fair_silos.encoder.dim)
    assert np.array_equal(x.numpy(), client.encoded[idx].numpy())
