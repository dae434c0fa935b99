"""The technician CLI never hangs: a port where no MicroPython answers (silent, or an ESP32 printing its
boot ROM for ever) fails within 10 s saying what to check, under --json too; a cable pulled mid-flash is
named as such. Real ptys; the flash case on the virtual board running real MicroPython."""

import json
import os
import signal
import threading
import time

import pytest

from gasguard.provisioning import flashing, identity
from gasguard.provisioning.board import Board
from gasguard.provisioning.errors import ProvisioningError
from gasguard.registry import Registry
from gasguard.testing.links import PtyCable
from gasguard.tools.sim.vboard_client import VBoardProcess

from provisioning_helpers import cli, new_device

# An ESP32 whose flash holds no valid app: the ROM boot loop, as printed at 115200 baud (one round)
ESP32_ROM = (b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
             b"configsip: 0, SPIWP:0xee\r\nclk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00\r\n"
             b"mode:DIO, clock div:2\r\nload:0x3fff0030,len:4\r\nload:0x3fff0034,len:6708\r\ninvalid header: 0xffffffff\r\n")


class RomPrinter:
    """A pty whose far end prints the boot ROM loop without pause (and reads, and ignores, what it is sent)."""

    def __init__(self, link):
        self.cable = PtyCable(link)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.02):
            try:
                os.read(self.cable.master, 4096)
            except (BlockingIOError, OSError):
                pass
            try:
                self.cable.write(ESP32_ROM)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.cable.close()


@pytest.fixture
def silent(tmp_path):
    c = PtyCable(tmp_path / "ttySilent")
    yield str(c.link)
    c.close()


@pytest.fixture
def rom(tmp_path):
    r = RomPrinter(tmp_path / "ttyRom")
    yield str(r.cable.link)
    r.close()


SILENT, ROM = ("silent", "nothing answered"), ("rom", "prints the ESP32 boot ROM")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("port_kind, says, command", [      # the cases of issue 18: each one waits its 10 s
    (*SILENT, ("flash", "--json")), (*ROM, ("flash", "--json")), (*ROM, ("selftest", "--json"))])
def test_a_port_without_micropython_fails_within_10_s_saying_what_to_check(tmp_path, request, port_kind, says,
                                                                            command):
    port = request.getfixturevalue(port_kind)
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    t0 = time.monotonic()
    code, out, err = cli("device", command[0], f"{dev.dev_id:08x}", "--port", port, *command[1:], registry=reg)
    took = time.monotonic() - t0
    assert code == 1, out + err
    assert took < 10.0, f"took {took:.1f} s"                  # the whole command, not only the handshake
    doc = json.loads(out)                                      # --json: one object on stdout, nothing else
    assert doc["ok"] is False and says in doc["error"], doc
    if port_kind == "silent":
        assert "powered" in doc["error"] and "console port" in doc["error"]
    else:
        assert "flash MicroPython first" in doc["error"] and "rst:0x10" in doc["error"]


@pytest.mark.micropython
@pytest.mark.timeout(180)
def test_a_cable_pulled_mid_flash_is_named_as_such(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    with Registry(reg) as r:
        d = identity.get(r, dev.dev_id)
    with VBoardProcess(tmp_path / "flash") as vb:
        vb.wait_console("friendly")
        pulled = []

        def progress(done, total, target):
            if done > total // 4 and not pulled:                # a quarter written: the cable comes out
                pulled.append(target)
                os.killpg(vb.proc.pid, signal.SIGKILL)
        with Board(vb.pty) as b, pytest.raises(ProvisioningError) as e:
            flashing.flash(b, d, progress=progress)
    assert pulled
    assert "was pulled" in str(e.value) and "run the same command again" in str(e.value)
    assert "flash full" not in str(e.value)
