"""Benchmark tables: a section header, then rows appended one by one."""

from __future__ import annotations

import pytest

from fedgen.report.results_table import ResultsTable, format_cell


def test_section_then_rows_are_appended_in_order(tmp_path):
    # Prepare
    path = tmp_path / "results" / "t.md"
    table = ResultsTable(path, ["method", "accuracy", "seconds"])
    # Execute
    table.start("demo", notes=["one note"], command="python bench.py --x 1")
    table.append({"method": "fedavg", "accuracy": 0.81234, "seconds": 1234.5})
    table.append({"method": "central"})
    table.start("again", command="python bench.py")
    # Assert
    text = path.read_text()
    assert "- command: `python bench.py --x 1`" in text and "- one note" in text
    assert "| method | accuracy | seconds |" in text
    rows = [line for line in text.splitlines() if line.startswith("| fedavg") or "central" in line]
    assert rows == ["| fedavg | 0.8123 | 1234 |", "| central | - | - |"]
    assert text.count("## ") == 2  # a second invocation adds a section, keeps the first


def test_unknown_column_is_an_error(tmp_path):
    table = ResultsTable(tmp_path / "t.md", ["a"])
    with pytest.raises(ValueError, match="not in the table"):
        table.append({"b": 1})


def test_cells():
    assert format_cell(None) == "-"
    assert format_cell(float("nan")) == "nan"
    assert format_cell(3) == "3"
    assert format_cell(0.000123456) == "0.0001235"
