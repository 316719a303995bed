"""The scikit-learn and orange3 tables: shapes, schemas, the .tab reader, the wheel's checks."""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedgen.data.orange_tab import TabColumn, read_tab
from fedgen.data.table_data import SiloPartition, TableDirichletPartition
from fedgen.data.table_sources import (
    BREAST_CANCER,
    BREAST_CANCER_FEATURES,
    HEART_DISEASE,
    ORANGE3,
    TITANIC,
)
from fedgen.errors import ChecksumError, ConfigError, DataMissingError

PIP_DOWNLOAD = "pip download --no-deps orange3==3.40.0 -d"


@pytest.fixture(scope="module")
def orange_data(shared_data: Path) -> Path:
    """The test data folder holding the orange3 wheel; skips, with the command, if it does not."""
    if ORANGE3.locate(shared_data) is None:
        pytest.skip(
            f"the orange3 wheel is not in {ORANGE3.folder(shared_data)}; fetch it with: "
            f"{ORANGE3.pip_command(shared_data)}"
        )
    return shared_data


def test_breast_cancer_is_sklearns_table_with_the_diagnosis_as_names():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    table = BREAST_CANCER.load()
    assert table.shape == (569, 31)
    assert table.columns.tolist() == [*BREAST_CANCER_FEATURES, "diagnosis"]
    assert table["diagnosis"].value_counts().to_dict() == {"benign": 357, "malignant": 212}
    assert BREAST_CANCER.target in BREAST_CANCER.schema.categorical()
    assert BREAST_CANCER.silo_column is None
    # Oracle: scikit-learn's own loader of the same file.
    reference = sklearn_datasets.load_breast_cancer()
    assert list(reference.feature_names) == list(BREAST_CANCER_FEATURES)
    assert np.array_equal(table[list(BREAST_CANCER_FEATURES)].to_numpy(), reference.data)
    assert (table["diagnosis"].to_numpy() == reference.target_names[reference.target]).all()


def test_heart_disease_loads_without_its_six_incomplete_rows(orange_data):
    table = HEART_DISEASE.load(orange_data)
    assert table.shape == (297, 14)
    assert table.columns.tolist() == HEART_DISEASE.schema.names
    assert not table.isna().any().any()
    assert table["diameter narrowing"].value_counts().to_dict() == {"0": 160, "1": 137}
    assert table["chest pain"].value_counts().to_dict() == {
        "asymptomatic": 142,
        "non-anginal": 83,
        "atypical ang": 49,
        "typical ang": 23,
    }
    for column in (HEART_DISEASE.target, HEART_DISEASE.silo_column):
        assert column in HEART_DISEASE.schema.categorical()


def test_titanic_loads_all_categorical(orange_data):
    table = TITANIC.load(orange_data)
    assert table.shape == (2201, 4)
    assert TITANIC.schema.categorical() == ["status", "age", "sex", "survived"]
    assert table["survived"].value_counts().to_dict() == {"no": 1490, "yes": 711}
    assert table["status"].value_counts().to_dict() == {
        "crew": 885,
        "third": 706,
        "first": 325,
        "second": 285,
    }
    assert (TITANIC.target, TITANIC.silo_column) == ("survived", "status")


def test_wheel_sources_are_present_where_fedgen_data_looks(orange_data):
    status = TITANIC.status(orange_data)
    assert status.present and status.found_at == ORANGE3.locate(orange_data)
    assert status.searched == [orange_data.resolve() / "orange3"]


TINY_TAB = (
    "age\tsmoker\tward\tnote\tid\toutcome\n"
    "c\td\tgeneral intensive\\ care\ts\ts\tyes no\n"
    "\t\t\tmeta\tignore\tclass\n"
    "61.5\tyes\tgeneral\tfirst visit\t7\tno\n"
    "?\t\tintensive care\t?\t8\tyes\n"
)


def test_the_tab_reader_reads_types_flags_escaped_values_and_missing_cells():
    table = read_tab(TINY_TAB)
    assert table.columns == (
        TabColumn("age", "continuous"),
        TabColumn("smoker", "discrete"),
        TabColumn("ward", "discrete", values=("general", "intensive care")),
        TabColumn("note", "string", role="meta"),
        TabColumn("outcome", "discrete", role="class", values=("yes", "no")),
    )
    assert table.class_columns == ["outcome"]
    frame = table.frame
    assert frame.columns.tolist() == ["age", "smoker", "ward", "note", "outcome"]  # id ignored
    assert frame["age"].dtype == np.float64
    assert frame["age"].iloc[0] == 61.5 and np.isnan(frame["age"].iloc[1])
    assert frame["smoker"].tolist() == ["yes", None]
    assert frame["ward"].tolist() == ["general", "intensive care"]
    assert frame["note"].tolist() == ["first visit", None]
    assert frame["outcome"].tolist() == ["no", "yes"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\tb\nc\td\n\t\nx\t1\n", "line 4: continuous column 'a' holds 'x'"),
        ("a\nred green\n\nblue\n", "line 4: column 'a' holds 'blue'"),
        ("a\tb\nc\tc\n\t\n1\t2\t3\n", "line 4 has 3 cells"),
        ("a\nfloat\n\n1\n", "type 'float'"),
        ("a\nc\nweight\n1\n", "flag 'weight'"),
        ("a\nc\n", "three header lines"),
    ],
)
def test_the_tab_reader_names_the_line_and_column_of_a_problem(text, message):
    with pytest.raises(ValueError, match=message):
        read_tab(text)


def _copy_wheel_with_member(wheel: Path, target: Path, member: str, data: bytes) -> None:
    """``wheel`` copied to ``target`` with ``member`` rewritten to ``data`` (stored, not
    compressed again: the copy is quicker and reads the same)."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            stored = zipfile.ZipInfo(info.filename, info.date_time)
            copy.writestr(stored, data if info.filename == member else source.read(info))


def test_a_tampered_member_is_a_checksum_error_naming_both_digests(orange_data, tmp_path):
    # Prepare: the real wheel, with one value of titanic.tab changed.
    wheel = ORANGE3.locate(orange_data)
    assert wheel is not None
    with zipfile.ZipFile(wheel) as archive:
        original = archive.read(TITANIC.member)
    tampered = original.replace(b"first\tadult\tmale\tyes", b"first\tadult\tmale\tno", 1)
    (tmp_path / "orange3").mkdir()
    _copy_wheel_with_member(wheel, tmp_path / "orange3" / wheel.name, TITANIC.member, tampered)
    # Execute
    with pytest.raises(ChecksumError) as caught:
        TITANIC.load(tmp_path)
    # Assert: the untouched member still loads from the same copy.
    message = str(caught.value)
    assert hashlib.sha256(tampered).hexdigest() in message and TITANIC.sha256 in message
    assert f"{PIP_DOWNLOAD} {tmp_path.resolve() / 'orange3'}" in message
    assert HEART_DISEASE.load(tmp_path).shape == (297, 14)


def test_a_file_that_is_no_wheel_is_a_checksum_error(orange_data, tmp_path):
    wheel = ORANGE3.locate(orange_data)
    assert wheel is not None
    (tmp_path / "orange3").mkdir()
    (tmp_path / "orange3" / wheel.name).write_bytes(wheel.read_bytes()[:100_000])
    with pytest.raises(ChecksumError, match=re.escape("cannot read Orange/datasets/titanic.tab")):
        TITANIC.load(tmp_path)


def test_a_missing_wheel_is_data_missing_with_the_pip_download_command(tmp_path, monkeypatch):
    # The default data folder is searched after the given one (set-up downloads the wheel
    # there when the data folder is read-only): an empty one here, so nothing is found.
    monkeypatch.setattr("fedgen.data.orange_tab.DEFAULT_DATA_DIR", tmp_path / "default")
    folder = tmp_path.resolve() / "orange3"
    status = HEART_DISEASE.status(tmp_path)
    assert not status.present and status.found_at is None
    assert status.searched == [folder]
    assert status.provide == f"{PIP_DOWNLOAD} {folder}"
    with pytest.raises(DataMissingError, match=re.escape(f"{PIP_DOWNLOAD} {folder}")):
        HEART_DISEASE.load(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"{PIP_DOWNLOAD} {folder}")):
        HEART_DISEASE.download(tmp_path)


def test_silos_refuse_a_table_without_a_silo_column_and_dirichlet_splits_it():
    with pytest.raises(ConfigError, match="breast_cancer has no silo column") as caught:
        SiloPartition(max_modes=2).federate("breast_cancer", 3, 0)
    assert "table_dirichlet" in str(caught.value) and "'diagnosis'" in str(caught.value)
    fed = TableDirichletPartition(alpha=0.5, max_modes=1).federate("breast_cancer", 3, 0)
    assert sum(c.num_examples for c in fed.clients) + len(fed.holdout) == 569
    # A column named in the recipe still makes silos of a table without its own.
    with pytest.raises(ConfigError, match="'mean radius' is not one of"):
        SiloPartition(column="mean radius").federate("breast_cancer", 2, 0)


def test_heart_disease_silos_are_the_chest_pain_presentations(orange_data, monkeypatch, tmp_path):
    # federate() reads the wheel from $FEDGEN_DATA_DIR, as a recipe's run does; a copy
    # holding only the wheel shows nothing else is needed.
    wheel = ORANGE3.locate(orange_data)
    assert wheel is not None
    (tmp_path / "orange3").mkdir()
    shutil.copy(wheel, tmp_path / "orange3" / wheel.name)
    monkeypatch.setenv("FEDGEN_DATA_DIR", str(tmp_path))
    fed = SiloPartition(max_modes=2).federate("heart_disease", 3, seed=0)
    owners = [set(c.rows["chest pain"]) for c in fed.clients]
    # Largest value first to the lightest client: both anginas end up together.
    assert owners == [{"asymptomatic"}, {"non-anginal"}, {"atypical ang", "typical ang"}]
