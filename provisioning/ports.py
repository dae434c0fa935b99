"""Which serial port a board is on, and why it cannot be opened (said in words a technician can act on).

`--port auto` takes the only USB-serial port present, asks when there are several, and explains the fix
when there is none, it is busy or it is not permitted.
"""

from __future__ import annotations

import errno
import grp
import os

import serial
from serial.tools import list_ports

from .errors import ProvisioningError


def candidates() -> list[str]:
    """USB-serial adapters and on-board USB CDC ports (the kinds a node is cabled with), sorted."""
    out = []
    for p in list_ports.comports():
        if p.vid is not None or p.device.startswith(("/dev/ttyUSB", "/dev/ttyACM")):
            out.append(p.device)
    return sorted(out)


def resolve(port: str, choose=None) -> str:
    """A concrete port path. `choose(list) -> path` is asked when several are present (None: refuse)."""
    if port != "auto":
        return port
    found = candidates()
    if not found:
        raise ProvisioningError("no serial port found: plug in the USB cable (a data cable, not a charge-only "
                                "one), check 'dmesg | tail' shows a ttyUSB/ttyACM device, or pass --port PATH")
    if len(found) == 1:
        return found[0]
    if choose is None:
        raise ProvisioningError(f"several serial ports: {', '.join(found)}; pass --port PATH to pick one")
    return choose(found)


def _in_dialout() -> bool:
    try:
        gid = grp.getgrnam("dialout").gr_gid
    except KeyError:
        return True
    return gid in os.getgroups()


def explain(port: str, exc: BaseException) -> ProvisioningError:
    """A ProvisioningError that says what to do about failing to open `port`."""
    err = getattr(exc, "errno", None)
    text = str(exc)
    if err == errno.ENOENT or "No such file" in text or "could not open port" in text and "2]" in text:
        return ProvisioningError(f"{port} is not there: check the cable and adapter (see 'dmesg | tail'), "
                                 "or use --port auto to pick the port that is present")
    if err in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        hint = (" you are in the group but this session is older: log out and in again" if _in_dialout() else
                f" run 'sudo usermod -aG dialout {os.environ.get('USER', '$USER')}', then log out and in again")
        return ProvisioningError(f"{port}: permission denied; serial ports belong to the 'dialout' group:{hint}")
    # flock() on a port another program holds exclusively fails with EWOULDBLOCK (== EAGAIN)
    if err in (errno.EBUSY, errno.EAGAIN) or "lock" in text.lower() or "busy" in text.lower():
        return ProvisioningError(f"{port} is busy: another program holds it (find it with 'fuser {port}'; "
                                 "stop the gateway's serial input or close the other terminal)")
    return ProvisioningError(f"{port} cannot be opened ({text}): check the cable and that it is a serial port")


def probe(port: str) -> None:
    """Open and close the port exclusively, turning any failure into explain()."""
    try:
        s = serial.serial_for_url(port, do_not_open=True, baudrate=115200, timeout=0)
        if hasattr(s, "exclusive"):
            s.exclusive = True
        s.open()
        s.close()
    except (serial.SerialException, OSError) as e:
        cause = e.__context__ if isinstance(e, serial.SerialException) and e.__context__ else e
        raise explain(port, cause) from None
