"""The report's quality-against-bytes charts."""

from __future__ import annotations

from fedgen.report.bytes_curve import cumulative_bytes, quality_by_bytes_section


def rows(bytes_up: int | None = 1_000_000) -> list[dict]:
    return [
        {"round": 0, "bytes_up": bytes_up, "bytes_down": 2_000_000},
        {"round": 1, "bytes_up": bytes_up, "bytes_down": 2_000_000, "frechet_distance": 90.0},
        {
            "round": 2,
            "bytes_up": bytes_up,
            "bytes_down": 2_000_000,
            "frechet_distance": 70.0,
            "tstr_accuracy": 0.7,
        },
    ]


def test_bytes_accumulate_round_by_round():
    assert cumulative_bytes(rows()) == [3e6, 6e6, 9e6]


def test_each_evaluated_figure_is_drawn_against_cumulative_megabytes():
    # Execute
    section = quality_by_bytes_section(rows())
    # Assert: one chart per figure that changed, on an axis of MB sent; tstr_accuracy,
    # measured once, is a single point and gets no chart.
    assert "Quality against bytes sent" in section
    assert section.count("<svg") == 1
    assert 'aria-label="frechet_distance"' in section
    assert "cumulative MB sent (up + down)" in section


def test_no_chart_without_byte_counts_or_evaluations():
    assert quality_by_bytes_section(rows(bytes_up=None)) == ""  # withheld under DP
    assert quality_by_bytes_section([{"round": 0, "bytes_up": 1, "bytes_down": 1}]) == ""
    assert quality_by_bytes_section([]) == ""
