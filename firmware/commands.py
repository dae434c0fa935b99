# The node's side of downlink commands and its BOOT event (SPEC 3.5, 3.6), as pure functions: no hardware,
# no flash, no link. The firmware (app.py) and the fleet simulator's nodes (tools/sim/fleet_node.py) both
# answer with these, so a simulated node cannot drift from a real one.

from gasguard.firmware import bounds
from gasguard.protocol import const, units

FW_MAJOR = 1
FW_MINOR = 0


def boot_data(reset_cause, profile):
    """BOOT event data: reset cause u8, firmware major u8, minor u8, profile u8 (1 household, 2 station)."""
    return bytes([reset_cause & 0xFF, FW_MAJOR, FW_MINOR, 2 if profile == bounds.STATION else 1])


def set_param(profile, cfg_params, overrides, args):
    """SET_PARAM (SPEC 3.6): args = param id u8, value u16 (wire units). Returns (result, name, value): on
    R_OK the caller stores `overrides[name] = value`, applies it and reports EV_CONFIG; otherwise name and
    value are None. `cfg_params` are the provisioned parameters, `overrides` those set by earlier commands:
    the merged set must stay inside the profile's safe bounds."""
    if len(args) != 3:
        return const.R_BAD_ARGS, None, None
    pid = args[0]
    raw = (args[1] << 8) | args[2]
    name = const.PARAM_NAMES.get(pid)
    if name is None or name not in bounds.BOUNDS[profile]:
        return const.R_BAD_ARGS, None, None
    value = units.pressure_from_wire(raw) if pid in const.PRESSURE_PARAMS else raw
    if value is None:
        return const.R_BAD_ARGS, None, None
    merged = dict(cfg_params or {})
    merged.update(overrides or {})
    merged[name] = value
    if bounds.problems(profile, merged):
        return const.R_OUT_OF_BOUNDS, None, None
    return const.R_OK, name, value


def status_data(state_byte, level, fault, battery, dropped_readings, pending):
    """STATUS event data (profile-defined, SPEC 3.5 code 9): state byte, gas level, fault bits, battery %
    (0xFF mains or unknown), readings dropped on a saturated link and frames waiting, each clamped to u8."""
    return bytes([state_byte & 0xFF, level & 0xFF, fault & 0xFF, battery & 0xFF,
                  255 if dropped_readings > 255 else dropped_readings, 255 if pending > 255 else pending])
