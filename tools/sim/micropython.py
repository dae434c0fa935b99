"""Run a MicroPython snippet in the real interpreter (the official WebAssembly port, under Node).

The project's MicroPython-side modules are importable exactly as on a board:
``gasguard.protocol`` and ``gasguard.firmware`` live under ``/lib/gasguard/`` in the interpreter's
filesystem. Each call is a fresh interpreter in its own Node process, so a crash cannot take the
caller down, and every call has a timeout.

    from gasguard.tools.sim.micropython import run
    out = run("from gasguard.protocol import frame\\nprint(frame.VERSION)")
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from gasguard.provisioning.image import DEVICE_PACKAGES, device_files  # noqa: F401 - the board's image, re-used

TOOLS = Path(__file__).resolve().parent
HOST_SCRIPT = TOOLS / "mpy_host.mjs"
PORT_PACKAGE = TOOLS / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"

RESULT_MARK = "@@RESULT@@"


class MicroPythonError(RuntimeError):
    """The snippet raised in MicroPython, or the interpreter could not run it."""

    def __init__(self, message: str, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


def available() -> str | None:
    """None when the interpreter can run here; otherwise what to do about it."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs, or run make setup)"
    if not (PORT_PACKAGE / "micropython.mjs").exists():
        return "the MicroPython WebAssembly port is not installed: run 'make setup' (npm ci in tools/sim/)"
    return None


def run(code: str, *, timeout: float = 120.0, heap: int = 1024 * 1024,
        files: list[tuple[Path, str]] | None = None) -> str:
    """Run `code` in MicroPython and return what it printed. Raises MicroPythonError on an exception."""
    why = available()
    if why:
        raise MicroPythonError(why)
    args = ["node", str(HOST_SCRIPT), "--heap", str(heap)]
    for host, target in (files if files is not None else device_files()):
        args += ["--file", f"{host}={target}"]
    try:
        p = subprocess.run(args, input=code, capture_output=True, text=True, timeout=timeout,
                           cwd=str(TOOLS), env=dict(os.environ))
    except subprocess.TimeoutExpired as e:
        raise MicroPythonError(f"MicroPython run timed out after {timeout:.0f} s",
                               (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""),
                               "") from None
    if p.returncode != 0:
        raise MicroPythonError(f"MicroPython failed (exit {p.returncode}):\n{p.stderr.strip()}", p.stdout, p.stderr)
    return p.stdout


def run_json(code: str, **kw):
    """Run `code`, which must print one line `@@RESULT@@ <json>`; return the decoded JSON."""
    out = run(code, **kw)
    for line in out.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise MicroPythonError("the snippet printed no result line", out, "")
