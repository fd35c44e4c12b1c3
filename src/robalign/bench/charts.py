"""Inline SVG charts and cell colours for the bench report (``report.py``).

Written by hand rather than with matplotlib so that the report stays a few kilobytes of
text per chart, scales with the page, and needs no font or backend: every chart is an
``<svg>`` element with no external reference, and every label goes through ``html.escape``
(category and attack names come from the data, which a user may supply).
"""

from __future__ import annotations

from html import escape

_GREEN, _AMBER, _RED, _GREY = (22, 163, 74), (245, 158, 11), (220, 38, 38), "#e5e7eb"
_BLUE, _WHITE = (37, 99, 235), (255, 255, 255)
FONT = "font-family='system-ui, sans-serif' font-size='12'"


def _e(x) -> str:
    return escape(str(x), quote=True)


def _mix(a: tuple, b: tuple, t: float) -> str:
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def safety_color(value: float | None) -> str:
    """Red at 0, amber at .5, green at 1 (the safety scale); grey when there is no value."""
    if value is None:
        return _GREY
    v = min(1.0, max(0.0, value))
    return _mix(_RED, _AMBER, v * 2) if v < 0.5 else _mix(_AMBER, _GREEN, (v - 0.5) * 2)


def reduction_color(value: float | None) -> str:
    """White at 0, red for a safety reduction (1 = all safety lost), blue for a gain."""
    if value is None:
        return _GREY
    return _mix(_WHITE, _RED, min(1.0, value)) if value >= 0 else _mix(_WHITE, _BLUE, min(1.0, -value))


def text_color(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (#rrggbb)."""
    if not background.startswith("#") or len(background) != 7:
        return "#111"
    r, g, b = (int(background[i:i + 2], 16) for i in (1, 3, 5))
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def bars(items: list[dict], tau: float | None, width: int = 720, label_width: int = 230) -> str:
    """Horizontal bars on [0, 1], one per item {"label", "value", "ci": [lo, hi] | None,
    "note"}, a CI whisker on each, and a dashed line at ``tau``. Bars at or above tau are green,
    the others amber; a missing value is drawn as "no answers"."""
    row, top = 24, 22
    plot = width - label_width - 60
    height = top + row * len(items) + 26

    def x(v: float) -> float:
        return label_width + plot * min(1.0, max(0.0, v))

    parts = [f"<svg role='img' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' {FONT}>"]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f"<line x1='{x(tick):.1f}' x2='{x(tick):.1f}' y1='{top - 4}' y2='{height - 22}' stroke='#ddd'/>"
                     f"<text x='{x(tick):.1f}' y='{height - 8}' text-anchor='middle' fill='#555'>{tick:g}</text>")
    for i, item in enumerate(items):
        y = top + i * row
        value, ci = item.get("value"), item.get("ci")
        parts.append(f"<text x='{label_width - 8}' y='{y + 15}' text-anchor='end'>{_e(item['label'])}</text>")
        if value is None:
            parts.append(f"<text x='{label_width + 4}' y='{y + 15}' fill='#777'>no answers</text>")
            continue
        fill = "#16a34a" if tau is None or value >= tau else "#f59e0b"
        tip = f"{item['label']}: {value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        parts.append(f"<rect x='{label_width}' y='{y + 4}' width='{x(value) - label_width:.1f}' height='{row - 8}' "
                     f"fill='{fill}'><title>{_e(tip)}</title></rect>")
        if ci:
            cy = y + row / 2
            parts.append(f"<line x1='{x(ci[0]):.1f}' x2='{x(ci[1]):.1f}' y1='{cy}' y2='{cy}' stroke='#111'/>"
                         f"<line x1='{x(ci[0]):.1f}' x2='{x(ci[0]):.1f}' y1='{cy - 5}' y2='{cy + 5}' stroke='#111'/>"
                         f"<line x1='{x(ci[1]):.1f}' x2='{x(ci[1]):.1f}' y1='{cy - 5}' y2='{cy + 5}' stroke='#111'/>")
        parts.append(f"<text x='{x(max(value, ci[1] if ci else value)) + 6:.1f}' y='{y + 15}' fill='#333'>"
                     f"{value:.2f}{_e(item.get('note', ''))}</text>")
    if tau is not None:
        parts.append(f"<line x1='{x(tau):.1f}' x2='{x(tau):.1f}' y1='{top - 8}' y2='{height - 22}' stroke='#dc2626' "
                     f"stroke-width='2' stroke-dasharray='6 4'/><text x='{x(tau):.1f}' y='{top - 10}' "
                     f"text-anchor='middle' fill='#dc2626'>\u03c4 = {tau:g}</text>")
    return "".join(parts) + "</svg>"


def rates_chart(rates: list[tuple[str, float]], knee_index: int | None, width: int = 720, height: int = 220) -> str:
    """The sorted non-zero misunderstanding rates M / (R + M) as a line of points, the knee
    marked with a dashed line, attacks left of it (the failed ones) in red."""
    if not rates:
        return "<p class='muted'>No attack had a misunderstanding: there is no curve to find a knee on.</p>"
    left, right, top, bottom = 50, 130, 16, 90  # room for the last rotated label
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(rates) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + (i * step if len(rates) > 1 else plot_w / 2), top + plot_h * (1 - min(1.0, max(0.0, v)))

    parts = [f"<svg role='img' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' {FONT}>"]
    for tick in (0, 0.5, 1):
        _, y = xy(0, tick)
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#ddd'/>"
                     f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' fill='#555'>{tick:g}</text>")
    points = " ".join("{:.1f},{:.1f}".format(*xy(i, v)) for i, (_, v) in enumerate(rates))
    parts.append(f"<polyline points='{points}' fill='none' stroke='#93c5fd' stroke-width='2'/>")
    for i, (label, v) in enumerate(rates):
        px, py = xy(i, v)
        failed = knee_index is not None and i < knee_index and v > rates[knee_index][1]
        parts.append(f"<circle cx='{px:.1f}' cy='{py:.1f}' r='5' fill='{'#dc2626' if failed else '#2563eb'}'>"
                     f"<title>{_e(label)}: {v:.3f}</title></circle>"
                     f"<text transform='translate({px:.1f},{top + plot_h + 12}) rotate(30)' fill='#333'>"
                     f"{_e(label)}</text>")
    if knee_index is not None:
        kx, _ = xy(knee_index, 0)
        parts.append(f"<line x1='{kx:.1f}' x2='{kx:.1f}' y1='{top}' y2='{top + plot_h}' stroke='#dc2626' "
                     f"stroke-dasharray='6 4'/><text x='{kx + 4:.1f}' y='{top + 12}' fill='#dc2626'>knee = "
                     f"{rates[knee_index][1]:.2f}</text>")
    return "".join(parts) + "</svg>"
