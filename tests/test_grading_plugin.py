"""The plugin as the daemon builds it: options + context, a real registry file, JSON-able outputs."""

import json
import os
import threading
from types import SimpleNamespace

import pytest

from gasguard.grading.engine import GradingConfigError
from gasguard.gateway.grading_plugin import GradingPlugin, make_plugin
from gasguard.registry import Device, Registry
from grading_helpers import T0, alarm


def _registry(path):
    with Registry(path) as r:
        r.add_many([
            Device(dev_id=0xA001, key=os.urandom(16), profile="station", site_name="燕山调压站", households=8_000,
                   pressure_class="subhigh_a", lat=36.66, lon=117.06, state="commissioned"),
            Device(dev_id=0xA002, key=os.urandom(16), profile="station", site_name="下游站", households=3_000,
                   upstream=0xA001, state="commissioned"),
            Device(dev_id=0xA003, key=os.urandom(16), profile="station", site_name="再下游站", households=1_000,
                   upstream=0xA002, state="commissioned", key_area=True),
            Device(dev_id=0xA004, key=os.urandom(16), profile="station", site_name="已拆除", households=5_000,
                   upstream=0xA001, state="decommissioned"),
        ])


def test_make_plugin_uses_context_and_registry_downstream(tmp_path):
    reg = tmp_path / "registry.db"
    _registry(reg)
    ctx = SimpleNamespace(gateway_id="sub-017", district="north", root="gasguard/v1/north/sub-017",
                          registry_path=str(reg), clock=lambda: T0)
    plugin = make_plugin({"reporter_phone": "0531-1"}, ctx)
    assert plugin.subscriptions == ["gasguard/v1/north/command/ack/+", "gasguard/v1/north/command/input/+",
                                    "gasguard/v1/north/command/sync"]
    with Registry(reg, readonly=True) as r:
        st = r.get(0xA001).public()
    result = {}
    # the daemon calls plugins on its event-loop thread, not the thread that built them
    th = threading.Thread(target=lambda: result.update(out=plugin.observe(alarm(st, T0, 4, value=900, ptrip=True))))
    th.start()
    th.join(10)
    out = result["out"]
    assert [(t.split("/")[2], lane) for t, _, lane in out] == [("north", "alarm"), ("city", "alarm")]
    msg = json.loads(json.dumps(out[0][1], ensure_ascii=False))          # what goes on the wire
    assert msg["households"] == 12_000                                    # 8,000 + 3,000 + 1,000, not decommissioned
    assert msg["warning"] == "orange"                                     # yellow + key area downstream
    assert msg["report"]["reporter"] == {"gateway": "sub-017", "unit": None, "name": None, "phone": "0531-1"}
    assert msg["incident_id"].startswith("north-supply-0000a001-")
    plugin.close()


def test_plugin_on_message_and_bad_payload():
    p = GradingPlugin({})
    assert p.on_message("gasguard/v1/lixia/command/ack/x", ["not", "a", "dict"], T0) == []


def test_plugin_refuses_bad_config():
    with pytest.raises(GradingConfigError, match="did you mean"):
        GradingPlugin({"phone_deadline_min": 20})


def test_open_incidents_survive_a_restart_and_keep_escalating(tmp_path):
    from grading_helpers import device
    state = tmp_path / "grading.json"
    p1 = GradingPlugin({}, state_path=state)
    out = p1.observe(alarm(device(0xA001, households=12_000), T0, 4, value=900, ptrip=True))
    iid, rev = out[0][1]["incident_id"], out[0][1]["revision"]
    assert state.exists()
    p2 = GradingPlugin({}, state_path=state)                 # the gateway restarted
    esc = p2.tick(T0 + 1200)
    assert esc and esc[0][1]["incident_id"] == iid and esc[0][1]["kind"] == "escalation"
    assert esc[0][1]["revision"] == rev + 1 and esc[0][1]["households"] == 12_000
    p2.on_message(f"gasguard/v1/lixia/command/ack/{iid}", {"by": "duty"}, T0 + 1300)
    p3 = GradingPlugin({}, state_path=state)
    assert p3.tick(T0 + 2700) == []                          # the acknowledgement survived too
    out = p3.observe(alarm(device(0xA001, households=12_000), T0 + 3000, 4, cleared=True, aseq=2))
    assert out == []                                         # trip cleared: the reading tells when gas flows


def test_corrupt_state_file_is_set_aside(tmp_path):
    state = tmp_path / "grading.json"
    state.write_text("{not json")
    p = GradingPlugin({}, state_path=state)
    assert p.engine.incidents == {} and (tmp_path / "grading.corrupt").exists()
