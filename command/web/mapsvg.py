"""The district map as SVG, drawn from the registry alone (no tile server: the console works offline).

Stations are placed by their registry coordinates (an equirectangular projection about the district's
middle latitude: a district is a few km across, where it is within a metre or two of a true map), supply
links are the registry's `upstream` edges, and every station takes the colour of the most severe open
incident that touches it. An incident's own stations can be highlighted; each mark links to the open
incident that touches it, or to the station's page.
"""

from __future__ import annotations

import math
from html import escape

from .alarms import WARNING_ORDER, affected_devices

WIDTH, HEIGHT, MARGIN = 1000, 640, 40
STATE_CLASS = {"red": "st-red", "orange": "st-orange", "yellow": "st-yellow", "blue": "st-blue",
               None: "st-normal"}


def station_states(stations: list[dict], incidents: list[dict]) -> dict[str, dict]:
    """dev -> {"warning", "incident_id"} of the most severe open incident touching it."""
    out: dict[str, dict] = {}
    for m in incidents:
        if m.get("status") != "open":
            continue
        for dev in affected_devices(m):
            cur = out.get(dev)
            if cur is None or WARNING_ORDER.get(m.get("warning"), 4) < WARNING_ORDER.get(cur["warning"], 4):
                out[dev] = {"warning": m.get("warning"), "incident_id": m["incident_id"]}
    return out


def _projector(points: list[tuple[float, float]]):
    lats = [p[0] for p in points]
    lons = [p[1] for p in points]
    k = math.cos(math.radians((min(lats) + max(lats)) / 2))
    span_x = max((max(lons) - min(lons)) * k, 1e-6)
    span_y = max(max(lats) - min(lats), 1e-6)
    scale = min((WIDTH - 2 * MARGIN) / span_x, (HEIGHT - 2 * MARGIN) / span_y)
    x0 = (WIDTH - span_x * scale) / 2
    y0 = (HEIGHT - span_y * scale) / 2

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return (round(x0 + (lon - min(lons)) * k * scale, 1), round(HEIGHT - y0 - (lat - min(lats)) * scale, 1))
    return xy


def render(stations: list[dict], incidents: list[dict], *, highlight: str | None = None) -> str:
    """SVG text. `stations`: registry public dicts (dev, site_name, lat, lon, upstream, households, ...)."""
    placed = [s for s in stations if s.get("lat") is not None and s.get("lon") is not None]
    states = station_states(stations, incidents)
    lit = set()
    if highlight:
        m = next((i for i in incidents if i["incident_id"] == highlight), None)
        lit = set(affected_devices(m)) if m else set()
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="district-map" '
             f'role="img" aria-label="district map: {len(placed)} stations">',
             f'<rect class="map-bg" width="{WIDTH}" height="{HEIGHT}"/>']
    if not placed:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no station in the registry '
                     'has coordinates: set them with gasguard device update --lat --lon</text></svg>')
        return "".join(parts)
    by_dev = {s["dev"] for s in placed}
    # incidents at places that are not stations (a leak in a home): a marker at the place's coordinates
    spots = []
    for m in incidents:
        place = (m.get("report") or {}).get("place") or {}
        devs = [d["dev"] for d in place.get("devices", [])]
        if m.get("status") == "open" and place.get("lat") is not None and place.get("lon") is not None \
                and not any(d in by_dev for d in devs):
            spots.append(m)
    xy = _projector([(s["lat"], s["lon"]) for s in placed]
                    + [(m["report"]["place"]["lat"], m["report"]["place"]["lon"]) for m in spots])
    by_id = {s["dev_id"]: s for s in placed}
    parts.append('<g class="links">')
    for s in placed:
        up = by_id.get(s.get("upstream"))
        if up is None:
            continue
        (x1, y1), (x2, y2) = xy(up["lat"], up["lon"]), xy(s["lat"], s["lon"])
        cls = STATE_CLASS[(states.get(s["dev"]) or {}).get("warning")]
        on = " lit" if s["dev"] in lit and up["dev"] in lit else ""
        parts.append(f'<line class="link {cls}{on}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" '
                     f'data-from="{up["dev"]}" data-to="{s["dev"]}"/>')
    parts.append('</g><g class="stations">')
    for s in placed:
        x, y = xy(s["lat"], s["lon"])
        st = states.get(s["dev"])
        cls = STATE_CLASS[(st or {}).get("warning")]
        if lit:
            cls += " lit" if s["dev"] in lit else " unlit"
        href = f'/incidents/{escape(st["incident_id"])}' if st else f'/stations/{s["dev"]}'
        r = 7 + min(8, math.log10(max(s.get("households") or 1, 1)))     # bigger for more households
        name = escape(s.get("site_name") or s["dev"])
        tip = f'{name} ({s["dev"]}), {s.get("households") or 0:,} households'
        if st:
            tip += f', incident {escape(st["incident_id"])}'
        parts.append(f'<a href="{href}" class="station {cls}" data-dev="{s["dev"]}">'
                     f'<title>{tip}</title><circle cx="{x}" cy="{y}" r="{r:.1f}"/>'
                     f'<text x="{x + r + 3:.1f}" y="{y + 4}">{name}</text></a>')
    parts.append('</g><g class="spots">')
    for m in spots:
        place = m["report"]["place"]
        x, y = xy(place["lat"], place["lon"])
        cls = STATE_CLASS[m.get("warning")]
        if highlight:
            cls += " lit" if m["incident_id"] == highlight else " unlit"
        tip = escape(f'{place.get("site_name") or m["incident_id"]}: {m.get("title", "")} ({m["incident_id"]})')
        parts.append(f'<a href="/incidents/{escape(m["incident_id"])}" class="spot {cls}" '
                     f'data-incident="{escape(m["incident_id"])}"><title>{tip}</title>'
                     f'<rect x="{x - 6}" y="{y - 6}" width="12" height="12" transform="rotate(45 {x} {y})"/></a>')
    parts.append('</g></svg>')
    return "".join(parts)
