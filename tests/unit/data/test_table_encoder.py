"""The federated table encoder: merged statistics equal pooled ones, encoding round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedgen.data.table_encoder import (
    client_statistics,
    encoder_from_state,
    encoder_state,
    fit_encoder_federated,
    merge_statistics,
)
from fedgen.data.table_schema import SchemaError
from fedgen.data.table_sources import FAIR


@pytest.fixture(scope="module")
def fair_parts():
    table = FAIR.load()
    # Three clients by occupation groups: very different shares of every column.
    groups = [("1", "2"), ("3",), ("4", "5", "6")]
    return table, [table[table["occupation"].isin(g)].reset_index(drop=True) for g in groups]


@pytest.fixture(scope="module")
def fair_encoder(fair_parts):
    _, parts = fair_parts
    return fit_encoder_federated(parts, FAIR.schema, max_modes=4, seed=0)


def test_merged_category_counts_and_moments_equal_the_pooled_ones(fair_parts, fair_encoder):
    table, _ = fair_parts
    for column in FAIR.schema.columns:
        enc = fair_encoder.encoding(column.name)
        if column.numeric:
            x = table[column.name].to_numpy()
            assert enc.mean == pytest.approx(x.mean(), rel=1e-12)
            assert enc.std == pytest.approx(x.std(), rel=1e-9)
            assert (enc.minimum, enc.maximum) == (x.min(), x.max())
        else:
            pooled = table[column.name].value_counts()
            assert dict(zip(enc.categories, enc.counts.tolist(), strict=True)) == pooled.to_dict()


def test_no_row_is_sent_only_counts_moments_and_mixtures(fair_parts):
    _, parts = fair_parts
    stats = client_statistics(parts[0], FAIR.schema, max_modes=4, seed=0)
    age = stats["columns"]["age"]
    assert set(age) == {"count", "sum", "sum_sq", "min", "max", "mixture"}
    assert len(age["mixture"]["means"]) <= 4
    assert set(stats["columns"]["had_affair"]) == {"counts"}


def test_merging_is_the_same_whatever_the_order_of_clients_for_counts_and_moments(fair_parts):
    _, parts = fair_parts
    stats = [client_statistics(p, FAIR.schema, 4, i) for i, p in enumerate(parts)]
    a = merge_statistics(stats, FAIR.schema, 4, 0)
    b = merge_statistics(stats[::-1], FAIR.schema, 4, 0)
    ra, rb = a.encoding("religious"), b.encoding("religious")
    assert ra.categories == rb.categories and ra.counts.tolist() == rb.counts.tolist()
    assert a.encoding("age").mean == pytest.approx(b.encoding("age").mean, rel=1e-12)


def test_encoding_round_trips_categories_exactly_and_numbers_closely(fair_parts, fair_encoder):
    table, _ = fair_parts
    encoded = fair_encoder.encode(table, np.random.default_rng(0))
    assert encoded.shape == (len(table), fair_encoder.dim)
    decoded = fair_encoder.decode(encoded)
    for column in FAIR.schema.columns:
        if column.numeric:
            error = np.abs(decoded[column.name].to_numpy() - table[column.name].to_numpy())
            # Offsets are clipped at 0.99 (CTGAN): a value 4 sigmas out of its drawn mode
            # decodes to that edge; nearly every value comes back to float precision.
            assert np.mean(error < 1e-4) > 0.97
        else:
            pd.testing.assert_series_equal(decoded[column.name], table[column.name].astype(object))


def test_rows_with_a_category_the_encoder_never_saw_are_refused(fair_parts, fair_encoder):
    table, _ = fair_parts
    bad = table.head(3).copy()
    bad["occupation"] = "7"
    with pytest.raises(ValueError, match=r"column 'occupation' holds categories \['7'\]"):
        fair_encoder.encode(bad, np.random.default_rng(0))


def test_merged_correlations_of_numeric_columns_equal_the_pooled_ones(fair_parts, fair_encoder):
    table, _ = fair_parts
    pooled = np.corrcoef(table[["age", "yrs_married", "children"]].to_numpy().T)
    np.testing.assert_allclose(fair_encoder.correlation, pooled, rtol=1e-9, atol=1e-12)


def test_merged_joint_counts_of_categorical_pairs_equal_the_pooled_contingency_tables(
    fair_parts, fair_encoder
):
    table, _ = fair_parts
    a, b = fair_encoder.encoding("occupation"), fair_encoder.encoding("had_affair")
    pooled = pd.crosstab(table["occupation"].astype(str), table["had_affair"].astype(str))
    expected = pooled.reindex(index=list(a.categories), columns=list(b.categories), fill_value=0)
    got = fair_encoder.joint_counts("occupation", "had_affair")
    assert got is not None and got.tolist() == expected.to_numpy().tolist()
    # Either order; every pair of the six categorical columns is there.
    assert fair_encoder.joint_counts("had_affair", "occupation").tolist() == got.T.tolist()
    assert len(fair_encoder.pairs) == 6 * 5 // 2
    # They travel with the encoder; one saved before clients sent them has none.
    state = encoder_state(fair_encoder)
    back = encoder_from_state(state, FAIR.schema)
    assert back.joint_counts("occupation", "had_affair").tolist() == got.tolist()
    older = encoder_from_state({k: v for k, v in state.items() if k != "pairs"}, FAIR.schema)
    assert older.joint_counts("occupation", "had_affair") is None


def test_joint_counts_naming_a_category_no_client_counted_are_refused(fair_parts):
    _, parts = fair_parts
    stats = [client_statistics(p, FAIR.schema, 4, i) for i, p in enumerate(parts)]
    stats[1]["pairs"]["occupation|had_affair"]["ghost"] = {"yes": 3}
    with pytest.raises(SchemaError, match="name a category no client counted"):
        merge_statistics(stats, FAIR.schema, 4, 0)
