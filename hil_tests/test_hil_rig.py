"""The hardware rig client (`SerialRig`, used with --rig-port) against the reference rig on a pty, driving a
real-time virtual board: the same requests a helper board answers on the bench."""

import os
import time

import pytest

from gasguard.tools.vboard_client import VBoardProcess, install, pressure_raw
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
