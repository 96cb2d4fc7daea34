"""Charts as inline SVG, drawn on the server: no JavaScript, readable by any browser.

Every text that goes into the SVG is escaped here (the result is marked safe for Jinja).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from pgbg.web.data import Bucket

WIDTH, HEIGHT = 600, 140
LEFT, BOTTOM, TOP = 44, 18, 8


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _label(at: datetime, step: float) -> str:
    at = at.astimezone(UTC)  # as every time on the dashboard
    return at.strftime("%H:%M") if step < 86400 else at.strftime("%m-%d")


def _frame(title: str, top_label: str, first: str, last: str, body: list[str]) -> Markup:
    plot_h = HEIGHT - BOTTOM - TOP
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH}" y2="{TOP + plot_h}" '
        'stroke="#999" stroke-width="1"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end" font-size="10" '
        f'fill="#555">{escape(top_label)}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" font-size="10" '
        'fill="#555">0</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 4}" font-size="10" fill="#555">{escape(first)}</text>',
        f'<text x="{WIDTH}" y="{HEIGHT - 4}" text-anchor="end" font-size="10" '
        f'fill="#555">{escape(last)}</text>',
        *body,
        "</svg>",
    ]
    return Markup("".join(parts))


def throughput(buckets: Sequence[Bucket], step: float, title: str) -> Markup:
    """Tasks finished per bucket: bars, the failed part in red."""
    peak = max((b.finished for b in buckets), default=0) or 1
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    width = plot_w / max(len(buckets), 1)
    body = []
    for i, b in enumerate(buckets):
        x = LEFT + i * width
        h = plot_h * b.finished / peak
        bad = plot_h * b.failed / peak
        tip = escape(f"{_label(b.start, step)}: {b.finished} finished, {b.failed} failed")
        body.append(f'<g><title>{tip}</title>'
                    f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(width - 1, 1):.1f}"'
                    f' height="{h:.1f}" fill="#4a7fb5"/>'
                    f'<rect x="{x:.1f}" y="{TOP + plot_h - bad:.1f}" '
                    f'width="{max(width - 1, 1):.1f}" height="{bad:.1f}" fill="#c0392b"/></g>')
    first = _label(buckets[0].start, step) if buckets else ""
    last = _label(buckets[-1].start, step) if buckets else ""
    return _frame(title, str(peak), first, last, body)


def durations(buckets: Sequence[Bucket], step: float, title: str) -> Markup:
    """Wait and run time per bucket (p95 as lines; hover a point for the averages)."""
    values = [v for b in buckets for v in (b.wait_p95, b.run_p95) if v is not None]
    peak = max(values, default=0.0) or 1.0
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    width = plot_w / max(len(buckets), 1)
    body = []
    for name, colour, attr in (("wait p95", "#e67e22", "wait_p95"),
                               ("run p95", "#27ae60", "run_p95")):
        points = []
        for i, b in enumerate(buckets):
            value = getattr(b, attr)
            if value is None:
                continue
            x = LEFT + (i + 0.5) * width
            y = TOP + plot_h - plot_h * value / peak
            points.append((x, y, b, value))
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _b, _v in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                        'stroke-width="1.5"/>')
        for x, y, b, value in points:
            tip = escape(f"{_label(b.start, step)} {name}: {seconds_text(value)} "
                         f"(wait avg {seconds_text(b.wait_avg)}, "
                         f"run avg {seconds_text(b.run_avg)})")
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}">'
                        f"<title>{tip}</title></circle>")
    body.append(f'<text x="{LEFT + 6}" y="{TOP + 10}" font-size="10" fill="#e67e22">'
                'wait p95</text>'
                f'<text x="{LEFT + 60}" y="{TOP + 10}" font-size="10" fill="#27ae60">'
                'run p95</text>')
    first = _label(buckets[0].start, step) if buckets else ""
    last = _label(buckets[-1].start, step) if buckets else ""
    return _frame(title, seconds_text(peak if values else None), first, last, body)
