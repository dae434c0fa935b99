"""Record a full technician's provisioning run against a virtual board, as provisioning/TRANSCRIPT.md.

    .venv/bin/python -m gasguard.tools.demo.provisioning_transcript provisioning/TRANSCRIPT.md

Runs the installed `gasguard` command in subprocesses exactly as typed at a bench (new -> flash --compile
-> monitor -> config -> calibrate -> selftest -> export -> import-registry -> rotate-key -> decommission).
The one thing a technician does by hand - opening the test-gas valve - is done on the virtual board's
control channel when calibrate asks for it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gasguard.tools.sim.vboard_client import VBoardProcess

GG = str(Path(sys.executable).parent / "gasguard")


def main(out: str) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gg-transcript-"))
    env = dict(os.environ, GASGUARD_REGISTRY=str(tmp / "registry.db"),
               GASGUARD_AUTHORITY=str(tmp / "authority.pem"), COLUMNS="100",
               # the authority key and bundles are encrypted; a person types these at the prompt
               GASGUARD_AUTHORITY_PASSPHRASE="transcript authority passphrase",
               GASGUARD_BUNDLE_PASSPHRASE="transcript bundle passphrase")
    lines = ["# A provisioning run against the virtual board", "",
             "Recorded by `python -m gasguard.tools.demo.provisioning_transcript` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. The registry and the authority key are",
             "set once in the shell (`GASGUARD_REGISTRY`, `GASGUARD_AUTHORITY`); `$PORT` is the board's port",
             "(a virtual board's pty here, `/dev/ttyUSB0` at a bench).", ""]

    def show(args, text, code, took):
        shown = " ".join(shlex.quote(a) for a in args).replace(vb.pty, "$PORT").replace(str(tmp) + "/", "")
        lines.extend(["```console", f"$ {shown}", text.rstrip().replace(vb.pty, "$PORT")
                      .replace(str(tmp) + "/", ""), f"# exit {code}, {took:.1f} s", "```", ""])

    def run(*args, stdin=None):
        t0 = time.monotonic()
        p = subprocess.run([GG, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           timeout=300, input=stdin)
        show(["gasguard", *args], p.stdout, p.returncode, time.monotonic() - t0)
        return p

    def say(text):
        lines.extend([text, ""])

    with VBoardProcess(tmp / "flash") as vb:
        vb.wait_console("friendly")
        say("A new board with MicroPython only is on the bench. Create the identity, print the label:")
        p = run("device", "new", "--profile", "household", "--board", "virtual", "--site", "Lane 3 No. 12, flat 302",
                "--address", "Lixia District, Jinan", "--lat", "36.6651", "--lon", "117.0769", "--households", "1")
        dev = [w for w in p.stdout.split() if len(w) == 8 and all(c in "0123456789ABCDEF" for c in w)][0].lower()
        say("Flash firmware (compiled with mpy-cross), configuration and key; every file is verified:")
        run("device", "flash", dev, "--port", vb.pty, "--compile")
        say("Watch what it sends, verified with the registry's key:")
        run("device", "monitor", "--port", vb.pty, "--duration", "8")
        say("A threshold outside the firmware's safe bounds is refused before the port is opened:")
        run("device", "config", dev, "gas_l2=300", "--port", vb.pty)
        say("A safe change, then what the board runs:")
        run("device", "config", dev, "gas_l1=120", "report_s=600", "--port", vb.pty)
        run("device", "config", dev, "--port", vb.pty)
        say("Calibration with test gas (the technician opens the zero gas, then the 50 % LEL bottle, then takes "
            "the cap off):")
        t0 = time.monotonic()
        proc = subprocess.Popen([GG, "device", "calibrate", dev, "--span-gas", "500", "--port", vb.pty],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1)
        assert proc.stdout is not None and proc.stdin is not None
        text = ""
        for gas in (8100, 24400, 7944):          # zero gas, span gas, then the cap off (clean air)
            line = ""
            while "Press Enter when" not in line or not line.endswith(": "):
                ch = proc.stdout.read(1)
                if not ch:
                    break
                line = line + ch if ch != "\n" else ""
                text += ch
            vb.ctl.set(gas=gas)
            proc.stdin.write("\n")
            proc.stdin.flush()
            text += "\n"
        rest, _ = proc.communicate(timeout=300)
        show(["gasguard", "device", "calibrate", dev, "--span-gas", "500", "--port", vb.pty], text + rest,
             proc.returncode, time.monotonic() - t0)
        run("device", "selftest", dev, "--port", vb.pty)
        say("Hand the registry to the substation gateway, signed by the provisioning authority:")
        run("device", "authority-init")
        run("device", "export", "--out", str(tmp / "district.bundle"))
        run("gateway", "import-registry", str(tmp / "district.bundle"), "--registry", str(tmp / "gateway.db"),
            "--trust", str(tmp / "authority.pub.pem"))
        say("Later: a routine key rotation, and at the end of the meter's life, decommissioning:")
        run("device", "rotate-key", dev, "--port", vb.pty)
        run("device", "decommission", dev, "--port", vb.pty, "--reason", "meter replaced", "--yes")
        run("device", "list", "--all")
    Path(out).write_text("\n".join(lines))
    print(json.dumps({"transcript": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "provisioning/TRANSCRIPT.md"))
