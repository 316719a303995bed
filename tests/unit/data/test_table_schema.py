"""Table schemas: every kind of bad input is a clear error naming the column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedgen.data.table_schema import ColumnType, SchemaError, TableSchema

SCHEMA = TableSchema.from_mapping({"age": "continuous", "visits": "integer", "plan": "categorical"})


def _frame(**overrides):
    base = {"age": [31.5, 40.0], "visits": [0, 3], "plan": ["a", "b"]}
    return pd.DataFrame({**base, **overrides})


def test_a_matching_table_is_typed_in_schema_order_with_categories_as_strings():
    frame = _frame(plan=[1, 2])[["plan", "visits", "age"]]
    checked = SCHEMA.check(frame)
    assert list(checked.columns) == ["age", "visits", "plan"]
    assert checked["plan"].tolist() == ["1", "2"]
    assert checked["visits"].dtype == np.float64
    assert [c.type for c in SCHEMA.columns] == [
        ColumnType.CONTINUOUS,
        ColumnType.INTEGER,
        ColumnType.CATEGORICAL,
    ]


def test_a_column_of_an_unknown_type_is_refused_with_the_types_there_are():
    with pytest.raises(
        SchemaError, match=r"column 'when' has unknown type 'datetime'.*categorical"
    ):
        TableSchema.from_mapping({"age": "continuous", "when": "datetime"})


def test_nans_are_refused_naming_the_column_and_how_many():
    with pytest.raises(SchemaError, match=r"column 'age' has 1 missing values"):
        SCHEMA.check(_frame(age=[np.nan, 3.0]))
    with pytest.raises(SchemaError, match=r"column 'plan' has 1 missing values"):
        SCHEMA.check(_frame(plan=["a", None]))


def test_a_schema_that_does_not_match_the_table_names_both_sides():
    with pytest.raises(SchemaError, match=r"columns \['plan'\] of the schema are not in"):
        SCHEMA.check(_frame().drop(columns=["plan"]))
    with pytest.raises(SchemaError, match=r"has columns \['extra'\] the schema does not name"):
        SCHEMA.check(_frame(extra=[1, 2]))


def test_values_unfit_for_their_type_are_refused():
    with pytest.raises(SchemaError, match=r"'age' is continuous but holds 'old'"):
        SCHEMA.check(_frame(age=["old", 3.0]))
    with pytest.raises(SchemaError, match=r"'visits' is integer but holds fractions"):
        SCHEMA.check(_frame(visits=[0.5, 1.0]))
