"""The rig: what a HIL test uses to stimulate a node and observe it beyond its serial port.

Two implementations with one interface:

- `VBoardRig`: the virtual board's control channel (Unix socket, JSON lines; firmware/README.md). Time is
  virtual: `elapse(ms)` runs the board `ms` forward at once, so debounce and backoff tests are instant.
- `SerialRig`: a helper board on its own serial port (`--rig-port`) speaking the same JSON-lines requests
  (protocol and wiring in hil_tests/README.md): a DAC on the node's analog inputs, a GPIO sensing the valve
  driver, a relay on the node's supply, and optionally a fault-injecting passthrough on the link UART.
  Time is real: `elapse(ms)` sleeps.

Both speak raw ADC counts (what the node's ADC should read); the node converts them, so a rig never needs
the node's calibration. Ops a rig does not have raise `RigUnsupported`, which tests turn into a skip that
says which rig feature is missing.
"""

from __future__ import annotations

import json
import time

import serial

from gasguard.tools.sim.vboard_client import Control


class RigError(RuntimeError):
    pass


class RigUnsupported(RigError):
    """This rig cannot do what the test needs (e.g. a hardware rig without the link passthrough)."""


class VBoardRig:
    name = "virtual board control channel"
    virtual_time = True

    def __init__(self, vb):
        self.vb = vb
        self.ctl: Control = vb.ctl

    def snapshot(self) -> dict:
        return self.ctl.get()

    def set_inputs(self, **raw) -> None:
        """gas, pressure, inlet, battery: raw ADC counts 0..65535 (0 = open circuit)."""
        self.ctl.set(**raw)

    def valve(self) -> int:
        return self.ctl.valve()

    def elapse(self, ms: int) -> dict:
        return self.ctl.advance(ms)

    def power(self, on: bool, wait: bool = True) -> None:
        """wait: until the firmware runs (not when the test expects the boot itself to fail)."""
        self.ctl.power(on)
        if on and wait:
            self.vb.wait_console("firmware")

    def power_cycle(self) -> None:
        self.ctl.power_cycle()
        self.vb.wait_console("firmware")

    def link(self, **faults) -> dict:
        """drop/dup/flip (next N frames from the node), drop_rx (next N frames to the node), stall (bool),
        ber (bit error rate, both ways)."""
        return self.ctl.uart(**faults)["uart"]

    def cut_at_write(self, n: int = 1) -> None:
        """Cut the node's power in the middle of its n-th flash write from now."""
        self.ctl.request("cut_at_write", n=n)

    def tx_bytes(self) -> int | None:
        """Bytes the node has put on the port so far (lets a reader know it has seen everything)."""
        return self.ctl.request("info")["uart"]["tx_bytes"]

    def rx_settled(self, nbytes: int, timeout: float = 5.0) -> None:
        """Wait until bytes written to the port have reached the node's UART (the pty and the control
        channel are separate paths: without this, virtual time could run ahead of a command)."""
        deadline = time.monotonic() + timeout
        want = self._rx_base + nbytes
        while True:
            got = self.ctl.request("info")["uart"]
            if got["rx_to_board"] + got["rx_stalled"] >= want:
                self._rx_base = want
                return
            if time.monotonic() > deadline:
                raise RigError(f"the board's UART got {got['rx_to_board']} of {want} bytes in {timeout} s")
            time.sleep(0.005)

    def settle(self, timeout: float = 30.0) -> int:
        """Wait until the board has spoken (a booted firmware always sends its BOOT event first) and has
        been silent for 0.3 s; returns its TX byte count then. Nothing more comes until time is advanced."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while True:
            n = self.tx_bytes()
            if n != last:
                last, since = n, time.monotonic()
            elif n > 0 and time.monotonic() - since >= 0.3:
                return n
            if time.monotonic() > deadline:
                raise RigError(f"the board did not finish booting in {timeout} s (TX bytes: {n})")
            time.sleep(0.05)

    def start(self) -> None:
        u = self.ctl.request("info")["uart"]
        self._rx_base = u["rx_to_board"] + u["rx_stalled"]

    def close(self) -> None:
        pass


class SerialRig:
    """The hardware rig over its own serial port: one JSON request per line, one JSON reply per line."""

    name = "hardware rig"
    virtual_time = False

    def __init__(self, port: str, baud: int = 115200, timeout: float = 5.0, boot_s: float = 3.0, link_baud=115200):
        self.timeout = timeout
        self.boot_s = boot_s
        self.link_baud = link_baud
        try:
            self.ser = serial.serial_for_url(port, baud, timeout=timeout)
        except serial.SerialException as e:
            raise RigError(f"cannot open the rig on {port}: {e} (check the cable and that you are in 'dialout')") \
                from None
        self.info = self.request("info")

    def request(self, op: str, **kw) -> dict:
        self.ser.write((json.dumps(dict(kw, op=op)) + "\n").encode())
        self.ser.flush()
        line = self.ser.readline()
        if not line.endswith(b"\n"):
            raise RigError(f"the rig did not answer {op!r} within {self.timeout} s (is the rig firmware running?)")
        try:
            rep = json.loads(line)
        except ValueError:
            raise RigError(f"the rig answered {op!r} with a line that is not JSON: {line[:80]!r}") from None
        if not rep.get("ok", False):
            err = rep.get("error", "failed")
            if rep.get("unsupported"):
                raise RigUnsupported(f"the rig cannot {op}: {err}")
            raise RigError(f"rig {op}: {err}")
        return rep

    def snapshot(self) -> dict:
        return self.request("get")

    def set_inputs(self, **raw) -> None:
        self.request("set", **raw)

    def valve(self) -> int:
        return int(self.request("get")["valve"])

    def elapse(self, ms: int) -> dict:
        time.sleep(ms / 1000)
        return {}

    def power(self, on: bool, wait: bool = True) -> None:
        self.request("power", on=bool(on))
        if on and wait:
            time.sleep(self.boot_s)  # MicroPython boot + the firmware's first tick

    def power_cycle(self) -> None:
        self.power(False)
        time.sleep(0.5)  # let the supply rails fall below brown-out
        self.power(True)

    def link(self, **faults) -> dict:
        return self.request("uart", **faults).get("uart", {})

    def cut_at_write(self, n: int = 1) -> None:
        # hardware: the rig cuts the supply when the valve line moves (the latch write follows the valve
        # within the same loop pass), after a delay the rig sweeps; see README "power cut mid-write"
        self.request("cut_on_valve", n=n)

    def tx_bytes(self) -> int | None:
        """With the link passthrough the rig counts the node's TX bytes; without it, None."""
        try:
            return self.request("uart").get("uart", {}).get("tx_bytes")
        except RigUnsupported:
            return None

    def settle(self) -> None:
        return None

    def rx_settled(self, nbytes: int, timeout: float = 5.0) -> None:
        time.sleep(nbytes * 10 / self.link_baud + 0.05)  # 10 bits a byte on the wire, plus a loop pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        self.ser.close()
