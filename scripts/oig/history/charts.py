"""Line charts as inline SVG, drawn here: no script, no library, nothing fetched when a page is viewed.

Colours and lines are SVG presentation attributes (not ``style=``), so the pages' Content-Security-Policy
needs no inline-style allowance. Every label is escaped; a missing value breaks its line instead of
being drawn as zero.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 720, 260  # SVG user units; the page scales the chart to its column
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 34, 40  # margins: axis labels left and below, the legend on top

Series = tuple[str, list[tuple[float, float | None]]]  # (label, [(x, y or None)])


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def nice_ticks(low: float, high: float, count: int = 6, *, integer: bool = False) -> list[float]:
    """About ``count`` round numbers from ``low`` to ``high`` (1, 2 or 5 times a power of ten apart; whole
    numbers only when ``integer``: runs, bug counts)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high - step * 1e-9:
        ticks.append(round(value, 12))
    return ticks


def line_chart(series: list[Series], *, title: str, x_label: str, y_label: str, y_range: tuple[float, float] | None = None,
               x_names: dict[float, str] | None = None, points: bool = True, colors: dict[str, str] | None = None,
               integer: str = "") -> str:
    """An SVG line chart of ``series``; ``x_names`` labels x values (a run's commit) in the tooltips, ``colors``
    gives some series their own colour (else the palette's, in order), ``integer`` names the axes ("x", "xy")
    whose ticks are whole numbers."""
    values = [(x, y) for _, pts in series for x, y in pts if y is not None]
    label = escape(title)
    if not values:
        return (f'<svg class="chart" viewBox="0 0 {WIDTH} 60" role="img" aria-label="{label}">'
                f'<title>{label}</title><text x="{WIDTH / 2}" y="35" text-anchor="middle" fill="#666">'
                f'{label}: nothing recorded</text></svg>')
    xs = [x for x, _ in values]
    ys = [y for _, y in values]
    y_low, y_high = y_range if y_range else (min(0.0, min(ys)), max(ys))
    y_ticks = nice_ticks(y_low, y_high, integer="y" in integer)
    y_low, y_high = y_ticks[0], y_ticks[-1]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x_low) / (x_high - x_low) * plot_w, 1)

    def py(y: float) -> float:
        return round(TOP + plot_h - (y - y_low) / (y_high - y_low) * plot_h, 1)

    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}">',
           f"<title>{label}</title>"]
    for t in y_ticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(t)}" y2="{py(t)}" stroke="#e4e4e4"/>'
                   f'<text x="{LEFT - 6}" y="{py(t) + 4}" text-anchor="end" font-size="11" fill="#555">{_fmt(t)}</text>')
    for t in [v for v in nice_ticks(x_low, x_high, 8, integer="x" in integer) if x_low <= v <= x_high]:
        out.append(f'<text x="{px(t)}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
                   f'fill="#555">{_fmt(t)}</text>')
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#888"/>'
               f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#888"/>'
               f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="12" '
               f'fill="#333">{escape(x_label)}</text>'
               f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" font-size="12" fill="#333" '
               f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_label)}</text>')
    legend_x = LEFT
    for i, (name, pts) in enumerate(series):
        color = (colors or {}).get(name) or PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{legend_x}" y="10" width="12" height="12" fill="{color}"/>'
                   f'<text x="{legend_x + 16}" y="20" font-size="12" fill="#333">{escape(name)}</text>')
        legend_x += 28 + 7 * len(name)
        for segment in _segments(pts):
            if len(segment) > 1:
                coords = " ".join(f"{px(x)},{py(y)}" for x, y in segment)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        if points or len([p for p in pts if p[1] is not None]) == 1:
            for x, y in pts:
                if y is not None:
                    tip = f"{name}: {_fmt(y)}" + (f" ({x_names[x]})" if x_names and x in x_names else "")
                    out.append(f'<circle cx="{px(x)}" cy="{py(y)}" r="3" fill="{color}">'
                               f"<title>{escape(tip)}</title></circle>")
    out.append("</svg>")
    return "".join(out)


def _segments(pts: list[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The runs of consecutive points that have a value."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in pts:
        if y is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((x, y))
    return [s for s in segments if s]
