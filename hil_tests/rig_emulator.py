"""A reference implementation of the hardware rig protocol (README.md "Rig protocol") on a pty, backed by
a virtual board's control channel. It lets `SerialRig` be tested end to end without a helper board, and
shows a rig builder what each request must do.

    with RigEmulator(vboard_process) as emu:
        rig = SerialRig(emu.port)          # exactly as with --rig-port=/dev/ttyACM0
"""

from __future__ import annotations

import json
import os
import select
import threading
import tty

MAX_LINE = 512          # a request longer than this is refused (bounded buffer, as on the helper board)
ADC = ("gas", "pressure", "inlet", "battery")


class RigEmulator:
    def __init__(self, vb):
        self.vb = vb
        self.errors = 0          # malformed requests answered with ok: false
        self.stop = threading.Event()

    def __enter__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.port = os.ttyname(self.slave)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        for fd in (self.master, self.slave):
            os.close(fd)

    def _serve(self):
        buf = bytearray()
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.1)
            if not r:
                continue
            buf += os.read(self.master, 1024)
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf = bytearray(rest)
                os.write(self.master, (json.dumps(self.answer(line)) + "\n").encode())
            if len(buf) > MAX_LINE:
                buf.clear()
                self.errors += 1
                os.write(self.master, b'{"ok": false, "error": "request longer than 512 bytes"}\n')

    def answer(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            op = req.pop("op")
        except (ValueError, KeyError, AttributeError):
            self.errors += 1
            return {"ok": False, "error": "not a JSON object with an 'op'"}
        ctl = self.vb.ctl
        try:
            if op == "info":
                return {"ok": True, "rig": "emulator", "features": ["inputs", "valve", "power", "link"]}
            if op == "get":
                st = ctl.get()
                return {"ok": True, "valve": st["valve"], "powered": st["mode"] != "off"}
            if op == "set":
                bad = [k for k in req if k not in ADC or not 0 <= int(req[k]) <= 65535]
                if bad:
                    return {"ok": False, "error": f"set: {bad}: use gas, pressure, inlet, battery in 0..65535"}
                ctl.set(**{k: int(v) for k, v in req.items()})
                return {"ok": True}
            if op == "power":
                ctl.power(bool(req.get("on")))
                return {"ok": True}
            if op == "uart":
                return {"ok": True, "uart": ctl.uart(**req)["uart"]}
            return {"ok": False, "unsupported": True, "error": f"{op}: this rig does not have that feature"}
        except Exception as e:  # the board's error goes back to the client, the rig keeps serving
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
