# Engineering units <-> wire integers (SPEC 3.1).

from .const import NA16
from .errors import ProtocolError

P_FINE_MAX = 32767          # 1 Pa steps up to here
P_COARSE_STEP = 125         # then 125 Pa steps
P_MAX = 0x7FFE * 125        # 4,095,750 Pa: covers high-pressure A (4.0 MPa)
GAS_MAX = 1000              # 100 % LEL in 0.1 % LEL


def pressure_to_wire(pa):
    """Gauge pressure in Pa (int, or None for no value) -> u16."""
    if pa is None:
        return NA16
    if pa < 0 or pa > P_MAX:
        raise ProtocolError("range", "pressure %r Pa outside 0..%d" % (pa, P_MAX))
    if pa <= P_FINE_MAX:
        return int(pa + 0.5)
    return 0x8000 | int((pa + P_COARSE_STEP // 2) // P_COARSE_STEP)


def pressure_from_wire(u):
    """u16 -> gauge pressure in Pa, or None."""
    if u == NA16:
        return None
    if u & 0x8000:
        return (u & 0x7FFF) * P_COARSE_STEP
    return u


def gas_to_wire(tenths):
    """Gas in 0.1 % LEL (or None) -> u16; values above 100 % LEL are clamped (state OVER_RANGE says so)."""
    if tenths is None:
        return NA16
    if tenths < 0:
        raise ProtocolError("range", "gas below zero")
    return GAS_MAX if tenths > GAS_MAX else int(tenths)


def gas_from_wire(u):
    if u == NA16:
        return None
    if u > GAS_MAX:
        raise ProtocolError("field", "gas %d above 1000 (0.1 %% LEL)" % u)
    return u


def gas_percent_lel(tenths):
    """Gas in 0.1 % LEL (or None) -> % LEL, as payloads and people read it."""
    return None if tenths is None else tenths / 10.0


def battery_to_wire(pct):
    if pct is None:
        return 0xFF
    if pct < 0 or pct > 100:
        raise ProtocolError("range", "battery %r %% outside 0..100" % (pct,))
    return int(pct)


def battery_from_wire(u):
    if u == 0xFF:
        return None
    if u > 100:
        raise ProtocolError("field", "battery %d above 100 %%" % u)
    return u
