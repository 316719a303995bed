"""Vertical table partitions: column groups checked, records aligned by id, own encoders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedgen.data.table_sources import get_table_source
from fedgen.data.table_vertical import (
    RECORD_ID,
    VerticalPartition,
    align_records,
    check_column_groups,
)
from fedgen.errors import ConfigError

FAIR_SPLIT = [
    ["rate_marriage", "age", "yrs_married", "children"],
    ["religious", "educ", "occupation", "occupation_husb", "had_affair"],
]


@pytest.fixture(scope="module")
def fair_schema():
    return get_table_source("fair").schema


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([["age", "salary"], FAIR_SPLIT[1] + FAIR_SPLIT[0][:1] + FAIR_SPLIT[0][2:]], "'salary'"),
        ([FAIR_SPLIT[0], [*FAIR_SPLIT[1], "age"]], "'age' is in client 0 and client 1"),
        ([FAIR_SPLIT[0], FAIR_SPLIT[1][:-1]], r"\['had_affair'\] belong to no client"),
        ([FAIR_SPLIT[0], FAIR_SPLIT[1], []], "client 2 holds no column"),
    ],
)
def test_bad_column_groups_are_refused_with_the_fix(fair_schema, groups, message):
    with pytest.raises(ConfigError, match=message):
        check_column_groups(groups, fair_schema)


def test_every_problem_of_the_groups_is_listed_at_once(fair_schema):
    with pytest.raises(ConfigError) as err:
        check_column_groups([["age", "age", "nope"]], fair_schema)
    text = str(err.value)
    assert "'nope'" in text and "'age' is in client 0 and client 0" in text
    assert "belong to no client" in text


def test_records_are_aligned_by_id_and_misaligned_ids_are_refused():
    a = pd.DataFrame({RECORD_ID: [3, 1, 2], "x": [30, 10, 20]})
    b = pd.DataFrame({RECORD_ID: [1, 2, 3], "y": ["a", "b", "c"]})
    left, right = align_records([a, b])
    assert left["x"].tolist() == [10, 20, 30] and right["y"].tolist() == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"record ids not aligned.*only in client 1: \[4\]"):
        align_records([a, pd.DataFrame({RECORD_ID: [1, 2, 4], "y": [0, 0, 0]})])
    with pytest.raises(ConfigError, match="more than once"):
        align_records([a, pd.DataFrame({RECORD_ID: [1, 1, 3], "y": [0, 0, 0]})])
    with pytest.raises(ConfigError, match="no 'record_id' column"):
        align_records([a, pd.DataFrame({"y": [0, 0, 0]})])


def test_a_vertical_table_gives_each_client_its_columns_of_every_record():
    # Prepare / Execute
    table = VerticalPartition(FAIR_SPLIT, max_modes=3).federate("fair", 2, seed=0)
    # Assert: same records everywhere, own columns only, own encoders joined in schema order.
    assert [list(c.rows.columns) for c in table.clients] == FAIR_SPLIT
    assert table.clients[0].num_examples == table.clients[1].num_examples
    assert len(table.record_ids) == table.clients[0].num_examples
    assert table.encoder.client_bytes == (0, 0)  # no statistic left its owner
    assert [e.name for e in table.encoder.encodings] == table.schema.names
    joined = table.train
    assert list(joined.columns) == table.schema.names and len(joined) + len(table.holdout) == 6366
    for i, client in enumerate(table.clients):
        positions = table.encoder.owner_positions(i)
        assert client.encoded.shape[1] == len(positions) == table.encoder.owner_encoder(i).dim
    assert np.array_equal(
        np.sort(np.concatenate([table.encoder.owner_positions(i) for i in range(2)])),
        np.arange(table.encoder.dim),
    )
    with pytest.raises(ConfigError, match="single group"):
        table.pooled_client()


def test_the_client_count_must_match_the_groups():
    with pytest.raises(ConfigError, match=r"data\.num_clients=2"):
        VerticalPartition(FAIR_SPLIT).federate("fair", 3, seed=0)
