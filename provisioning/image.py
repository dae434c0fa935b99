"""What a board carries: the application's files, by the layout firmware/README.md fixes. One definition for
the technician's flashing and for the simulators that install the same image (virtual boards, the host
MicroPython runner), so the product never reaches into simulation code for it."""

from __future__ import annotations

import importlib
from pathlib import Path

# Folders whose *.py files go on the board (and into the host interpreter) as gasguard.<name>.
DEVICE_PACKAGES = ("protocol", "firmware")

# Protocol facts only the gateway side uses (the MQTT topic tree, the Semtech packet-forwarder format): defined in protocol/ with the rest, kept
# off the node's flash.
HOST_ONLY = ("protocol/topics.py", "protocol/semtech.py")

# /main.py on the board: boot.py has run; this hands over to the firmware's loop.
MAIN_STUB = "from gasguard.firmware import main\nmain.run()\n"


def device_files(packages=DEVICE_PACKAGES) -> list[tuple[Path, str]]:
    """(host path, path on the board) for every module a board carries."""
    # found through the import system, so an installed (non-editable) gasguard works as the checkout does
    import gasguard
    out = [(Path(gasguard.__file__), "/lib/gasguard/__init__.py")]
    for pkg in packages:
        for f in sorted(Path(importlib.import_module(f"gasguard.{pkg}").__file__).parent.glob("*.py")):
            if f"{pkg}/{f.name}" in HOST_ONLY:
                continue
            out.append((f, f"/lib/gasguard/{pkg}/{f.name}"))
    return out
