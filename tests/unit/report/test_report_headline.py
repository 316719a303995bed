"""The top of the report: headline figures in human units, and the partition of tables."""

from __future__ import annotations

import json

from fedgen.report import write_report
from fedgen.report.headline import headline_figures
from fedgen.report.partition import partition_maps


def test_headline_reads_quality_privacy_bytes_and_time_in_human_units():
    # Prepare
    summary = {
        "status": "completed",
        "rounds": 60,
        "seconds": 414.2,
        "bytes_up": 170_665_920,
        "bytes_total": 341_331_840,
        "evaluated_round": 59,
        "tstr_accuracy": 0.755,
        "real_test_accuracy": 0.885,
        "frechet_distance": 29.51,
        "epsilon": 9.87,
        "delta": 1e-5,
        "privacy_unit": "client",
        "centralized": {"tstr_accuracy": 0.84},
    }
    # Execute
    figures = {f.label: f for f in headline_figures(summary, [])}
    # Assert
    assert figures["TSTR accuracy"].value == "75.5%"
    assert "88.5%" in figures["TSTR accuracy"].detail
    assert "centralized baseline: 84.0%" in figures["TSTR accuracy"].detail
    assert figures["Fréchet distance"].value == "29.51"
    assert figures["privacy spent"].value == "ε = 9.87"
    assert figures["data sent"].value == "341 MB"
    assert figures["time"].value == "6 min 54 s"


def test_withheld_bytes_say_so_and_unfinished_runs_use_their_rounds():
    withheld = {"bytes_total": None, "cohort_metrics": "withheld", "seconds": 3.0}
    figures = {f.label: f for f in headline_figures(withheld, [])}
    assert figures["data sent"].value == "withheld"
    # A run under client-level DP withholds its time as well (from 2026-12-07).
    figures = {f.label: f for f in headline_figures({**withheld, "seconds": None}, [])}
    assert figures["time"].value == "withheld"
    rows = [{"round": 0, "bytes_up": 2e6, "bytes_down": 1e6, "seconds": 70.0, "kid": 0.5}]
    figures = {f.label: f for f in headline_figures(None, rows)}
    assert figures["data sent"].value == "3.0 MB"
    assert figures["time"].value == "1 min 10 s"
    assert figures["kernel distance"].value == "0.5"


def test_a_table_partition_is_drawn_client_by_target_category(tmp_path):
    # Prepare: what TableFederation.to_json writes (the target's counts per client).
    partition = {
        "modality": "tables",
        "target": "income",
        "sizes": [30, 12],
        "clients": [
            {"client_id": 0, "rows": 30, "income": {"<=50K": 20, ">50K": 10}},
            {"client_id": 1, "rows": 12, "income": {"<=50K": 12}},
        ],
    }
    # Execute
    maps = partition_maps(partition)
    (tmp_path / "partition.json").write_text(json.dumps(partition))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    # Assert
    assert maps == [("rows per client by income", [[20.0, 10.0], [12.0, 0.0]], ["<=50K", ">50K"])]
    assert 'aria-label="rows per client by income"' in text
    assert "has no &#x27;counts&#x27;" not in text
