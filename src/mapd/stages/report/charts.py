"""Inline SVG charts for the run report: bars, stacked bars, histograms, a heatmap; no dependency.

    svg = bar_rows([("questions", 700, ""), ("mistakes", 387, "55%")])

Each function returns one `<svg>` element that scales to its container (viewBox, width 100%).
Every label is escaped; text colours come from the page's CSS classes (`lbl`, `num`, `dim`).
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d"]
REASON_COLORS = {
    "accepted": "#2f9e5b",
    "unreviewed": "#6c8ebf",
    "wrong_answer": "#e8a33d",
    "low_score": "#d9534f",
    "no_valid_review": "#9aa0a6",
    "cut_off": "#8c6d31",
    "not_asked": "#d5d9df",
}


def color_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width}px" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, cls: str = "lbl", anchor: str = "start") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{escape(text)}</text>'
    )


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str = "") -> str:
    title = f"<title>{escape(tip)}</title>" if tip else ""
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" rx="3" '
        f'fill="{fill}">{title}</rect>'
    )


def bar_rows(
    rows: list[tuple[str, int, str]], label: str = "funnel", colors: list[str] | None = None
) -> str:
    """Horizontal bars, one per (label, value, note), scaled to the largest value."""
    width, left, right, step = 960, 150, 230, 36
    top = max((v for _, v, _ in rows), default=0) or 1
    body = []
    for i, (name, value, note) in enumerate(rows):
        y = 8 + i * step
        w = (width - left - right) * value / top
        fill = colors[i] if colors else color_for(0)
        body.append(_text(left - 10, y + 18, name, "lbl", "end"))
        body.append(_rect(left, y + 4, w, 22, fill, f"{name}: {value:,}"))
        body.append(_text(left + w + 8, y + 20, f"{value:,}", "num"))
        if note:
            body.append(_text(left + w + 8 + 9 * len(f"{value:,}") + 8, y + 20, note, "dim"))
    return _svg(width, 12 + len(rows) * step, body, label)


def stacked_rows(
    rows: list[tuple[str, dict[str, int]]], order: list[str], colors: dict[str, str], label: str
) -> str:
    """One stacked horizontal bar per row (segments in `order`), with a legend on top."""
    width, left, right, step = 960, 150, 90, 34
    legend = [k for k in order if any(counts.get(k) for _, counts in rows)]
    body = []
    x = left
    for key in legend:
        body.append(_rect(x, 6, 12, 12, colors.get(key, "#888")))
        body.append(_text(x + 17, 16, key.replace("_", " "), "dim"))
        x += 30 + 7.5 * len(key)
    for i, (name, counts) in enumerate(rows):
        y = 30 + i * step
        total = sum(counts.values()) or 1
        body.append(_text(left - 10, y + 17, name, "lbl", "end"))
        x = left
        for key in legend:
            n = counts.get(key, 0)
            w = (width - left - right) * n / total
            if n:
                tip = f"{name}: {n} {key.replace('_', ' ')} ({n / total:.0%})"
                body.append(_rect(x, y + 3, w - 1, 22, colors.get(key, "#888"), tip))
                if w > 34:
                    body.append(_text(x + w / 2, y + 18, f"{n:,}", "inbar", "middle"))
            x += w
        kept = sum(n for k, n in counts.items() if k in ("accepted", "unreviewed"))
        body.append(_text(width - right + 10, y + 18, f"{kept / total:.0%} kept", "num"))
    return _svg(width, 36 + len(rows) * step, body, label)


def histogram(counts: dict[str, int], labels: list[str], color: str, label: str) -> str:
    """Vertical bars for a reviewer's score counts, one per label (scores, then `invalid`)."""
    width, height, base = 260, 150, 118
    top = max((counts.get(k, 0) for k in labels), default=0) or 1
    slot = (width - 20) / max(len(labels), 1)
    body = [f'<line x1="10" x2="{width - 10}" y1="{base}" y2="{base}" class="axis"/>']
    for i, key in enumerate(labels):
        n = counts.get(key, 0)
        h = (base - 22) * n / top
        x = 10 + i * slot
        fill = "#b8bcc2" if key == "invalid" else color
        body.append(_rect(x + slot * 0.15, base - h, slot * 0.7, h, fill, f"score {key}: {n}"))
        body.append(_text(x + slot / 2, base - h - 5, f"{n:,}", "num small", "middle"))
        body.append(
            _text(x + slot / 2, base + 16, "∅" if key == "invalid" else key, "dim", "middle")
        )
    return _svg(width, height, body, label)


def heatmap(
    names: list[str], cell: Callable[[str, str], tuple[float, str] | None], label: str
) -> str:
    """A square matrix; `cell(a, b)` gives (value in 0..1, tooltip) or None for no data."""
    size, left, top = 64, 150, 120
    n = len(names)
    body = []
    for j, name in enumerate(names):
        x = left + j * size + size / 2
        body.append(
            f'<text class="lbl" text-anchor="start" transform="translate({x + 4:.1f},{top - 8}) '
            f'rotate(-40)">{escape(name)}</text>'
        )
    for i, a in enumerate(names):
        y = top + i * size
        body.append(_text(left - 10, y + size / 2 + 5, a, "lbl", "end"))
        for j, b in enumerate(names):
            x = left + j * size
            value = None if a == b else cell(a, b)
            if value is None:
                body.append(_rect(x + 2, y + 2, size - 4, size - 4, "#eef0f3"))
                body.append(_text(x + size / 2, y + size / 2 + 5, "–", "dim", "middle"))
                continue
            rate, tip = value
            body.append(_rect(x + 2, y + 2, size - 4, size - 4, _blend(rate), tip))
            cls = "inbar" if rate > 0.55 else "num"
            body.append(_text(x + size / 2, y + size / 2 + 5, f"{rate:.0%}", cls, "middle"))
    return _svg(left + n * size + 100, top + n * size + 10, body, label)


def _blend(rate: float) -> str:
    """White to a deep blue as `rate` goes from 0 to 1."""
    lo, hi = (247, 249, 252), (38, 84, 160)
    rgb = (round(a + (b - a) * max(0.0, min(rate, 1.0))) for a, b in zip(lo, hi, strict=True))
    return "#" + "".join(f"{c:02x}" for c in rgb)


def columns(rows: list[tuple[str, float, str]], label: str) -> str:
    """Vertical bars of rates in 0..1 (accuracy), with a percentage above and a note below."""
    slot, height, base = 170, 250, 170
    width = max(360, 60 + slot * len(rows))
    body = [f'<line x1="40" x2="{width - 10}" y1="{base}" y2="{base}" class="axis"/>']
    for tick in (0.25, 0.5, 0.75, 1.0):
        y = base - (base - 20) * tick
        body.append(f'<line x1="40" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        body.append(_text(34, y + 4, f"{tick:.0%}", "dim small", "end"))
    for i, (name, rate, note) in enumerate(rows):
        x = 50 + i * slot
        h = (base - 20) * max(0.0, min(rate, 1.0))
        body.append(_rect(x + 18, base - h, slot - 36, h, color_for(i), f"{name}: {rate:.1%}"))
        body.append(_text(x + slot / 2, base - h - 6, f"{rate:.1%}", "num", "middle"))
        body.append(_text(x + slot / 2, base + 18, name[:24], "lbl", "middle"))
        for k, line in enumerate(note.split("\n")[:2]):
            body.append(_text(x + slot / 2, base + 36 + 15 * k, line[:28], "dim small", "middle"))
    return _svg(width, height, body, label)
