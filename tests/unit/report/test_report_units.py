"""Figures in human units, and which series are worth a chart."""

from __future__ import annotations

import math

from fedgen.report.units import format_bytes, format_duration, format_share
from fedgen.report.worth_drawing import why_not_drawn, worth_drawing


def test_bytes_read_in_decimal_units():
    assert format_bytes(341_331_840) == "341 MB"
    assert format_bytes(7_417_240) == "7.4 MB"
    assert format_bytes(1_234_567_890) == "1.2 GB"
    assert format_bytes(999) == "999 B"


def test_durations_read_as_a_clock():
    assert format_duration(0.84) == "0.8 s"
    assert format_duration(32.4) == "32 s"
    assert format_duration(414.2) == "6 min 54 s"
    assert format_duration(7500) == "2 h 05 min"
    assert format_share(0.755) == "75.5%"


def test_constants_and_single_points_are_not_worth_a_chart():
    assert worth_drawing([(0, 1.0), (1, 0.5)])
    assert not worth_drawing([(0, 2.0), (1, 2.0), (2, 2.0)])
    assert why_not_drawn([(0, 2.0), (1, 2.0)]) == "constant"
    assert why_not_drawn([(5, 0.7)]) == "one point"
    assert why_not_drawn([(0, math.nan), (1, math.inf)]) == "no finite value"
    # A mean of equal ratios may differ in the last bit: still a constant.
    assert not worth_drawing([(0, 0.1 + 0.2), (1, 0.3)])
    # Bytes that differ by a length field are flat on an axis from zero.
    assert worth_drawing([(0, 1_236_632), (1, 1_236_640)])
    assert not worth_drawing([(0, 1_236_632), (1, 1_236_640)], tolerance=1e-3)
