"""Guided zero and span calibration of the gas channel with test gas.

The board is stopped at the REPL and its gas ADC read directly (the pin from firmware/boards.py), a window
at a time. A reading is accepted only when a whole window stays within STABLE_COUNTS, and the result must
be a working sensor: a live zero (not open, not shorted) and a sensitivity near the transmitter's nominal.
The coefficients go into /gg_config.json "calibration.gas" (raw counts, firmware/sensing.py) and into the
registry.
"""

from __future__ import annotations

import time

from gasguard.firmware import boards, sensing
from gasguard.registry import Device, Registry

from . import onboard
from .board import Board
from .errors import BadInput, ProvisioningError

WINDOW = 10           # samples per stability window
INTERVAL_MS = 100     # between samples: a window is 1 s, longer than a catalytic bead's noise period
STABLE_COUNTS = 96    # max - min inside a window: ~0.3 % LEL at the nominal 31.8 counts per 0.1 % LEL
SETTLE_S = 120.0      # how long to wait for a gas flow to settle before giving up
# the nominal transmitter (sensing.py defaults): 0.4 V live zero, 1.2 V at 50 % LEL
NOMINAL = (sensing.GAS_SPAN_DEFAULT - sensing.GAS_ZERO_DEFAULT) / sensing.GAS_SPAN_GAS_DEFAULT
ZERO_RANGE = (sensing.GAS_ZERO_DEFAULT // 2, sensing.GAS_ZERO_DEFAULT * 3 // 2)   # 0.2 .. 0.6 V
CLEAR_TENTHS = 30    # 3 % LEL: below the lowest gas_l1 bound (5 %), so the restarted node does not alarm
SENSITIVITY_RANGE = (0.5, 2.0)   # of nominal; outside it the sensor head is poisoned or the wrong model


def check_span_gas(span_gas: int) -> int:
    if not 100 <= span_gas <= 1000:
        raise BadInput(f"span gas {span_gas}: give the test gas concentration in 0.1 % LEL, 100..1000 "
                       "(e.g. 500 for the usual 50 % LEL bottle)")
    return span_gas


def window(board: Board, pin: int) -> list[int]:
    code = ("import machine, time\na = machine.ADC(machine.Pin(%d))\nv = []\nfor i in range(%d):\n"
            " v.append(a.read_u16())\n time.sleep_ms(%d)\nprint(v)" % (pin, WINDOW, INTERVAL_MS))
    return [int(x) for x in board.eval_code(code, timeout=30)]


def lel(counts: int, zero: int) -> float:
    """A raw reading in % LEL at the nominal sensitivity from `zero` (what the technician sees live)."""
    return (counts - zero) / NOMINAL / 10


def settle(board: Board, pin: int, what: str, timeout: float = SETTLE_S, clock=time.monotonic,
           below: int | None = None, watch=None) -> int:
    """The mean of the first window whose spread is within STABLE_COUNTS (and, given `below`, whose mean is
    under it); raises when none comes in time. `watch(mean, spread, seconds_left)` sees every window."""
    deadline = clock() + timeout
    spread = mean = None
    while clock() < deadline:
        v = window(board, pin)
        spread = max(v) - min(v)
        mean = sum(v) // len(v)
        if watch is not None:
            watch(mean, spread, max(0.0, deadline - clock()))
        if spread <= STABLE_COUNTS and (below is None or mean < below):
            return mean
    if below is not None and spread is not None and spread <= STABLE_COUNTS:
        raise ProvisioningError(f"the sensor still reads gas after {timeout:.0f} s ({mean} counts, clean air is "
                                f"below {below}): take the calibration cap off, ventilate, run calibrate again")
    raise ProvisioningError(f"the {what} reading did not settle within {timeout:.0f} s (spread {spread} counts, "
                            f"at most {STABLE_COUNTS}): check the gas flows steadily through the cap, wait, retry")


def calibrate(board: Board, reg: Registry, dev: Device, span_gas: int, prompt, settle_s: float = SETTLE_S,
              watch=None) -> dict:
    """prompt(step, message) is called before each step ("zero", "span", "clear") and returns when the
    technician has done what it says. watch(step, counts, pct_lel, spread, seconds_left) sees every reading
    while a step waits for a stable one (the live value and the countdown on the technician's screen)."""
    def watching(step, zero_counts):
        if watch is None:
            return None
        return lambda mean, spread, left: watch(step, mean, round(lel(mean, zero_counts), 1), spread, left)
    check_span_gas(span_gas)
    board.repl()
    cfg = onboard.config_of(board, dev)
    pin = boards.profile(cfg.get("board", "esp32"))["gas"]
    with board.keepalive():   # the technician may take minutes to fit the cap: the watchdog must not fire
        prompt("zero", "Apply zero gas (clean air or nitrogen) to the sensor and let it flow.")
    old_zero = ((cfg.get("calibration") or {}).get("gas") or {}).get("zero", sensing.GAS_ZERO_DEFAULT)
    zero = settle(board, pin, "zero", settle_s, watch=watching("zero", old_zero))
    if not ZERO_RANGE[0] <= zero <= ZERO_RANGE[1]:
        raise ProvisioningError(f"zero reading {zero} counts is outside {ZERO_RANGE[0]}..{ZERO_RANGE[1]} "
                                "(the transmitter's 0.4 V live zero): check the sensor wiring and supply")
    with board.keepalive():
        prompt("span", f"Apply the span gas ({span_gas / 10:g} % LEL) to the sensor and let it flow.")
    span = settle(board, pin, "span", settle_s, watch=watching("span", zero))
    sens = (span - zero) / span_gas / NOMINAL
    if span >= sensing.SHORT_ABOVE or not SENSITIVITY_RANGE[0] <= sens <= SENSITIVITY_RANGE[1]:
        raise ProvisioningError(f"span reading {span} counts gives {sens:.0%} of the nominal sensitivity "
                                f"(allowed {SENSITIVITY_RANGE[0]:.0%}..{SENSITIVITY_RANGE[1]:.0%}): check the test "
                                "gas bottle and concentration; a sensor below 50 % is poisoned: replace it")
    # the node restarts with the new coefficients: with the span gas still on it would alarm and latch its
    # valve shut, so wait until the sensor reads clean air again (below CLEAR_TENTHS on the new scale)
    with board.keepalive():
        prompt("clear", "Remove the test gas and the cap; the node restarts once the sensor reads clean air.")
    settle(board, pin, "clean-air", settle_s, below=zero + (span - zero) * CLEAR_TENTHS // span_gas,
           watch=watching("clear", zero))
    gas = {"zero": zero, "span": span, "span_gas": span_gas}
    cal = dict(cfg.get("calibration") or {}, gas=gas)
    cfg["calibration"] = cal
    onboard.write_json(board, "/gg_config.json", cfg)
    onboard.boot_and_check(board, dev)
    reg.update(dev.dev_id, calibration=dict(dev.calibration, gas=gas))
    reg.log(dev.dev_id, "calibrate", {"gas": gas, "sensitivity": round(sens, 3)})
    return {"dev": f"{dev.dev_id:08x}", "gas": gas, "sensitivity": round(sens, 3)}
