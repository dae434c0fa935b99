"""The hardware rig client (`SerialRig`, used with --rig-port) against the reference rig on a pty, driving a
real-time virtual board: the same requests a helper board answers on the bench."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gasguard.tools.sim.micropython import run_json
from gasguard.tools.sim.vboard_client import VBoardProcess, install, pressure_raw
from hil_rig import RigError, RigUnsupported, SerialRig
from rig_emulator import RigEmulator

STATION = {"dev_id": 0x00530002, "profile": "station", "board": "virtual"}


@pytest.fixture
def realtime_station(tmp_path):
    flash = install(tmp_path / "flash", STATION, os.urandom(16))
    with VBoardProcess(flash, virtual_clock=False) as vb:
        vb.wait_console("firmware")
        yield vb


def test_serial_rig_trips_a_real_time_board_through_the_rig_protocol(realtime_station):
    with RigEmulator(realtime_station) as emu:
        rig = SerialRig(emu.port, timeout=5, boot_s=1.0)
        assert rig.info["rig"] == "emulator"
        rig.set_inputs(pressure=pressure_raw(1000, 10000))   # 40 % of the 2.5 kPa set point: UPSO
        deadline = time.monotonic() + 10
        while rig.valve() != 1:
            assert time.monotonic() < deadline, "the valve did not close within 10 s"
            time.sleep(0.05)
        rig.power(False)
        assert rig.snapshot()["powered"] is False and rig.valve() == 1   # latching valve holds
        rig.power(True)
        assert rig.snapshot()["powered"] is True
        assert rig.link(drop=1)["pending_drop"] == 1
        with pytest.raises(RigUnsupported, match="cut_on_valve"):
            rig.cut_at_write(1)
        with pytest.raises(RigError, match="0..65535"):
            rig.set_inputs(gas=70000)
        rig.close()


RIG_SCRIPT = '''
import json
from rig import Rig

class Pin:
    def __init__(self, v=0):
        self.v = v
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v

class Dac:
    def __init__(self):
        self.code = None
    def write_u16(self, code):
        self.code = code

dacs = {"gas": Dac(), "pressure": Dac()}
valve, power = Pin(0), Pin(1)
rig = Rig(dacs, valve, power, cal={"pressure": (500000, 100)})
out = []
for line in [b'{"op": "info"}', b'{"op": "set", "gas": 7944, "pressure": 20000}', b'{"op": "set", "inlet": 1}',
             b'{"op": "set", "gas": 70000}', b'{"op": "get"}', b'{"op": "cut_on_valve", "n": 2}',
             b'{"op": "uart", "drop": 1}', b'not json', b'{"op": "power", "on": false}', b'{"op": "get"}',
             b'x' * 600]:
    out.append(rig.handle(line))
    if line.startswith(b'{"op": "cut_on_valve"'):
        valve.v = 1; rig.on_valve_edge(valve)
        out.append({"after_one_edge": power.value()})
        rig.on_valve_edge(valve)
        out.append({"after_two_edges": power.value()})
        power.v = 1
out.append({"codes": [dacs["gas"].code, dacs["pressure"].code], "errors": rig.errors})
print("@@RESULT@@ " + json.dumps(out))
'''


def _rig_files():
    return [(Path(__file__).resolve().parent / "rig_firmware" / "rig.py", "/lib/rig.py")]


def test_rig_firmware_answers_the_protocol_the_same_in_micropython_and_cpython(tmp_path):
    """The reference rig firmware's handler (hil_tests/rig_firmware/rig.py) in the real MicroPython
    interpreter, with dummy pins and DACs at the hardware edge; CPython must give the same replies."""
    mp = run_json(RIG_SCRIPT, files=_rig_files())
    (tmp_path / "rig.py").write_bytes(_rig_files()[0][0].read_bytes())
    cp = subprocess.run([sys.executable, "-c", RIG_SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert json.loads(cp.stdout.split("@@RESULT@@ ", 1)[1]) == mp
    info, ok_set, no_inlet, too_big, got, armed, after1, after2, uart, bad, off, got_off, long_line, end = mp
    assert info["ok"] and "cut_on_valve" in info["features"] and info["inputs"] == ["gas", "pressure"]
    assert ok_set == {"ok": True} and "no DAC wired" in no_inlet["error"] and "0..65535" in too_big["error"]
    assert got == {"ok": True, "valve": 0, "powered": True}
    assert armed["ok"] and after1 == {"after_one_edge": 1} and after2 == {"after_two_edges": 0}
    assert uart["unsupported"] and "JSON object" in bad["error"]
    assert got_off["powered"] is False and "longer than 512" in long_line["error"]
    assert end == {"codes": [7944, 10100], "errors": 2}   # pressure through its calibration: 20000/2 + 100
