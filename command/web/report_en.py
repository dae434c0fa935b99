"""The English view of the draft report: plan 4.1.3's fields in the plan's order, as (label, value) rows.

The Chinese text (`text_zh`, built by the grading library) is the report of record; this view is for the
reader who needs English, and shows the same JSON fields. A field nobody has filled yet says so."""

from __future__ import annotations

TODO = "[to be completed]"
HEAD = {"new": "first report", "update": "update", "escalation": "reminder (not acknowledged)",
        "final": "final report", "sync": "update"}
LEVELS = {1: "I (especially serious)", 2: "II (serious)", 3: "III (major)", 4: "IV (general)"}
CATEGORIES = {"safety_accident": "safety accident", "supply_assurance": "supply assurance"}


def _v(x, unit: str = "") -> str:
    return TODO if x is None else f"{x:,}{unit}" if isinstance(x, (int, float)) and not isinstance(x, bool) \
        else f"{x}{unit}"


def rows(msg: dict, fmt_time) -> list[tuple[str, str]]:
    r = msg["report"]
    p, lv, w = r["place"], r["preliminary_level"], r["warnings_issued"]
    c = r.get("casualties") or {}
    hh = r.get("households_cut_off")
    place = " ".join(x for x in (p.get("site_name"), p.get("address")) if x) or TODO
    if p.get("lat") is not None and p.get("lon") is not None:
        place += f" ({p['lat']:.5f}, {p['lon']:.5f})"
    what = r["what_happened"]["summary"]
    if hh:
        what += f"; households cut off: {hh['projected']:,} projected, {hh['confirmed_24h']:,} for 24 h or more"
    level = LEVELS.get(lv["level"], "below the plan's levels")
    if lv["projected"]:
        level += " — projection (supply stopped for less than 24 h)"
    raised = {"key_area": "key area", "key_period": "key period"}
    warn = f"proposed {w['proposed'] or 'none'}"
    if w["raised_by"]:
        warn += " (raised one step: " + ", ".join(raised.get(x, x) for x in w["raised_by"]) + ")"
    warn += f"; issued: {_v(w['issued'])}"
    ev = r.get("evacuation_advised")
    evac = TODO if ev is None else "advised" if ev else "not needed for now"
    if r.get("evacuated") is not None:
        evac += f"; {r['evacuated']:,} people evacuated"
    rp = r["reporter"]
    return [
        ("1. Time", r["time"] or TODO),
        ("2. Place", place),
        ("3. Source", r["source"]["text"] + " — nodes " + ", ".join(r["source"]["devices"])),
        ("4. Category", CATEGORIES.get(r["category"], r["category"])),
        ("5. What happened", what),
        ("6. Losses", _v(r.get("losses_cny"), " CNY")),
        ("7. Casualties", f"deaths {_v(c.get('deaths'))}, serious injuries {_v(c.get('serious_injuries'))}"),
        ("8. Preliminary level", level),
        ("9. Measures taken", "; ".join(f"{fmt_time(m['t'])} {m['text']}" for m in r.get("measures_taken") or [])
         or TODO),
        ("10. Secondary hazards", _v(r.get("secondary_hazards"))),
        ("11. Hazard sources nearby", _v(r.get("hazard_sources_nearby"))),
        ("12. Warnings", warn),
        ("13. Evacuation", evac),
        ("14. Support needed", _v(r.get("support_needed"))),
        ("15. On-site lead", _v(r.get("on_site_lead"))),
        ("16. Reporter", f"GasGuard gateway {rp['gateway']}; unit {_v(rp['unit'])}; name {_v(rp['name'])}; "
                         f"phone {_v(rp['phone'])}"),
    ]
