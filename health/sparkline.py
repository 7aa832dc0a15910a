"""A small server-side chart: a series of (t, value) as an SVG path, with its min and max. Pure."""
from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 240, 40


@dataclass(frozen=True)
class Sparkline:
    path: str  # the `d` of an SVG <path>: "M x,y L x,y …", "" for no points
    low: float | None
    high: float | None
    last: float | None
    width: int = WIDTH
    height: int = HEIGHT


def sparkline(
    points: list[tuple[float, float | None]],
    *,
    start: float | None = None,
    end: float | None = None,
    floor: float | None = None,
    ceiling: float | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Sparkline:
    """Time runs left to right from `start` to `end` (the first and last point when None); values
    bottom to top from `floor` to `ceiling` (the series' own min and max when None), so a flat series
    is a line in the middle. A None value breaks the line (no reading then). More points than pixel
    columns are folded into one per column, keeping each column's highest value: a spike stays visible.
    """
    known = sorted((float(t), float(v)) for t, v in points if v is not None)
    if not known:
        return Sparkline("", None, None, None, width, height)
    low, high = min(v for _, v in known), max(v for _, v in known)
    start = known[0][0] if start is None else float(start)
    end = known[-1][0] if end is None else float(end)
    bottom = low if floor is None else min(float(floor), low)
    top = high if ceiling is None else max(float(ceiling), high)
    span_t, span_v = end - start, top - bottom

    def x(t: float) -> float:
        return width * (t - start) / span_t if span_t > 0 else width / 2

    def y(v: float) -> float:
        return height * (1 - (v - bottom) / span_v) if span_v > 0 else height / 2

    columns: dict[int, tuple[float, float]] = {}
    segments: list[list[tuple[float, float]]] = [[]]
    for t, v in sorted(((float(t), v) for t, v in points), key=lambda p: p[0]):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        column = int(x(t))
        if segments[-1] and int(segments[-1][-1][0]) == column and column in columns:
            if v > columns[column][1]:
                columns[column] = (segments[-1][-1][0], float(v))
                segments[-1][-1] = (segments[-1][-1][0], float(v))
            continue
        columns[column] = (x(t), float(v))
        segments[-1].append((x(t), float(v)))
    parts = []
    for segment in segments:
        if not segment:
            continue
        if len(segment) == 1:
            # One reading alone is a short dash, so it shows.
            segment = [(max(segment[0][0] - 1, 0), segment[0][1]), (min(segment[0][0] + 1, width), segment[0][1])]
        parts.append("M" + " L".join(f"{px:.1f},{y(v):.1f}" for px, v in segment))
    return Sparkline(" ".join(parts), low, high, known[-1][1], width, height)
