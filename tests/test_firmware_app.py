"""The node application on CPython with hardware-edge fakes (ADC counts, an output pin, a byte-pipe UART).

The same behaviour is checked end to end over the virtual board's pty in tests/test_vboard_*.py.
"""

import json

import pytest

from gasguard.firmware import app as app_mod
from gasguard.firmware import link, store
from gasguard.protocol import const, counter, frame, framing

KEY = bytes(range(16))
DEV = 0x1234
GAS_ZERO, GAS_SPAN = 7944, 23831  # sensing defaults: 0 and 50 % LEL


def raw_for_gas(tenths):
    return GAS_ZERO + (GAS_SPAN - GAS_ZERO) * tenths // 500


class ADC:
    def __init__(self, v):
        self.v = v
        self.n = 0

    def read_u16(self):
        self.n += 1
        return self.v + (self.n & 1)  # a live ADC always has an LSB of noise


class Pin:
    def __init__(self):
        self.v = 0

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class UART:
    def __init__(self):
        self.tx = bytearray()
        self.rx = bytearray()

    def write(self, b):
        self.tx += b

    def any(self):
        return len(self.rx)

    def read(self, n):
        d = bytes(self.rx[:n])
        del self.rx[:n]
        return d


class WDT:
    def __init__(self):
        self.fed = 0

    def feed(self):
        self.fed += 1


class Node:
    def __init__(self, root, profile="household", params=None):
        self.root = root
        self.cfg = {"dev_id": DEV, "profile": profile, "board": "virtual", "params": params or {}}
        self.gas = ADC(raw_for_gas(0))
        self.p = ADC(6619 + (59578 - 6619) * 2000 // 10000)  # 2 kPa on a 10 kPa ratiometric transducer
        self.pin = Pin()
        self.uart = UART()
        self.wdt = WDT()
        self.down = 0
        self.boot()

    def boot(self):
        self.uart = UART()
        st = store.StateStore(str(self.root))
        st.load()
        hw = app_mod.Hardware(self.gas, self.p, None, None, app_mod.Valve(self.pin), self.uart, self.wdt)
        self.link = link.Link(self.uart, DEV, KEY, st, lambda m: None)
        self.app = app_mod.App(self.cfg, KEY, hw, st, self.link, log=lambda m: None, now=0)
        self.t = 0

    def run(self, ms, step=100):
        end = self.t + ms
        while self.t < end:
            self.app.tick(self.t)
            self.t += step

    def frames(self):
        d = framing.Deframer()
        out = [p for k, p in d.feed(bytes(self.uart.tx)) if k == framing.FRAME]
        self.uart.tx.clear()
        return [frame.decode(p) | {"raw": p} for p in out]

    def send(self, f, key=KEY, fcnt=None):
        self.down = fcnt if fcnt is not None else self.down + 1
        raw = frame.seal(dict(f, dev=DEV, fcnt=self.down), key, const.DOWN)
        self.uart.rx += framing.wrap(raw)
        return raw


def acks(frames):
    return [(f["ref_type"], f["ref"], f["result"]) for f in frames if f["type"] == "ack"]


def test_gas_alarm_closes_latches_persists_and_reset_rules(tmp_path):
    n = Node(tmp_path)
    n.run(1000)
    assert n.pin.v == 0
    n.gas.v = raw_for_gas(300)
    n.run(2000)
    assert n.pin.v == 0  # debounce (2 s) not yet met
    n.run(1000)
    assert n.pin.v == 1
    assert json.loads((tmp_path / "gg_state.json").read_text())["latched"] is True
    fr = n.frames()
    assert any(f["type"] == "alarm" and f["code"] == const.AL_GAS_L2 for f in fr)
    # refused while gas is high
    n.send({"type": "command", "cmd": const.CMD_RESET, "cid": 1, "args": b""})
    n.run(200)
    assert (const.COMMAND, 1, const.R_REFUSED) in acks(n.frames())
    assert n.pin.v == 1
    # reboot: still shut
    n.boot()
    n.run(500)
    assert n.pin.v == 1
    n.gas.v = raw_for_gas(0)
    n.run(1000)
    # forged (wrong key) and replayed resets are refused
    n.send({"type": "command", "cmd": const.CMD_RESET, "cid": 2, "args": b""}, key=bytes(16))
    n.run(200)
    assert n.pin.v == 1 and n.link.refused.get("mic") == 1
    n.down = 0  # replay the first command's counter
    n.send({"type": "command", "cmd": const.CMD_RESET, "cid": 3, "args": b""}, fcnt=1)
    n.run(200)
    assert n.pin.v == 1 and n.link.refused.get("replay") == 1
    n.send({"type": "command", "cmd": const.CMD_RESET, "cid": 4, "args": b""}, fcnt=2)
    n.run(200)
    assert n.pin.v == 0
    assert (const.COMMAND, 4, const.R_OK) in acks(n.frames())


def test_alarm_retransmitted_until_acked_with_new_counters(tmp_path):
    n = Node(tmp_path)
    n.gas.v = raw_for_gas(300)
    n.run(30000)
    alarms = [f for f in n.frames() if f["type"] == "alarm" and f["code"] == const.AL_GAS_L2]
    assert len(alarms) >= 3  # 2 s, 4 s, 8 s, 16 s backoff
    assert len({a["fcnt16"] for a in alarms}) == len(alarms)
    assert len({a["aseq"] for a in alarms}) == 1
    n.send({"type": "ack", "ref_type": const.ALARM, "ref": alarms[0]["aseq"], "result": 0})
    n.run(200)
    n.frames()
    n.run(60000)
    assert not [f for f in n.frames() if f["type"] == "alarm" and f["code"] == const.AL_GAS_L2]


def test_counters_never_reused_across_reboots(tmp_path):
    n = Node(tmp_path, params={"report_s": 60})
    seen = []
    for _ in range(3):
        n.run(130000, step=1000)
        seen += [frame.verify(f["raw"], f, KEY, const.UP, 0, max_gap=1 << 31) for f in n.frames()]
        n.boot()
    assert len(seen) == len(set(seen)) and len(seen) > 6
    assert json.loads((tmp_path / "gg_state.json").read_text())["up_ceiling"] >= 3 * 256


def test_readings_dropped_counted_alarms_kept(tmp_path):
    n = Node(tmp_path)
    for i in range(10):
        n.link.reading(0, 0, 2000, 90, 0)
    assert n.link.dropped_readings == 10 - link.MAX_READINGS and len(n.link.readings) == link.MAX_READINGS
    for code in range(1, 9):
        n.link.alarm(0, code, False, 0, 0, 0)
        n.link.alarm(0, code, False, 0, 1, 0)  # a newer copy supersedes the unacked older one
    assert len(n.link.alarms) == 8 and [o.fields["value"] for o in n.link.alarms] == [1] * 8
    before = len(n.link.events)
    for i in range(30):
        n.link.event(0, const.EV_FAULT, bytes([1 + i % 3, 1]))
    assert len(n.link.events) == before + 3 and n.link.dropped_events == 0
    assert sorted(o.fields["data"][0] for o in n.link.events[-3:]) == [1, 2, 3]
    for i in range(6):
        n.link.ack(0, const.COMMAND, i, 0)
    assert len(n.link.acks) == link.MAX_ACKS and n.link.dropped_acks == 2


def test_set_param_within_bounds_only_and_persisted(tmp_path):
    n = Node(tmp_path)
    n.send({"type": "command", "cmd": const.CMD_SET_PARAM, "cid": 5, "args": bytes([const.P_GAS_L2, 0, 200])})
    n.send({"type": "command", "cmd": const.CMD_SET_PARAM, "cid": 6, "args": bytes([const.P_GAS_L2, 1, 44])})
    n.run(300)
    a = acks(n.frames())
    assert (const.COMMAND, 5, const.R_OK) in a and (const.COMMAND, 6, const.R_OUT_OF_BOUNDS) in a
    assert n.app.safety.gas_l2 == 200
    n.boot()
    assert n.app.safety.gas_l2 == 200


def test_open_circuit_raises_fault_and_closes_household(tmp_path):
    n = Node(tmp_path)
    n.run(500)
    n.gas.v = 0
    n.run(1100)
    fr = n.frames()
    al = [f for f in fr if f["type"] == "alarm" and f["code"] == const.AL_SENSOR_FAULT]
    assert al and al[0]["value"] == (const.SENSOR_GAS << 8) | const.FAULT_OPEN
    assert frame.state_fields(al[0]["state"])["fault"]
    assert n.pin.v == 1
    assert n.wdt.fed > 0


def test_selftest_strokes_an_open_valve_and_unknown_commands_are_answered(tmp_path):
    n = Node(tmp_path)
    n.run(200)
    n.frames()
    n.send({"type": "command", "cmd": const.CMD_SELFTEST, "cid": 7, "args": bytes([7])})
    n.send({"type": "command", "cmd": 99, "cid": 8, "args": b""})
    n.send({"type": "command", "cmd": const.CMD_SET_PARAM, "cid": 9, "args": b"\x01"})
    n.run(300)
    fr = n.frames()
    a = acks(fr)
    assert (const.COMMAND, 7, const.R_OK) in a
    assert (const.COMMAND, 8, const.R_UNKNOWN) in a and (const.COMMAND, 9, const.R_BAD_ARGS) in a
    ev = [f for f in fr if f["type"] == "event" and f["code"] == const.EV_SELFTEST]
    assert ev and ev[0]["data"] == bytes([7, 7]) and n.pin.v == 0  # all passed; the valve is open again


def test_unsafe_provisioned_params_fall_back_to_defaults(tmp_path):
    n = Node(tmp_path, params={"gas_l2": 400})  # above the household bound (25 % LEL)
    assert n.app.safety.gas_l2 == 250
    assert any(f["type"] == "event" and f["code"] == const.EV_CONFIG for f in (n.run(200) or n.frames()))


class WatchedPin(Pin):
    """The valve line, noting what the flash held when it was first driven closed."""

    def __init__(self, state_path):
        super().__init__()
        self.state_path = state_path
        self.latched_on_flash_at_close = None

    def value(self, v=None):
        if v == 1 and self.v == 0 and self.latched_on_flash_at_close is None:
            self.latched_on_flash_at_close = json.loads(self.state_path.read_text())["latched"]
        return super().value(v)


def test_latch_reaches_the_flash_before_the_valve_moves(tmp_path):
    # a latching valve has no position feedback: a power cut between "valve shut" and "latch written" would
    # boot a node that believes its shut valve is open, so the write comes first
    n = Node(tmp_path)
    n.pin = WatchedPin(tmp_path / "gg_state.json")
    n.boot()
    n.run(1000)
    n.gas.v = raw_for_gas(300)
    n.run(3000)
    assert n.pin.v == 1
    assert n.pin.latched_on_flash_at_close is True


def test_a_failed_state_write_never_keeps_the_valve_open(tmp_path):
    n = Node(tmp_path)
    n.run(1000)
    n.frames()

    def broken(**changes):
        raise OSError(28, "no space left on device")
    n.app.store.save = broken
    n.gas.v = raw_for_gas(300)
    n.run(3000)
    assert n.pin.v == 1                                        # the valve acted
    faults = [f for f in n.frames() if f["type"] == "event" and f["code"] == const.EV_FAULT]
    assert faults and faults[0]["data"][:2] == bytes([const.SENSOR_STORAGE, const.FAULT_WRITE])


def _ack_all(n, frames):
    for f in frames:
        if f["type"] in ("alarm", "event"):
            ref = (const.ALARM, f["aseq"]) if f["type"] == "alarm" else (const.EVENT, f["eseq"])
            n.send({"type": "ack", "ref_type": ref[0], "ref": ref[1], "result": 0})


def test_alarm_identity_is_its_first_counter_and_never_repeats_across_a_power_cut(tmp_path):
    """Issue 12 item 1 (unit level; end to end in hil_tests/test_hil_gateway.py): aseq is the low byte of the
    first copy's counter, so an alarm after a power cut never carries an earlier alarm's identity. The old
    firmware resumed aseq from the value saved with the last counter block and repeated it."""
    n = Node(tmp_path)
    ids = []
    for cycle in range(3):
        n.run(1000)
        n.gas.v = raw_for_gas(300)
        n.run(4000)
        fr = n.frames()
        al = [f for f in fr if f["type"] == "alarm" and f["code"] == const.AL_GAS_L2 and not f["cleared"]]
        assert al, fr
        fc = frame.verify(al[0]["raw"], al[0], KEY, const.UP, 0, max_gap=1 << 31)
        assert al[0]["aseq"] == fc & 0xFF                     # SPEC 3.4: the low byte of the first counter
        ids.append(counter.identity(fc, al[0]["aseq"]))
        _ack_all(n, fr)
        n.gas.v = raw_for_gas(0)
        n.run(4000)
        _ack_all(n, n.frames())
        n.run(500)
        n.frames()
        n.boot()                                              # a power cut: RAM gone, flash kept
    assert len(set(ids)) == 3, ids
    assert "aseq" not in json.loads((tmp_path / "gg_state.json").read_text())   # no flash write of its own


def test_a_queued_alarm_whose_aseq_a_newer_one_takes_is_reidentified(tmp_path):
    """Acks name only aseq: two unacked alarms must never share it, or one ack would retire both."""
    n = Node(tmp_path)
    lk = n.link
    lk.alarm(0, const.AL_GAS_L1, False, 0, 100, 0)
    lk.pump(0)
    first = lk.alarms[0].fields["aseq"]
    lk.counter.next = lk.alarms[0].fields["fcnt"] + 256   # 256 counters later (readings meanwhile), unacked
    lk.counter.ceiling = lk.counter.next + 10
    lk.alarm(0, const.AL_TAMPER, False, 0, 0, 0)
    lk.pump(0)
    old, new = lk.alarms
    assert new.fields["aseq"] == first and old.fields["aseq"] is None and lk.reidentified == 1
    lk.pump(60_000)                              # the old one's next copy takes a fresh identity
    assert old.fields["aseq"] not in (None, first)
