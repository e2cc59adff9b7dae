"""Charts as SVG, drawn on the server (pure): nothing to download, no script to run.

A page shows each chart next to a table of the same numbers (the table is the readable
and accessible form; the chart's ``aria-label`` points to it).  Every text in a chart is
escaped; labels too long to fit are cut, with the whole label in the bar's tooltip
(``<title>``).  Colours and fonts come from the stylesheet (classes ``bar``, ``axis``,
``label``, ``value``), so a chart follows the page's theme.  The SVG scales down to a
phone's width; a column chart with many columns keeps a minimum column width and scrolls
sideways inside its box instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from .safetext import code, hidden

CHAR_WIDTH = 6.4  # px per character of the 11 px label font, roughly
LABEL_CHAR_WIDTH = 7.4  # the same, generously: a bar's label must not run off the chart's left edge
COLUMN_MIN = 22
COLUMN_MAX = 64
PLOT_HEIGHT = 180
LABEL_MAX = 28  # characters of a column label, or of a bar's label
BAR_HEIGHT = 18
BAR_GAP = 6


@dataclass(frozen=True)
class Point:
    label: str
    value: int


def _plain(text: str) -> str:
    """Characters that would not show (controls, bidi overrides) by their code, as pages do."""
    return "".join(code(ch) if hidden(ch) else ch for ch in text)


def _cut(text: str, limit: int = LABEL_MAX) -> str:
    text = _plain(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(n: float) -> str:
    return f"{n:,.0f}"


def _ticks(top: int) -> list[int]:
    """0, the middle and the top of the scale, rounded to something readable."""
    if top <= 0:
        return [0]
    if top <= 4:
        return list(range(top + 1))
    return [0, round(top / 2), top]


def column_chart(points: Sequence[Point], *, title: str, table_id: str) -> Markup:
    """Vertical columns, one per point, in the order given, labels slanted below."""
    if not points:
        return Markup('<p class="empty">Nothing to chart.</p>')
    top = max(p.value for p in points)
    column = max(COLUMN_MIN, min(COLUMN_MAX, int(640 / len(points))))
    longest = max(len(_cut(p.label)) for p in points)
    left, right, upper = 56, 12, 16
    lower = int(longest * CHAR_WIDTH * 0.72) + 18  # labels at -45 degrees
    width = left + right + column * len(points)
    height = upper + PLOT_HEIGHT + lower
    out = [f'<svg class="chart column" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(_plain(title))} (the table below has the '
           f'numbers)" aria-describedby="{escape(table_id)}">']
    base = upper + PLOT_HEIGHT
    for tick in _ticks(top):
        y = base - (tick / top * PLOT_HEIGHT if top else 0)
        out.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="value" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
    for i, p in enumerate(points):
        x = left + i * column
        h = p.value / top * PLOT_HEIGHT if top else 0
        label = escape(_plain(p.label))
        out.append(f'<g><title>{label}: {_number(p.value)}</title>'
                   f'<rect class="bar" x="{x + 3}" y="{base - h:.1f}" width="{column - 6}" height="{h:.1f}"/>')
        if column >= 34 or len(points) <= 12:
            out.append(f'<text class="value" x="{x + column / 2:.1f}" y="{base - h - 3:.1f}" '
                       f'text-anchor="middle">{_number(p.value)}</text>')
        cx, cy = x + column / 2 + 4, base + 12
        out.append(f'<text class="label" x="{cx:.1f}" y="{cy}" text-anchor="end" '
                   f'transform="rotate(-45 {cx:.1f} {cy})">{escape(_cut(p.label))}</text></g>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(points: Sequence[Point], *, title: str, table_id: str, total: int | None = None) -> Markup:
    """Horizontal bars, one per point, each with its count and share beside it."""
    if not points:
        return Markup('<p class="empty">Nothing to chart.</p>')
    top = max(p.value for p in points)
    whole = total if total is not None else sum(p.value for p in points)
    label_width = int(min(max(len(_cut(p.label)) for p in points), LABEL_MAX) * LABEL_CHAR_WIDTH) + 12
    plot, number = 260, 120
    width = label_width + plot + number
    height = len(points) * (BAR_HEIGHT + BAR_GAP) + BAR_GAP
    out = [f'<svg class="chart bars" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{escape(_plain(title))} (the table has the '
           f'numbers)" aria-describedby="{escape(table_id)}">']
    for i, p in enumerate(points):
        y = BAR_GAP + i * (BAR_HEIGHT + BAR_GAP)
        w = p.value / top * plot if top else 0
        share = f"{p.value / whole:.1%}" if whole else "–"
        label = escape(_plain(p.label))
        out.append(f'<g><title>{label}: {_number(p.value)} ({share})</title>'
                   f'<text class="label" x="{label_width - 8}" y="{y + 13}" text-anchor="end">'
                   f'{escape(_cut(p.label))}</text>'
                   f'<rect class="bar" x="{label_width}" y="{y}" width="{max(w, 1):.1f}" height="{BAR_HEIGHT}"/>'
                   f'<text class="value" x="{label_width + w + 6:.1f}" y="{y + 13}">{_number(p.value)} · {share}'
                   f'</text></g>')
    out.append("</svg>")
    return Markup("".join(out))
