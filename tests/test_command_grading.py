"""District-wide grading in the command service (issue 15 item 1), on both stores, in virtual time: the
gateways' own broker payloads (built by gateway/payloads.py, as the daemon builds them) go into the
DistrictGrader; incidents, revisions, escalations and notifications come out of the store."""

import pytest

from gasguard.command import config as cconfig
from gasguard.gateway import payloads
from gasguard.registry import Device, Registry
from gasguard.protocol import frame
from gasguard.testing.grader import district_grader
from gasguard.testing.postgres import WireTrace
from grading_helpers import T0

D = "lixia"
UPSO, GAS_L2 = 4, 2
TRIP_STATE = frame.make_state(1, True, 0, False, False, True)
SHUT_STATE = frame.make_state(1, True, 2, False, False, False)


@pytest.fixture
def district(tmp_path, store_url):
    reg = tmp_path / "registry.db"
    with Registry(reg) as r:
        r.add_many([
            Device(dev_id=0xA001, key=bytes(16), profile="station", site_name="燕山调压站", households=8_000,
                   pressure_class="medium_a", lat=36.659, lon=117.062, state="commissioned"),
            Device(dev_id=0xA002, key=bytes(16), profile="station", site_name="解放东路调压站", households=4_000,
                   pressure_class="medium_a", lat=36.661, lon=117.070, state="commissioned"),
            *[Device(dev_id=0xB000 + i, key=bytes(16), profile="household", site_name=f"home {i}", households=1,
                     lat=36.6600 + i * 0.0003, lon=117.0600, state="commissioned") for i in range(4)],
        ])
    cfg = cconfig.load(None, district=D, store=store_url, registry=str(reg),
                       notify={"route": [{"levels": "any", "email": ["duty@lixia.example"]},
                                         {"levels": [1, 2, 3], "webhook": ["http://city.example/hook"]}]})
    return cfg


def _grader(cfg):
    return district_grader(cfg)


def _alarm(gw, dev, fcnt, t, code, state, value=900, aseq=1, age=3):
    f = {"dev": dev, "fcnt": fcnt, "code": code, "cleared": False, "aseq": aseq, "age": age, "value": value,
         "state": state}
    with_site = Device(dev_id=dev, key=bytes(16), profile="station")
    topic = f"gasguard/v1/{D}/{gw}/{dev:08x}/alarm"
    return topic, payloads.alarm(gw, D, payloads.msg_id(gw, dev, fcnt), f, t, {}, with_site)


def test_an_alarm_heard_by_two_gateways_is_one_incident_with_one_id(district):
    g, store, fence = _grader(district)
    out = g.handle([_alarm("gw1", 0xB000, 7, T0, GAS_L2, SHUT_STATE, value=260),
                    _alarm("gw2", 0xB000, 7, T0 + 0.4, GAS_L2, SHUT_STATE, value=260)], T0 + 1, fence)
    assert out.graded == 1 and out.duplicates == 1
    incs = store.list_incidents()
    assert [i["incident_id"] for i in incs] == [f"{D}-leak-0000b000-{int(T0 - 3)}"]
    # redelivered later (a restart before the broker saw our ack): still nothing new
    out = g.handle([_alarm("gw2", 0xB000, 7, T0 + 0.4, GAS_L2, SHUT_STATE, value=260)], T0 + 5, fence)
    assert out.graded == 0 and out.revisions == []
    assert [c["revision"] for c in store.changes(0)] == [1]
    store.close()


def test_households_add_up_across_gateways_each_station_once(district):
    g, store, fence = _grader(district)
    g.handle([_alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE)], T0, fence)
    first = store.list_incidents()[0]
    assert first["households"] == 8_000 and first["level"] == 4
    # the same station's trip reported again by the other gateway with a new counter (a retransmission),
    # then a second station on another gateway: 8,000 + 4,000, level III (plan 1.6.2.3(2)), routed to the city
    g.handle([_alarm("gw2", 0xA001, 2, T0 + 2, UPSO, TRIP_STATE, aseq=1)], T0 + 2, fence)
    assert store.list_incidents()[0]["households"] == 8_000
    g.handle([_alarm("gw2", 0xA002, 1, T0 + 30, UPSO, TRIP_STATE)], T0 + 30, fence)
    incs = store.list_incidents()
    assert len(incs) == 1
    inc = incs[0]
    assert inc["households"] == 12_000 and inc["level"] == 3 and inc["projected"] is True
    assert inc["routes"] == ["district", "city"]
    assert sorted(inc["report"]["source"]["devices"]) == ["0000a001", "0000a002"]
    store.close()


def test_a_leak_cluster_spans_gateways(district):
    g, store, fence = _grader(district)
    for i, gw in enumerate(("gw1", "gw2", "gw3")):
        g.handle([_alarm(gw, 0xB000 + i, 1, T0 + 60 * i, GAS_L2, SHUT_STATE, value=260)], T0 + 60 * i, fence)
    incs = store.list_incidents()
    assert len(incs) == 1                                   # three homes within 200 m and 30 min: one leak
    assert incs[0]["level"] == 3                            # leak_cluster_count alarms raise IV to III
    store.close()


def test_deadlines_escalate_from_detection_and_survive_a_new_leader(district):
    g, store, fence = _grader(district)
    g.handle([_alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE, age=60)], T0, fence)
    iid = store.list_incidents()[0]["incident_id"]
    detected = T0 - 60
    assert g.tick(detected + 1199, fence).revisions == []
    store.close()
    # the leader dies; a new one loads the store: the deadline is the original detection's + 20 min
    g, store, fence = _grader(district)
    out = g.tick(detected + 1200, fence)
    assert [(r[0], r[2]) for r in out.revisions] == [(iid, "escalation")]
    got = store.get_incident(iid)
    assert [(e["stage"], e["n"]) for e in got["escalations"]] == [("phone", 1)]
    queued = {(n["reason"], n["channel"], n["recipient"]) for n in got["notifications"]}
    assert ("new", "email", "duty@lixia.example") in queued
    assert ("phone", "email", "duty@lixia.example") in queued
    assert not any(c == "webhook" for _, c, _ in queued)    # level IV: the city's route is for I-III only
    # acknowledged: no more escalation at 45 minutes
    out = g.handle([(f"gasguard/v1/{D}/command/ack/{iid}", {"by": "王值班", "revision": 2})], detected + 1300, fence)
    assert out.acks == [1300]
    assert g.tick(detected + 2700, fence).revisions == []
    got = store.get_incident(iid)
    assert got["acks"][0]["who"] == "王值班" and got["acks"][0]["outcome"] == "accepted"
    assert [j["category"] for j in got["journal"]].count("escalation") == 1
    store.close()


def test_level_change_is_notified_and_operator_input_is_recorded(district):
    g, store, fence = _grader(district)
    g.handle([_alarm("gw1", 0xA001, 1, T0, UPSO, TRIP_STATE)], T0, fence)
    iid = store.list_incidents()[0]["incident_id"]
    g.handle([(f"gasguard/v1/{D}/command/input/{iid}", {"by": "李现场", "deaths": 3}),
              (f"gasguard/v1/{D}/command/input/{iid}", {"by": "李现场", "deaths": "many"}),
              (f"gasguard/v1/{D}/command/input/no-such", {"by": "李现场", "deaths": 1})], T0 + 100, fence)
    got = store.get_incident(iid)
    assert got["incident"]["level"] == 3                    # 3 deaths: level III (plan 1.6.2)
    assert [i["outcome"].split(":")[0] for i in got["inputs"]] == ["accepted", "refused"]
    reasons = {(n["reason"], n["channel"]) for n in got["notifications"]}
    assert ("level", "webhook") in reasons and ("level", "email") in reasons
    store.close()


def test_a_silent_gateway_is_shown_to_the_command(district):
    g, store, fence = _grader(district)
    out = g.handle([(f"gasguard/v1/{D}/gw1/status", {"gateway": "gw1", "district": D, "online": True, "t": T0,
                                                     "version": "1"})], T0, fence)
    assert out.direct and out.direct[0][0] == f"gasguard/v1/{D}/command/gateway/gw1"
    g.handle([(f"gasguard/v1/{D}/gw1/stats", {"gateway": "gw1"})], T0 + 60, fence)
    assert g.tick(T0 + 60 + 179, fence).direct == []
    out = g.tick(T0 + 60 + 181, fence)
    assert [p["silent"] for _, p, _ in out.direct] == [True]
    assert store.gateways()[0]["silent"] is True
    assert any("SILENT" in j["text"] for j in store.journal())
    store.close()


def _batch(gw, rows, state=0):
    """A gateway's reading batch as the daemon publishes it: rows of (dev, fcnt, t, outlet Pa, inlet Pa)."""
    import json
    entries = [payloads.reading_json({"dev": dev, "fcnt": fcnt, "gas": 0, "pressure": p, "battery": None,
                                      "state": state, "inlet": inlet}, t, {})
               for dev, fcnt, t, p, inlet in rows]
    return f"gasguard/v1/{D}/{gw}/reading", json.loads(payloads.batch(gw, D, rows[-1][2], entries))


def _valve(gw, dev, fcnt, t, valve, cause):
    f = {"dev": dev, "fcnt": fcnt, "code": 5, "eseq": fcnt, "data": bytes([valve, cause])}
    return f"gasguard/v1/{D}/{gw}/{dev:08x}/event", payloads.event(gw, D, payloads.msg_id(gw, dev, fcnt), f, t, {})


def test_station_readings_and_valve_moves_are_kept_once_for_a_bounded_time(district):
    """The station page's data (issue 16 item 5): stations' outlet and inlet pressure and every valve move,
    stored once whichever gateways heard them; kept for readings_keep_s and at most readings_max_per_device
    rows a device (its oldest dropped, counted)."""
    g, store, fence = _grader(district)
    rows = [(0xA001, n, T0 + 60 * n, 3000 + n, 300_000 - n) for n in range(4)] + [(0xB000, 1, T0, 2000, None)]
    out = g.handle([_batch("gw1", rows), _batch("gw2", rows[:2]),             # gw2 heard two of them too
                    _valve("gw1", 0xA001, 9, T0 + 90, 1, 2)], T0 + 200, fence)
    assert out.kept == 5                                                       # 4 readings + 1 valve move
    assert [(r["t"], r["pressure_pa"], r["inlet_pa"], r["gateway"]) for r in store.readings(0xA001, 0)] == [
        (T0 + 60 * n, 3000 + n, 300_000 - n, "gw1") for n in range(4)]
    assert store.readings(0xA001, T0 + 120) == store.readings(0xA001, 0)[2:]
    assert store.readings(0xB000, 0) == []                                     # households are not plotted
    assert store.valve_events(0xA001, 0) == [{"t": T0 + 90, "valve": "closed", "cause": "opso", "gateway": "gw1"}]
    with store.write(fence) as tx:
        gone = tx.prune_readings(T0 + 30, max_per_device=2)                    # 1 too old, then 1 over the bound
    assert gone == {"expired": 1, "over_bound": 1}
    assert [r["t"] for r in store.readings(0xA001, 0)] == [T0 + 120, T0 + 180]
    assert len(store.valve_events(0xA001, 0)) == 1
    with store.write(fence) as tx:
        assert tx.prune_readings(T0 + 100, max_per_device=2) == {"expired": 1, "over_bound": 0}   # the valve move
    store.close()


@pytest.fixture
def far_homes(tmp_path, postgres_url):
    """Two stations and 60 households ~330 m apart: each household's alarm is a leak incident of its own."""
    reg = tmp_path / "registry.db"
    homes = [Device(dev_id=0xC000 + i, key=bytes(16), profile="household", households=1, site_name=f"home {i}",
                    lat=37.0 + 0.003 * (i // 10), lon=117.0 + 0.004 * (i % 10), state="commissioned")
             for i in range(60)]
    with Registry(reg) as r:
        r.add_many([Device(dev_id=0xA001 + i, key=bytes(16), profile="station", site_name=f"station {i}",
                           households=8_000, pressure_class="medium_a", lat=36.659, lon=117.062 + 0.01 * i,
                           state="commissioned") for i in range(2)] + homes)
    return cconfig.load(None, district=D, store=postgres_url, registry=str(reg),
                        notify={"route": [{"levels": "any", "email": ["duty@lixia.example"]}]}), \
        [h.dev_id for h in homes]


def test_a_grading_pass_waits_for_postgresql_as_often_for_one_frame_as_for_twenty(far_homes, tmp_path):
    """On PostgreSQL a grading pass is one pipelined transaction: the frames' identities are looked up in one
    query, the revisions stored at once, their notifications queued at once, and the lease check rides with
    the COMMIT. So a batch of 20 alarms (20 new incidents, each notified) waits as many times as a batch of
    one, and so does a batch of 20 station readings (each statement its own round trip, this was 12 waits for
    one alarm and 150 for 20)."""
    cfg, homes = far_homes
    g, store, fence = _grader(cfg)
    g.handle([_alarm("gw1", homes[0], 1, T0, GAS_L2, SHUT_STATE, value=260)], T0, fence)     # gateways seen
    waits = {}
    for n, first in ((1, 1), (20, 2), (1, 30)):
        with WireTrace(store.db.conn, tmp_path / f"alarms-{first}.trace") as w:
            out = g.handle([_alarm(f"gw{k % 2 + 1}", h, 1, T0 + first, GAS_L2, SHUT_STATE, value=260)
                            for k, h in enumerate(homes[first:first + n])], T0 + first, fence)
        assert len(out.revisions) == n and out.graded == n
        assert w.statements >= 3 * n                 # incident, revision, notification (frames, journal: held)
        waits[first] = w.round_trips
    assert waits[2] == waits[1] == waits[30] <= 4
    for n, fcnt in ((1, 1), (20, 2)):
        rows = [(0xA001 + k % 2, fcnt + k, T0 + 60 + k, 3000, 300_000) for k in range(n)]
        with WireTrace(store.db.conn, tmp_path / f"readings-{n}.trace") as w:
            out = g.handle([_batch("gw1", rows)], T0 + 100, fence)
        assert out.kept == n and out.graded == n
        waits[f"readings {n}"] = w.round_trips
    assert waits["readings 20"] == waits["readings 1"] <= 2
    assert [len(store.get_incident(i["incident_id"])["revisions"]) for i in store.list_incidents()] == [1] * 23
    assert len(store.notifications()) == 23
    assert [j["category"] for j in store.journal(limit=10_000)].count("notification") == 23
    store.close()


def test_two_gateways_publishing_as_one_id_are_journaled_once(district):
    """gateway/identity.py: each gateway process puts its own instance in its births; restarts bring new ones, and
    only a second process brings an earlier one back (a copied gateway.toml: the two take the broker connection
    from each other)."""
    g, store, fence = _grader(district)

    def birth(inst, host, t):
        doc = payloads.status("gw1", D, t, True, "1", inst, host)
        return g.handle([(f"gasguard/v1/{D}/gw1/status", doc)], t, fence)

    def will(inst, t):
        g.handle([(f"gasguard/v1/{D}/gw1/status", payloads.status("gw1", D, 0, False, "1", inst, "x"))], t, fence)

    for k, inst in enumerate(("a1", "a2", "a3")):         # three restarts of one gateway: Will, then a new birth
        birth(inst, "sub-17", T0 + 10 * k)
        will(inst, T0 + 10 * k + 5)
    assert not [j for j in store.journal() if j["data"].get("shared_id")]
    for k in range(4):                                  # then a copy started on sub-18 (b1) beside a4: the two flap
        birth("b1", "sub-18", T0 + 100 + 2 * k)
        birth("a4", "sub-17", T0 + 101 + 2 * k)
    shared = [j for j in store.journal() if j["data"].get("shared_id")]
    assert len(shared) == 1, shared
    assert shared[0]["data"]["instances"] == {"b1": "sub-18", "a4": "sub-17"}
    assert "TWO GATEWAYS" in shared[0]["text"] and "sub-18" in shared[0]["text"]
    # the consoles are told too, while the pair keeps at it, and once more when it has stopped
    from gasguard.command.console import IncidentBoard
    board = IncidentBoard()
    out = birth("b1", "sub-18", T0 + 200)
    birth("b1", "sub-18", T0 + 201)                     # (b1 again: not a return, the display's clock stays)
    msg = [p for t, p, _ in out.direct if t.endswith("/gateway/gw1")][-1]
    assert msg["shared_by"] == ["sub-17", "sub-18"]
    board.apply_gateway(msg)
    assert "gw1 SHARED BY 2 GATEWAYS (sub-17, sub-18)" in board.gateway_line()
    assert all(p.get("shared_by") for _, p, _ in g.tick(T0 + 200 + 599, fence).direct)   # (silent by then)
    gone = [p for t, p, _ in g.tick(T0 + 200 + 601, fence).direct if t.endswith("/gateway/gw1")]
    assert len(gone) == 1 and "shared_by" not in gone[0]
    board.apply_gateway(gone[0])
    later = birth("a4", "sub-17", T0 + 900)              # the copy is gone: the remaining gateway's next birth
    assert all("shared_by" not in p for _, p, _ in later.direct)
    assert "SHARED" not in board.gateway_line() and "SILENT gw1" in board.gateway_line()
    store.close()
