# Board profiles: which pin is what on each supported board, and the one place that creates buses.
#
# build() is called by firmware/main.py at run time, never at import time, with the `machine` module
# (the real one on a board, the virtual board's shim on the host) passed in.

from gasguard.firmware.app import Hardware, Valve

# ADC inputs are read with read_u16() (0..65535) on every port.
PROFILES = {
    # ESP32-WROOM-32: ADC1 pins only (ADC2 is unusable while Wi-Fi/radio is on); UART1 to the modem.
    "esp32": {"gas": 34, "pressure": 35, "inlet": 32, "battery": 33, "valve": 25,
              "uart": 1, "tx": 17, "rx": 16, "wdt_ms": 8000},
    # Raspberry Pi Pico (RP2040): ADC0..2 on GP26..28, VSYS/3 on GP29; UART0 on GP0/GP1.
    "rp2040": {"gas": 26, "pressure": 27, "inlet": 28, "battery": 29, "valve": 15,
               "uart": 0, "tx": 0, "rx": 1, "wdt_ms": 8000},
    # The virtual board (gasguard sim vboard): same roles, pin ids its shim understands.
    "virtual": {"gas": 1, "pressure": 2, "inlet": 3, "battery": 4, "valve": 5,
                "uart": 0, "tx": None, "rx": None, "wdt_ms": 8000},
}


def profile(name):
    if name not in PROFILES:
        raise ValueError("board %r: choose one of %s (gg_config.json \"board\")" % (name, ", ".join(sorted(PROFILES))))
    return PROFILES[name]


def _adc(machine, pin, board):
    adc = machine.ADC(machine.Pin(pin))
    if board == "esp32":
        adc.atten(machine.ADC.ATTN_11DB)  # full 0..3.3 V range
    return adc


def build(machine, board, cfg):
    """Create every bus and pin of `board` for a node configured by `cfg` (gg_config.json)."""
    pr = profile(board)
    radio = cfg.get("radio") or {}
    baud = int(radio.get("baud", 115200))
    uid = int(radio.get("uart", pr["uart"]))
    if pr["tx"] is None:
        uart = machine.UART(uid, baud)
    else:
        uart = machine.UART(uid, baudrate=baud, tx=machine.Pin(pr["tx"]), rx=machine.Pin(pr["rx"]),
                            timeout=0, rxbuf=512)
    station = cfg.get("profile") == "station"
    valve_pin = machine.Pin(pr["valve"], machine.Pin.OUT)
    hw = Hardware(
        gas_adc=_adc(machine, pr["gas"], board),
        pressure_adc=_adc(machine, pr["pressure"], board),
        inlet_adc=_adc(machine, pr["inlet"], board) if station else None,
        battery_adc=None if station else _adc(machine, pr["battery"], board),
        valve=Valve(valve_pin),
        uart=uart,
        wdt_ms=pr["wdt_ms"],
    )
    return hw
