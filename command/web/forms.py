"""Operator input from the incident page's form: typed values, and an error for each field it cannot take,
shown at that field. The field list and its types are the grading library's (`report.OPERATOR_FIELDS`)."""

from __future__ import annotations

from gasguard.grading import report as R

NUMBERS = {"deaths": "people", "serious_injuries": "people", "evacuated": "people", "direct_loss_cny": "CNY",
           "forecast_excess_pct": "%"}
TEXTS = ("secondary_hazards", "hazard_sources_nearby", "warnings_issued", "support_needed", "on_site_lead", "note")
CHOICES = ("evacuation_advised",)            # yes / no / not said
FLAGS = ("resolved",)
LABELS = {
    "deaths": "Deaths", "serious_injuries": "Serious injuries", "evacuated": "People evacuated",
    "direct_loss_cny": "Direct loss (CNY)", "forecast_excess_pct": "Supply forecast above plan (%)",
    "secondary_hazards": "Secondary hazards", "hazard_sources_nearby": "Hazard sources nearby",
    "warnings_issued": "Warnings issued", "support_needed": "Support needed",
    "on_site_lead": "On-site lead (name, unit, phone)", "note": "Note", "evacuation_advised": "Evacuation",
    "resolved": "Incident is over: close it with a final report",
}
MAX_TEXT = 2000
assert set(NUMBERS) | set(TEXTS) | set(CHOICES) | set(FLAGS) | {"by"} == set(R.OPERATOR_FIELDS)


def parse(form) -> tuple[dict, dict]:
    """(fields to send, {field: error}). Empty fields are not sent (nothing to report is not zero)."""
    out: dict = {}
    errors: dict = {}
    for k in NUMBERS:
        raw = (form.get(k) or "").strip().replace(",", "")
        if not raw:
            continue
        want_int = R.OPERATOR_FIELDS[k] is int
        try:
            v = int(raw) if want_int else float(raw)
        except ValueError:
            errors[k] = "a whole number, e.g. 3" if want_int else "a number, e.g. 12.5"
            continue
        if v < 0:
            errors[k] = "cannot be negative"
        elif k == "forecast_excess_pct" and v > 1000:
            errors[k] = "a percentage above the plan, 0 to 1000"
        else:
            out[k] = int(v) if not want_int and float(v).is_integer() else v
    for k in TEXTS:
        raw = (form.get(k) or "").strip()
        if len(raw) > MAX_TEXT:
            errors[k] = f"at most {MAX_TEXT} characters ({len(raw)} given)"
        elif raw:
            out[k] = raw
    ev = form.get("evacuation_advised") or ""
    if ev in ("yes", "no"):
        out["evacuation_advised"] = ev == "yes"
    elif ev:
        errors["evacuation_advised"] = "choose yes, no, or leave it unsaid"
    if form.get("resolved") in ("on", "yes", "true"):
        out["resolved"] = True
    if not out and not errors:
        errors["_form"] = "nothing to send: fill at least one field"
    return out, errors
