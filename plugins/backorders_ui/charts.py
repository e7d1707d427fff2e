"""Charts as inline SVG text: no JavaScript, no CDN (the Airflow host may have no internet)."""
from __future__ import annotations

from html import escape

COLORS = ["#017cee", "#e5753c", "#2a9d3a", "#8e44ad"]
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


def _nice_max(v: float, ticks: int = 4) -> float:
    """Top of the y axis: `ticks` times a round step (1, 2 or 5 times a power of ten) that reaches v."""
    import math

    if v <= 0:
        return ticks
    raw = v / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            step = m * mag
            break
    if step < 1:
        step = 1 if v >= 1 else step
    return step * ticks


def bar_chart(items: list[tuple[str, float]], title: str = "", width: int = 560, height: int = 240,
              color: str = COLORS[0]) -> str:
    """Vertical bars with the value above each and the label below."""
    pad_l, pad_r, pad_t, pad_b = 44, 12, 34, 34
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    top = _nice_max(max((v for _, v in items), default=0))
    n = max(1, len(items))
    slot = plot_w / n
    bar_w = slot * 0.62
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} aria-label="{escape(title)}">',
           f'<text x="{pad_l}" y="18" font-size="13" font-weight="600" fill="#1f2937">{escape(title)}</text>']
    for i in range(5):
        v = top * i / 4
        y = pad_t + plot_h - plot_h * i / 4
        out.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#6b7280">'
                   f'{v:,.0f}</text>')
    for i, (label, v) in enumerate(items):
        h = plot_h * (v / top) if top else 0
        x = pad_l + slot * i + (slot - bar_w) / 2
        y = pad_t + plot_h - h
        out.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" rx="2" '
                   f'fill="{color}"><title>{escape(label)}: {v:,.0f}</title></rect>')
        out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle" '
                   f'fill="#111827">{v:,.0f}</text>')
        out.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - pad_b + 16}" font-size="11" text-anchor="middle" '
                   f'fill="#374151">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def line_chart(labels: list[str], series: dict[str, list[float | None]], title: str = "", width: int = 560,
               height: int = 240, percent: bool = True) -> str:
    """Lines over the runs (x: run times, y: 0-100 % when percent), a legend on top, a dot per value."""
    pad_l, pad_r, pad_t, pad_b = 44, 12, 40, 40
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    top = 1.0 if percent else _nice_max(max((v for s in series.values() for v in s if v is not None), default=0))
    n = len(labels)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} aria-label="{escape(title)}">',
           f'<text x="{pad_l}" y="18" font-size="13" font-weight="600" fill="#1f2937">{escape(title)}</text>']
    for i in range(5):
        v = top * i / 4
        y = pad_t + plot_h - plot_h * i / 4
        out.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#6b7280">'
                   f'{(f"{v * 100:.0f}%" if percent else f"{v:,.0f}")}</text>')
    lx = pad_l
    for k, name in enumerate(series):
        c = COLORS[k % len(COLORS)]
        out.append(f'<rect x="{lx}" y="26" width="10" height="3" fill="{c}"/>'
                   f'<text x="{lx + 14}" y="31" font-size="11" fill="#374151">{escape(name)}</text>')
        lx += 24 + 7 * len(name)
    if n == 0:
        out.append(f'<text x="{width / 2}" y="{pad_t + plot_h / 2}" font-size="12" text-anchor="middle" '
                   f'fill="#6b7280">no runs yet</text></svg>')
        return "".join(out)

    def xy(i, v):
        x = pad_l + (plot_w * (i / (n - 1)) if n > 1 else plot_w / 2)
        return x, pad_t + plot_h - plot_h * (min(v, top) / top)

    for k, (name, values) in enumerate(series.items()):
        c = COLORS[k % len(COLORS)]
        pts = [xy(i, v) for i, v in enumerate(values) if v is not None]
        if len(pts) > 1:
            out.append(f'<polyline class="series" fill="none" stroke="{c}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        for i, v in enumerate(values):
            if v is None:
                continue
            x, y = xy(i, v)
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"><title>{escape(labels[i])} '
                       f'{escape(name)}: {(f"{v * 100:.1f}%" if percent else f"{v:,.0f}")}</title></circle>')
    # a few x labels (first, middle, last) so that they never overlap
    for i in sorted({0, n // 2, n - 1}):
        x, _ = xy(i, 0)
        anchor = "start" if i == 0 and n > 1 else ("end" if i == n - 1 and n > 1 else "middle")
        out.append(f'<text x="{x:.1f}" y="{height - pad_b + 16}" font-size="10" text-anchor="{anchor}" '
                   f'fill="#374151">{escape(labels[i])}</text>')
    out.append("</svg>")
    return "".join(out)


def attempts_chart(labels: list[str], needed: list[int], available: list[int], allocated: list[int],
                   width: int = 720, height: int = 220) -> str:
    """A line's attempts: units needed, seen available and allocated at each run."""
    return line_chart(labels, {"needed": needed, "available": available, "allocated": allocated},
                      title="Attempts: units needed, available and allocated per run", width=width, height=height,
                      percent=False)
