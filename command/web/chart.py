"""A station's pressures over a time window as SVG, with its alarm bounds drawn as lines. Pure: no JS, so it
prints as it shows and a screenshot of a report carries it."""

from __future__ import annotations

from html import escape

W, H, LEFT, RIGHT, TOP, BOTTOM = 900, 260, 70, 20, 16, 34


def _scale(lo: float, hi: float):
    if hi <= lo:
        hi = lo + 1.0
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def render(rows: list[dict], key: str, t0: float, t1: float, *, bounds: list[dict], unit_div: float,
           unit: str, title: str, fmt_time) -> str:
    """`rows`: readings with "t" and `key` (Pa); `bounds`: [{"label", "value" (Pa), "kind"}] drawn as lines;
    values are shown divided by `unit_div` in `unit`."""
    pts = [(r["t"], r[key]) for r in rows if r.get(key) is not None and t0 <= r["t"] <= t1]
    values = [v for _, v in pts] + [b["value"] for b in bounds]
    lo, hi = _scale(min(values), max(values)) if values else (0.0, 1.0)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t):
        return round(LEFT + (t - t0) / max(t1 - t0, 1e-9) * pw, 1)

    def y(v):
        return round(TOP + (hi - v) / (hi - lo) * ph, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
           f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>']
    for i in range(5):                                  # value grid
        v = lo + (hi - lo) * i / 4
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v)}" y2="{y(v)}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{y(v) + 4}" text-anchor="end">{v / unit_div:.3g}</text>')
    for i in range(7):                                  # time grid, every 4 h of a 24 h window
        t = t0 + (t1 - t0) * i / 6
        out.append(f'<line class="grid" x1="{x(t)}" x2="{x(t)}" y1="{TOP}" y2="{TOP + ph}"/>'
                   f'<text class="tick" x="{x(t)}" y="{H - 12}" text-anchor="middle">{escape(fmt_time(t))}</text>')
    out.append(f'<text class="unit" x="8" y="{TOP + 10}">{escape(unit)}</text>')
    for b in bounds:
        out.append(f'<line class="bound {escape(b["kind"])}" x1="{LEFT}" x2="{W - RIGHT}" y1="{y(b["value"])}" '
                   f'y2="{y(b["value"])}"/><text class="bound-label {escape(b["kind"])}" x="{W - RIGHT - 4}" '
                   f'y="{y(b["value"]) - 4}" text-anchor="end">{escape(b["label"])} '
                   f'{b["value"] / unit_div:.4g} {escape(unit)}</text>')
    if pts:
        line = " ".join(f"{x(t)},{y(v)}" for t, v in pts)
        out.append(f'<polyline class="series" points="{line}"/>')
    else:
        out.append(f'<text class="empty" x="{LEFT + pw / 2}" y="{TOP + ph / 2}" text-anchor="middle">'
                   'no readings in this window</text>')
    out.append('</svg>')
    return "".join(out)
