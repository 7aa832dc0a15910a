"""health/sparkline.py: (t, value) points as an SVG path scaled to the box, with min/max/last."""
from __future__ import annotations

import re

from health.sparkline import sparkline


def coords(path: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", path)]


def test_time_runs_left_to_right_and_values_bottom_to_top_within_the_box():
    line = sparkline([(0, 0), (50, 50), (100, 100)], width=100, height=40, floor=0, ceiling=100)
    assert line.path == "M0.0,40.0 L50.0,20.0 L100.0,0.0"
    assert (line.low, line.high, line.last) == (0, 100, 100)


def test_the_series_own_range_is_used_without_a_floor_or_ceiling():
    line = sparkline([(0, 60), (10, 80)], width=100, height=40)
    assert coords(line.path) == [(0.0, 40.0), (100.0, 0.0)]
    assert (line.low, line.high) == (60, 80)


def test_a_fixed_window_places_points_by_their_time_in_it():
    line = sparkline([(150, 10), (200, 20)], start=100, end=200, width=100, height=40, floor=0, ceiling=20)
    assert coords(line.path) == [(50.0, 20.0), (100.0, 0.0)]


def test_a_flat_series_is_a_line_in_the_middle():
    assert {y for _, y in coords(sparkline([(0, 5), (1, 5), (2, 5)], height=40).path)} == {20.0}


def test_none_breaks_the_line_and_is_left_out_of_min_and_max():
    line = sparkline([(0, 1), (1, 2), (2, None), (3, 3), (4, 4)], width=40, height=40)
    assert line.path.count("M") == 2
    assert (line.low, line.high, line.last) == (1, 4, 4)


def test_no_points_or_only_none_draw_nothing():
    assert sparkline([]).path == "" and sparkline([(0, None)]).high is None


def test_one_point_is_a_short_dash_that_shows():
    assert len(coords(sparkline([(5, 1)], width=100).path)) == 2


def test_points_are_sorted_by_time():
    assert sparkline([(10, 2), (0, 1)], width=10, height=10).path == "M0.0,10.0 L10.0,0.0"


def test_more_points_than_columns_keep_each_columns_peak():
    points = [(t, 100 if t == 501 else 10) for t in range(1000)]
    line = sparkline(points, width=100, height=100, floor=0, ceiling=100)
    drawn = coords(line.path)
    assert len(drawn) <= 101
    assert min(y for _, y in drawn) == 0.0  # the one spike at t=501 is still drawn at the top
