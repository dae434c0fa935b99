"""Incident lifecycle with virtual time: projection, clustering, deadlines, escalation, ack, operator input."""

import jsonschema
import pytest

from gasguard.grading import report
from gasguard.grading.incidents import IncidentEngine
from grading_helpers import T0, alarm, device, payloads, reading, valve_event

VALIDATOR = jsonschema.Draft202012Validator(report.schema(), format_checker=jsonschema.FormatChecker())
UPSO, GAS_L2 = 4, 2


def engine(cfg=None, links=None):
    links = links or {}
    return IncidentEngine(cfg or {}, downstream=lambda d: links.get(d, []))


def check(out):
    for _, p in out:
        VALIDATOR.validate(p)
    return out


def trip(eng, st, t, aseq=1, age=0):
    return check(eng.observe(alarm(st, t, UPSO, aseq=aseq, age=age, value=900, ptrip=True)))


# --- households cut off (plan 1.6.2.x(2)) --------------------------------------------------------------
@pytest.mark.parametrize("households,level,warning,city", [
    (999, None, "blue", False), (1_000, 4, "blue", False), (9_999, 4, "blue", False),
    (10_000, 3, "yellow", True), (29_999, 3, "yellow", True), (30_000, 2, "orange", True),
    (49_999, 2, "orange", True), (50_000, 1, "red", True)])
def test_station_trip_grades_households(households, level, warning, city):
    eng = engine()
    out = trip(eng, device(0xA001, households=households), T0)
    msg = payloads(out)[0]
    assert (msg["level"], msg["warning"], msg["households"]) == (level, warning, households)
    assert msg["projected"] is (level is not None)
    assert msg["category"] == "supply_assurance"
    assert any("/city/incident/" in t for t, _ in out) is city
    assert sum("/lixia/command/incident/" in t for t, _ in out) == 1     # the district always


def test_downstream_stations_count_once_and_key_area_raises_warning():
    a = device(0xA001, households=8_000)
    b = device(0xA002, households=4_000, upstream=0xA001, key_area=True)
    eng = engine(links={0xA001: [b]})
    msg = payloads(trip(eng, a, T0), "/lixia/")[0]
    assert msg["households"] == 12_000 and msg["level"] == 3
    assert msg["warning"] == "orange" and msg["report"]["warnings_issued"]["raised_by"] == ["key_area"]
    # the downstream station trips too (no gas from upstream): still 12,000, one incident
    out = trip(eng, b, T0 + 30)
    assert payloads(out, "/lixia/")[0]["households"] == 12_000
    assert len(eng.open_incidents()) == 1


def test_district_count_adds_stations_and_rises():
    eng = engine()
    first = payloads(trip(eng, device(0xA001, households=6_000), T0), "/lixia/")[0]
    assert first["level"] == 4 and first["kind"] == "new"
    second = payloads(trip(eng, device(0xA003, households=5_000), T0 + 600), "/lixia/")[0]
    assert second["incident_id"] == first["incident_id"] and second["revision"] == first["revision"] + 1
    assert (second["households"], second["level"], second["kind"]) == (11_000, 3, "update")


def test_projection_until_24h_then_confirmed():
    eng = engine()
    st = device(0xA001, households=12_000)
    msg = payloads(trip(eng, st, T0), "/lixia/")[0]
    assert msg["projected"] and msg["report"]["households_cut_off"] == {"projected": 12_000, "confirmed_24h": 0}
    assert "初判" in msg["text_zh"]
    eng.acknowledge(msg["incident_id"], {"by": "duty"}, T0 + 60)
    assert payloads(eng.tick(T0 + 24 * 3600 - 1), "/lixia/") == []
    conf = payloads(check(eng.tick(T0 + 24 * 3600)), "/lixia/")
    assert len(conf) == 1 and conf[0]["projected"] is False and conf[0]["level"] == 3
    assert conf[0]["report"]["households_cut_off"]["confirmed_24h"] == 12_000


def test_supply_restored_publishes_final_report():
    eng = engine()
    st = device(0xA001, households=12_000, site="燕山站")
    msg = payloads(trip(eng, st, T0), "/lixia/")[0]
    assert payloads(eng.observe(reading(st, T0 + 60, pressure=0, valve=1, ptrip=True))) == []  # no news
    out = check(eng.observe(reading(st, T0 + 3600, pressure=2500, valve=0)))
    final = payloads(out, "/lixia/")[0]
    assert final["kind"] == "final" and final["status"] == "resolved" and final["resolved_at"] == T0 + 3600
    assert any("/city/" in t for t, _ in out)                              # the city had it: it gets the end
    assert final["projected"] is True                                      # never reached 24 h
    assert "终报" in final["text_zh"] and "恢复供气" in final["text_zh"]
    assert payloads(eng.tick(T0 + 2 * 3600)) == []                         # resolved: no escalation
    assert final["incident_id"] == msg["incident_id"]


def test_outlet_pressure_lost_and_valve_event_detect_supply_stop():
    eng = engine()
    st = device(0xA001, households=2_000)
    msg = payloads(check(eng.observe(reading(st, T0, pressure=100))), "/lixia/")[0]
    assert msg["report"]["what_happened"]["stations"][0]["cause"] == "outlet"
    eng2 = engine()
    msg2 = payloads(check(eng2.observe(valve_event(st, T0, valve=1, cause=3))), "/lixia/")[0]
    assert msg2["level"] == 4 and "shut off automatically" in msg2["report"]["measures_taken"][0]["text"]
    out = eng2.observe(valve_event(st, T0 + 900, valve=0, cause=5, eseq=2))
    assert payloads(out, "/lixia/")[0]["status"] == "resolved"


def test_alarm_age_sets_detection_time_and_measure_time():
    eng = engine()
    msg = payloads(trip(eng, device(0xA001, households=1_500), T0, age=125), "/lixia/")[0]
    assert msg["detected_at"] == T0 - 125
    assert msg["deadlines"] == {"phone": T0 - 125 + 1200, "written": T0 - 125 + 2700}
    m = msg["report"]["measures_taken"][0]
    assert m["t"] == T0 - 125 and m["time"].endswith("10:11:15+08:00")


def test_retransmitted_alarm_is_one_observation():
    eng = engine()
    st = device(0xA001, households=1_500)
    assert trip(eng, st, T0, aseq=7)
    assert eng.observe(alarm(st, T0 + 5, UPSO, aseq=7, value=900, ptrip=True)) == []


# --- leaks (plan 1.6.1.1, 5.1.1) and clustering ----------------------------------------------------------
def home(dev_id, dlat=0.0, dlon=0.0, **kw):
    return device(dev_id, profile="household", households=1, lat=36.66 + dlat, lon=117.06 + dlon, **kw)


def leak(eng, h, t, aseq=1):
    return check(eng.observe(alarm(h, t, GAS_L2, aseq=aseq, value=300, valve=1, gas_level=2)))


def test_household_shutoff_is_level_iv_safety_incident_with_measure():
    eng = engine()
    out = leak(eng, home(0x100001), T0 + 2 * 3600 + 43)
    msg = payloads(out)[0]
    assert len(out) == 1 and "/city/" not in out[0][0]
    assert (msg["level"], msg["warning"], msg["category"]) == (4, "blue", "safety_accident")
    assert "valve at 00100001 closed automatically at 12:14:03" in msg["report"]["measures_taken"][0]["text"]
    assert msg["report"]["evacuation_advised"] is True
    assert "30.0 %LEL" in msg["report"]["what_happened"]["timeline"][0]["text"]


def test_leak_cluster_radius_window_count():
    eng = engine()                                   # defaults: 200 m, 1800 s, 3 alarms
    a = payloads(leak(eng, home(0x100001), T0))[0]
    b = payloads(leak(eng, home(0x100002, dlat=0.0015), T0 + 600))[0]          # ~167 m, 10 min later
    assert b["incident_id"] == a["incident_id"] and b["level"] == 4
    far = payloads(leak(eng, home(0x100003, dlat=-0.0025), T0 + 700))[0]       # ~278 m: its own incident
    assert far["incident_id"] != a["incident_id"]
    late = payloads(leak(eng, home(0x100004, dlon=0.001), T0 + 600 + 1801))[0]  # > 30 min after the last
    assert late["incident_id"] not in (a["incident_id"], far["incident_id"])
    out = leak(eng, home(0x100005, dlon=-0.001), T0 + 900)                     # third alarm near the first
    third = payloads(out, "/lixia/")[0]
    assert third["incident_id"] == a["incident_id"] and third["level"] == 3 and third["warning"] == "yellow"
    assert any("/city/" in t for t, _ in out)
    assert third["report"]["preliminary_level"]["projected"] is True


def test_cluster_parameters_are_configuration():
    eng = engine({"leak_cluster_count": 2, "leak_cluster_radius_m": 50.0})
    a = payloads(leak(eng, home(0x100001), T0))[0]
    b = payloads(leak(eng, home(0x100002, dlat=0.0003), T0 + 60))[0]            # ~33 m
    assert b["incident_id"] == a["incident_id"] and b["level"] == 3
    c = payloads(leak(eng, home(0x100003, dlat=0.0009), T0 + 60))[0]            # ~67 m from b... 100 from a
    assert c["incident_id"] != a["incident_id"]


def test_leak_resolves_when_gas_clears_and_valve_reopens():
    eng = engine()
    h = home(0x100001)
    leak(eng, h, T0)
    out = check(eng.observe(alarm(h, T0 + 300, GAS_L2, cleared=True, aseq=1, valve=1)))
    assert payloads(out)[0]["status"] == "open"                                 # valve still latched shut
    out = check(eng.observe(reading(h, T0 + 4000, pressure=2000, valve=0)))
    msg = payloads(out)[0]
    assert msg["kind"] == "final" and "阀门已重新开启" in msg["text_zh"]


# --- network pressure (plan 3.3.1(2)) ------------------------------------------------------------------------
def test_inlet_pressure_falling_is_red_then_recovers():
    eng = engine()
    st = device(0xB001, households=500, pressure_class="subhigh_a")
    msgs = []
    for i in range(0, 17):       # from 0.21 MPa down 2 kPa a minute: under 0.4 MPa at once, under 0.2 at 6 min
        msgs += payloads(check(eng.observe(reading(st, T0 + 60 * i, pressure=2500, inlet=210_000 - 2_000 * i))),
                         "/lixia/")
    assert [(m["kind"], m["warning"]) for m in msgs] == [("new", "orange"), ("update", "red")]
    assert msgs[0]["detected_at"] == T0 and msgs[0]["published_at"] == T0 + 600     # 10 min window
    assert msgs[1]["published_at"] == T0 + 16 * 60                                 # 0.2 crossed at 6 min
    assert msgs[1]["report"]["what_happened"]["pressure"]["bound_mpa"] == 0.2
    assert any("/city/" in t for t, _ in eng.sync(T0 + 1000))                   # red: the city's warning
    rec = payloads(check(eng.observe(reading(st, T0 + 17 * 60, pressure=2500, inlet=199_000))), "/lixia/")
    assert "recovering" in rec[0]["report"]["what_happened"]["timeline"][-1]["text"]
    assert rec[0]["warning"] == "red"                                           # the plan's 3.7: city lifts it
    fin = payloads(check(eng.observe(reading(st, T0 + 18 * 60, pressure=2500, inlet=420_000))), "/lixia/")
    assert fin[0]["kind"] == "final"


# --- deadlines and escalation (plan 4.1.2) --------------------------------------------------------------------
def test_escalation_at_20_and_45_minutes_until_acknowledged():
    eng = engine()
    msg = payloads(trip(eng, device(0xA001, households=12_000), T0), "/lixia/")[0]
    iid = msg["incident_id"]
    assert eng.tick(T0 + 1199.9) == []
    esc = check(eng.tick(T0 + 1200))
    assert {t.split("/")[2] for t, _ in esc} == {"lixia", "city"}
    e = payloads(esc, "/lixia/")[0]
    assert e["kind"] == "escalation" and e["escalation"] == {"stage": "phone", "count": 1, "overdue_s": 0.0}
    assert "催报" in e["text_zh"]
    assert eng.tick(T0 + 1200 + 299) == []                                      # repeat every 300 s
    assert payloads(eng.tick(T0 + 1500), "/lixia/")[0]["escalation"]["count"] == 2
    w = payloads(eng.tick(T0 + 2700), "/lixia/")[0]
    assert w["escalation"]["stage"] == "written"
    revs = [e["revision"], w["revision"]]
    ack = payloads(check(eng.acknowledge(iid, {"by": "王值班", "revision": w["revision"]}, T0 + 2750)), "/lixia/")[0]
    assert ack["acked"]["by"] == "王值班" and ack["escalation"] is None and ack["revision"] > revs[-1]
    assert eng.tick(T0 + 2800) == [] and eng.tick(T0 + 5 * 3600) == []


def test_acknowledged_before_deadline_never_escalates():
    eng = engine()
    iid = payloads(trip(eng, device(0xA001, households=12_000), T0))[0]["incident_id"]
    eng.on_message(f"gasguard/v1/lixia/command/ack/{iid}", {"by": "duty"}, T0 + 100)
    assert all(eng.tick(T0 + m * 60) == [] for m in range(0, 60))


def test_upgrade_needs_new_ack_and_stale_ack_is_ignored():
    eng = engine()
    first = payloads(trip(eng, device(0xA001, households=6_000), T0), "/lixia/")[0]
    iid = first["incident_id"]
    eng.acknowledge(iid, {"by": "duty", "revision": first["revision"]}, T0 + 60)
    up = payloads(trip(eng, device(0xA002, households=6_000), T0 + 120), "/lixia/")[0]
    assert up["level"] == 3 and up["acked"] is None                            # re-grade: ack again
    assert eng.acknowledge(iid, {"by": "late", "revision": first["revision"]}, T0 + 130) == []
    assert payloads(eng.tick(T0 + 1200), "/lixia/")[0]["kind"] == "escalation"
    assert payloads(eng.acknowledge(iid, {"by": "duty", "revision": up["revision"]}, T0 + 1300))[0]["acked"]


def test_unknown_incident_ack_and_foreign_topics_are_ignored():
    eng = engine()
    assert eng.acknowledge("nope", {}, T0) == []
    assert eng.on_message("gasguard/v1/other/command/ack/x", {}, T0) == []


# --- operator input re-grades (plan 1.6.2) ----------------------------------------------------------------------
@pytest.mark.parametrize("facts,level,projected", [
    ({"deaths": 2}, 4, True),             # households (III, projected) still the most severe
    ({"deaths": 3}, 3, False),            # III from a fact: no longer a projection
    ({"serious_injuries": 50}, 2, False),
    ({"direct_loss_cny": 100_000_000}, 1, False),
    ({"evacuated": 5_000}, 2, False),
    ({"evacuated": 999}, 3, True),
])
def test_operator_input_regrades(facts, level, projected):
    eng = engine()
    iid = payloads(trip(eng, device(0xA001, households=12_000), T0))[0]["incident_id"]
    msg = payloads(check(eng.operator_input(iid, {**facts, "by": "现场"}, T0 + 600)), "/lixia/")[0]
    expected_level = min(level, 3)
    assert msg["level"] == expected_level
    assert msg["projected"] is (projected if level >= 3 else False)


def test_operator_fields_fill_the_report_and_resolve():
    eng = engine({"reporter_unit": "历下区住建局", "reporter_name": "李工", "reporter_phone": "0531-0000"})
    iid = payloads(leak(eng, home(0x100001), T0))[0]["incident_id"]
    before = payloads(eng.sync(T0))[0]["report"]["to_be_completed"]
    assert {"casualties", "losses_cny", "on_site_lead", "support_needed"} <= set(before)
    assert "reporter.unit" not in before
    msg = payloads(check(eng.operator_input(iid, {"deaths": 0, "serious_injuries": 1, "direct_loss_cny": 20000,
                                                  "on_site_lead": "张三 13800000000", "support_needed": "抢修车",
                                                  "note": "现场已警戒"}, T0 + 300)))[0]
    r = msg["report"]
    assert r["casualties"] == {"deaths": 0, "serious_injuries": 1} and r["losses_cny"] == 20000
    assert "casualties" not in r["to_be_completed"] and "张三" in msg["text_zh"]
    assert r["notes"][0]["text"] == "现场已警戒"
    bad = payloads(eng.operator_input(iid, {"deaths": -1, "colour": "x"}, T0 + 400))[0]
    assert "rejected input" in bad["report"]["notes"][-1]["text"] and bad["report"]["casualties"]["deaths"] == 0
    fin = payloads(eng.on_message(f"gasguard/v1/lixia/command/input/{iid}", {"resolved": True}, T0 + 500))[0]
    assert fin["kind"] == "final" and fin["status"] == "resolved"


def test_revisions_increase_and_sync_republishes_without_new_revision():
    eng = engine()
    out = trip(eng, device(0xA001, households=12_000), T0) + eng.tick(T0 + 1200) + eng.tick(T0 + 1500)
    revs = [p["revision"] for p in payloads(out, "/lixia/")]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    sync = payloads(eng.on_message("gasguard/v1/lixia/command/sync", {}, T0 + 1600), "/lixia/")
    assert sync[0]["revision"] == revs[-1] and sync[0]["kind"] == "sync"


def test_resolved_incidents_are_forgotten_after_keep_time():
    eng = engine()
    st = device(0xA001, households=1_500)
    trip(eng, st, T0)
    eng.observe(reading(st, T0 + 60, pressure=2500))
    assert eng.sync(T0 + 100)
    eng.tick(T0 + 60 + 3600)
    assert eng.sync(T0 + 60 + 3601) == []


def test_timeline_is_bounded_and_counts_what_it_dropped():
    eng = engine({"history_len": 4})
    for i in range(6):
        trip(eng, device(0xA001 + i, households=100), T0 + i, aseq=i)
    msg = payloads(eng.sync(T0 + 10))[0]
    assert len(msg["report"]["what_happened"]["timeline"]) == 4
    assert msg["report"]["what_happened"]["timeline_dropped"] == 2


def test_operator_supply_forecast_raises_warning_and_routes_to_city():
    eng = engine()
    out = trip(eng, device(0xA001, households=2_000), T0)
    iid = payloads(out)[0]["incident_id"]
    assert not any("/city/" in t for t, _ in out)
    out = check(eng.operator_input(iid, {"forecast_excess_pct": 35.0}, T0 + 60))
    msg = payloads(out, "/lixia/")[0]
    assert msg["warning"] == "orange" and msg["level"] == 4 and any("/city/" in t for t, _ in out)


def test_operator_notes_are_bounded():
    eng = engine()
    iid = payloads(trip(eng, device(0xA001, households=2_000), T0))[0]["incident_id"]
    for i in range(105):
        eng.operator_input(iid, {"note": f"n{i}" + "x" * 3000}, T0 + i)
    notes = payloads(eng.sync(T0 + 200))[0]["report"]["notes"]
    assert len(notes) == 100 and notes[0]["text"].startswith("n5") and len(notes[-1]["text"]) == 2000
