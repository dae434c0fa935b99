"""The draft report of plan 4.1.3, as JSON (schema: gateway/schemas/incident.schema.json) and as Chinese text.

"突发事件发生的时间、地点、信息来源、事件类别、基本过程、财产损失、人员伤亡情况、对事件的初判级别、
已经采取的措施、有无次生或衍生危害、周边有无危险源、警报发布情况、是否需要疏散群众、需要支援事项和亟需
帮助解决的问题，现场负责人和报告人的姓名、单位和联系电话" (plan 4.1.3).

Every field the system can fill from the registry and the readings it fills; the rest is null and listed
in `to_be_completed`, so a reader sees at once what people still have to add.
"""

from __future__ import annotations

import json
from pathlib import Path

import gasguard.gateway
from gasguard.grading import engine as G

SCHEMA_ID = "gasguard.incident/1"
# the MQTT payload schemas live together with the gateway that publishes them (gateway/schemas/)
SCHEMA_PATH = Path(gasguard.gateway.__file__).with_name("schemas") / "incident.schema.json"

# what the command may send on .../command/input/<id>, and its type
OPERATOR_FIELDS = {
    "deaths": int, "serious_injuries": int, "direct_loss_cny": (int, float), "evacuated": int,
    "forecast_excess_pct": (int, float),
    "secondary_hazards": str, "hazard_sources_nearby": str, "warnings_issued": str,
    "evacuation_advised": bool, "support_needed": str, "on_site_lead": str, "resolved": bool,
    "note": str, "by": str,
}
_NUMERIC = ("deaths", "serious_injuries", "direct_loss_cny", "evacuated", "forecast_excess_pct")


def validate_operator_input(payload: dict) -> list[str]:
    problems = []
    if not isinstance(payload, dict):
        return ["input must be a JSON object"]
    for k, v in payload.items():
        if k not in OPERATOR_FIELDS:
            problems.append(f"unknown field {k!r} (allowed: {', '.join(OPERATOR_FIELDS)})")
        elif not isinstance(v, OPERATOR_FIELDS[k]) or (isinstance(v, bool) and OPERATOR_FIELDS[k] is not bool):
            problems.append(f"{k} must be {getattr(OPERATOR_FIELDS[k], '__name__', 'a number')}")
        elif k in _NUMERIC and v < 0:
            problems.append(f"{k} cannot be negative")
    return problems


def _iso(cfg, t):
    return None if t is None else G.local_time(cfg, t).isoformat(timespec="seconds")


def _place(inc) -> dict:
    devs = inc.devices()
    first = devs[0] if devs else inc.origin
    return {"site_name": first.get("site_name") or None, "address": first.get("address") or None,
            "lat": first.get("lat"), "lon": first.get("lon"),
            "devices": [{"dev": d["dev"], "profile": d.get("profile"), "site_name": d.get("site_name"),
                         "address": d.get("address"), "key_area": bool(d.get("key_area"))} for d in devs]}


def build(cfg: dict, inc, now: float) -> dict:
    op = inc.operator
    what = {"kind": inc.kind, "summary": summary(inc), "timeline": [
        {**e, "time": _iso(cfg, e["t"])} for e in inc.timeline], "timeline_dropped": inc.timeline_dropped}
    if inc.kind == "supply":
        what["stations"] = [{"dev": s["device"]["dev"], "site_name": s["device"].get("site_name"),
                             "cause": s["cause"], "cut_at": _iso(cfg, s["cut_at"]),
                             "restored_at": _iso(cfg, s["restored_at"]),
                             "households_served": (s["device"].get("households") or 0)
                             + sum(d.get("households") or 0 for d in s["affected"]),
                             "downstream_stations": [d["dev"] for d in s["affected"]],
                             "user_class": s["device"].get("user_class")} for s in inc.stations.values()]
    if inc.kind == "pressure":
        p = inc.pressure
        what["pressure"] = {"dev": p["device"]["dev"], "pressure_class": p["device"].get("pressure_class"),
                            "bound_mpa": p.get("bound_mpa"), "inlet_mpa": None if p.get("last_pa") is None
                            else round(p["last_pa"] / 1e6, 4), "below": p.get("below"),
                            "still_falling": p.get("falling"), "crossed_at": _iso(cfg, p.get("crossed_at"))}
    evac = op.get("evacuation_advised")
    if evac is None and inc.kind == "leak":
        evac = True           # plan 5.1.1.2: set a warning zone and move people out of it
    rep = {
        "time": _iso(cfg, inc.detected_at),
        "place": _place(inc),
        "source": {"gateway": cfg["gateway_id"], "devices": [d["dev"] for d in inc.devices()],
                   "text": f"GasGuard gateway {cfg['gateway_id']}, automatic detection by sensor nodes"},
        "category": inc.category,
        "what_happened": what,
        "losses_cny": op.get("direct_loss_cny"),
        "casualties": None if op.get("deaths") is None and op.get("serious_injuries") is None else
        {"deaths": op.get("deaths"), "serious_injuries": op.get("serious_injuries")},
        "preliminary_level": {"level": inc.level, "name": G.LEVEL_NAMES.get(inc.level),
                              "projected": inc.projected, "basis": inc.basis},
        "households_cut_off": {"projected": inc.households, "confirmed_24h": inc.households_confirmed}
        if inc.kind == "supply" else None,
        "evacuated": op.get("evacuated"),
        "measures_taken": [{**m, "time": _iso(cfg, m["t"])} for m in inc.measures] or None,
        "secondary_hazards": op.get("secondary_hazards"),
        "hazard_sources_nearby": op.get("hazard_sources_nearby"),
        "warnings_issued": {"proposed": inc.warning, "raised_by": inc.warning_reasons,
                            "issued": op.get("warnings_issued")},
        "evacuation_advised": evac,
        "support_needed": op.get("support_needed"),
        "on_site_lead": op.get("on_site_lead"),
        "reporter": {"gateway": cfg["gateway_id"], "unit": cfg["reporter_unit"] or None,
                     "name": cfg["reporter_name"] or None, "phone": cfg["reporter_phone"] or None},
        "notes": list(inc.notes),
    }
    rep["to_be_completed"] = [k for k in ("losses_cny", "casualties", "evacuated", "secondary_hazards",
                                          "hazard_sources_nearby", "support_needed", "on_site_lead",
                                          "measures_taken", "evacuation_advised") if rep[k] is None]
    rep["to_be_completed"] += [f"reporter.{k}" for k in ("unit", "name", "phone") if rep["reporter"][k] is None]
    if rep["warnings_issued"]["issued"] is None:
        rep["to_be_completed"].append("warnings_issued.issued")
    return rep


def summary(inc) -> str:
    if inc.kind == "supply":
        n = sum(1 for s in inc.stations.values() if s["restored_at"] is None)
        return f"{n} station(s) without supply, {inc.households} households cut off"
    if inc.kind == "leak":
        return f"{len(inc.members)} gas leak alarm(s)"
    p = inc.pressure
    return f"inlet {p.get('last_pa', 0) / 1e6:.3f} MPa, bound {p.get('bound_mpa')} MPa"


def message(cfg: dict, inc, now: float, kind: str) -> dict:
    """One publication: the envelope a consumer orders by (incident_id, revision), plus the report."""
    phone = inc.detected_at + cfg["phone_deadline_s"]
    written = inc.detected_at + cfg["written_deadline_s"]
    rep = build(cfg, inc, now)
    msg = {
        "schema": SCHEMA_ID, "incident_id": inc.id, "revision": inc.revision, "kind": kind,
        "status": inc.status, "district": cfg["district"], "published_at": now,
        "detected_at": inc.detected_at, "resolved_at": inc.resolved_at,
        "deadlines": {"phone": phone, "written": written},
        "acked": inc.acked, "escalation": inc.escalation,
        "level": inc.level, "warning": inc.warning, "projected": inc.projected, "category": inc.category,
        "households": inc.households if inc.kind == "supply" else 0,
        "routes": ["district", "city"] if inc.routed_city else ["district"],
        "title": title(inc),
        "report": rep,
    }
    msg["text_zh"] = render_zh(cfg, msg)
    return msg


def title(inc) -> str:
    site = inc.origin.get("site_name") or inc.origin["dev"]
    return {"supply": f"supply stopped: {site}", "leak": f"gas leak: {site}",
            "pressure": f"network pressure: {site}"}[inc.kind]


def _v(x, unit=""):
    return "【待补充】" if x is None else f"{x}{unit}"


def render_zh(cfg: dict, msg: dict) -> str:
    """The report as Chinese text for people (plan 4.1.3 order)."""
    r = msg["report"]
    lv = r["preliminary_level"]
    lines = []
    head = {"new": "首报", "update": "续报", "escalation": "催报（未确认）", "final": "终报", "sync": "续报"}
    lines.append(f"城镇燃气突发事件信息{head.get(msg['kind'], '续报')}（草稿） 编号 {msg['incident_id']} 第{msg['revision']}版")
    if msg.get("escalation"):
        e = msg["escalation"]
        lines.append(f"!! 已超过{'电话报告（20分钟）' if e['stage'] == 'phone' else '书面报告（45分钟）'}时限"
                     f" {int(e['overdue_s'] // 60)} 分钟，尚未确认，第{e['count']}次催报")
    lines.append(f"一、时间：{r['time']}")
    p = r["place"]
    lines.append(f"二、地点：{_v(p['site_name'])} {p['address'] or ''}"
                 + (f"（{p['lat']:.5f}, {p['lon']:.5f}）" if p["lat"] is not None and p["lon"] is not None else ""))
    lines.append(f"三、信息来源：GasGuard 网关 {r['source']['gateway']} 自动监测，节点 {', '.join(r['source']['devices'])}")
    lines.append(f"四、事件类别：{G.CATEGORY_NAMES_ZH[r['category']]}")
    lines.append("五、基本过程：")
    for e in r["what_happened"]["timeline"]:
        lines.append(f"    {e['time'][11:19]} {e.get('text_zh') or e['text']}")
    hh = r.get("households_cut_off")
    if hh:
        lines.append(f"    停气居民户数：预计 {hh['projected']} 户，已连续停气24小时以上 {hh['confirmed_24h']} 户")
    lines.append(f"六、财产损失：{_v(r['losses_cny'], ' 元')}")
    c = r["casualties"] or {}
    lines.append(f"七、人员伤亡：死亡 {_v(c.get('deaths'), ' 人')}，重伤 {_v(c.get('serious_injuries'), ' 人')}")
    lvl = G.LEVEL_NAMES_ZH.get(lv["level"], "未达分级标准")
    lines.append(f"八、初判级别：{lvl}" + ("（初判，预测值，停气未满24小时）" if lv["projected"] else ""))
    lines.append("九、已采取的措施：" + ("" if r["measures_taken"] else "【待补充】"))
    for m in r["measures_taken"] or []:
        lines.append(f"    {m['text_zh']}")
    lines.append(f"十、次生或衍生危害：{_v(r['secondary_hazards'])}")
    lines.append(f"十一、周边危险源：{_v(r['hazard_sources_nearby'])}")
    w = r["warnings_issued"]
    lines.append(f"十二、警报发布情况：建议{G.WARNING_NAMES_ZH.get(w['proposed'], '无')}预警"
                 + (f"（{'、'.join('重点区域' if x == 'key_area' else '重大节日/活动期间' for x in w['raised_by'])}提高一级）"
                    if w["raised_by"] else "") + f"；已发布：{_v(w['issued'])}")
    ev = r["evacuation_advised"]
    lines.append(f"十三、是否需要疏散群众：{'【待补充】' if ev is None else '建议疏散' if ev else '暂不需要'}"
                 + (f"，已疏散 {r['evacuated']} 人" if r.get("evacuated") is not None else ""))
    lines.append(f"十四、需要支援事项：{_v(r['support_needed'])}")
    lines.append(f"十五、现场负责人：{_v(r['on_site_lead'])}")
    rp = r["reporter"]
    lines.append(f"十六、报告人：GasGuard 网关 {rp['gateway']}；单位 {_v(rp['unit'])}；姓名 {_v(rp['name'])}；"
                 f"电话 {_v(rp['phone'])}")
    lines.append("电话报告时限：" + G.local_time(cfg, msg["deadlines"]["phone"]).strftime("%H:%M:%S")
                 + "；书面报告时限：" + G.local_time(cfg, msg["deadlines"]["written"]).strftime("%H:%M:%S")
                 + ("；已确认（" + msg["acked"]["by"] + "）" if msg.get("acked") else "；未确认"))
    if msg["status"] == "resolved":
        lines.append("状态：已结束（终报）")
    return "\n".join(lines)


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
