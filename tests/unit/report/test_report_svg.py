"""SVG charts: well-formed XML, readable ticks, non-finite points skipped, text escaped."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from fedgen.report import format_number, heatmap, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg: str) -> list[str]:
    return [element.text or "" for element in ET.fromstring(svg).iter(f"{SVG}text")]


def test_line_chart_draws_one_line_per_series_with_legend_and_round_ticks():
    series = {
        "generator": [(1, 1.9), (2, 1.4), (3, 1.2), (4, 1.1), (5, 1.05)],
        "discriminator": [(1, 0.7), (2, 0.65), (3, 0.6), (4, 0.62), (5, 0.61)],
    }

    svg = line_chart(series, "training loss")
    root = ET.fromstring(svg)

    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2
    assert lines[0].get("stroke") != lines[1].get("stroke")
    labels = texts(svg)
    assert {"training loss", "generator", "discriminator", "round"} <= set(labels)
    assert {"1", "2", "3", "4", "5"} <= set(labels)  # integer rounds, no "1.0"
    assert {"0.5", "1.0", "1.5", "2.0"} <= set(labels)  # y ticks in steps of 0.5


def test_large_values_get_k_and_m_suffixes():
    svg = line_chart({"bytes_up": [(1, 1_200_000), (2, 2_600_000)]}, "bytes per round")

    assert {"1.0M", "1.5M", "2.0M", "2.5M", "3.0M"} <= set(texts(svg))


def test_single_point_is_a_dot():
    svg = line_chart({"kid": [(5, 0.01)]}, "kid")
    root = ET.fromstring(svg)

    assert root.findall(f"{SVG}polyline") == []
    assert len(root.findall(f"{SVG}circle")) == 1


def test_nan_and_inf_are_skipped_and_break_the_line():
    points = [(1, 1.0), (2, 2.0), (3, math.nan), (4, 3.0), (5, 4.0), (6, math.inf)]

    svg = line_chart({"frechet_distance": points}, "frechet_distance")
    root = ET.fromstring(svg)

    assert len(root.findall(f"{SVG}polyline")) == 2  # 1-2 and 4-5
    assert len(root.findall(f"{SVG}circle")) == 4
    assert "nan" not in svg.lower() and "inf" not in svg.lower()


def test_chart_with_no_finite_values_says_so():
    svg = line_chart({"kid": [(1, math.nan)]}, "kid")

    assert "no finite values to plot" in texts(svg)


def test_all_text_is_escaped():
    svg = line_chart({'<b>&"': [(1, 1.0), (2, 2.0)]}, "a <script> & b", x_label="<x>")

    root = ET.fromstring(svg)  # would fail on a raw "<" or "&"
    assert "<script>" not in svg
    assert "a <script> & b" in texts(svg)
    assert root.get("aria-label") == "a <script> & b"


def test_heatmap_writes_every_count_in_its_cell():
    counts = [[612, 0, 3], [5, 1204, 77]]

    svg = heatmap(counts, ["client 0", "client 1"], ["T-shirt/top", "Trouser", "Ankle boot"], "x")
    root = ET.fromstring(svg)

    labels = texts(svg)
    for value in ["612", "0", "3", "5", "1204", "77", "T-shirt/top", "client 1"]:
        assert value in labels
    assert len(root.findall(f"{SVG}rect")) == 1 + 6  # background + one per cell
    assert any(text.get("transform") for text in root.iter(f"{SVG}text"))  # long labels tilt


def test_heatmap_rejects_a_matrix_that_does_not_match_its_labels():
    with pytest.raises(ValueError, match="one row label per row"):
        heatmap([[1, 2], [3]], ["a", "b"], ["x", "y"], "bad")


@pytest.mark.parametrize(
    "value, text",
    [
        (6400, "6400"),
        (6400.0, "6400"),
        (0.78125, "0.7812"),
        (12.3456, "12.35"),
        (1.5e-5, "1.500e-05"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_counts_can_start_at_zero_and_the_x_axis_spans_only_the_rounds():
    points = [(1, 6400), (2, 5760), (3, 6400)]

    plain = texts(line_chart({"examples": points}, "examples per round"))
    from_zero = texts(line_chart({"examples": points}, "examples per round", include_zero=True))

    assert "0" not in plain and "0" in from_zero
    assert "examples" in plain  # the legend names the series when the title does not
    x_ticks = {"0", "0.5", "1", "2", "3", "4"} & set(plain)
    assert x_ticks == {"1", "2", "3"}


def test_a_lone_series_named_like_its_chart_has_no_legend():
    labels = texts(line_chart({"kid": [(1, 0.1), (2, 0.05)]}, "kid"))

    assert labels.count("kid") == 1  # the title only


def test_count_axes_use_whole_numbers_and_zero_has_no_unit():
    labels = texts(
        line_chart(
            {"clients": [(1, 10), (2, 10)], "failures": [(1, 0), (2, 1)]},
            "clients per round",
            include_zero=True,
        )
    )
    big = texts(line_chart({"bytes_up": [(1, 2.3e7)]}, "bytes", include_zero=True))

    assert {"0", "2", "4", "6", "8", "10"} <= set(labels)
    assert not any("." in label for label in labels)
    assert "0" in big and "0M" not in big
