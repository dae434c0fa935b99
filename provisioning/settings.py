"""Device settings: parameters (thresholds, rates), radio and board, checked before any port is opened.

Parameter bounds are the firmware's own (firmware/bounds.py, the same file the node runs), so a value this
module accepts is a value the node accepts. The registry keeps a device's settings in its `config` column
as the flat parameter names (what the fleet simulator and the gateway read) plus "board" and "radio".
"""

from __future__ import annotations

from gasguard.firmware import boards, bounds

from .errors import BadInput

# UART rates a modem or a wired line can be set to; anything else is a typo (e.g. 11520)
BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800)
UARTS = (0, 1, 2)   # ESP32 has UART0..2, RP2040 UART0..1; UART0 is the console on an ESP32
DEFAULT_RADIO = {"esp32": {"uart": 1, "baud": 115200}, "rp2040": {"uart": 0, "baud": 115200},
                 "virtual": {"uart": 0, "baud": 115200}}
META_KEYS = ("board", "radio")


def split(config: dict) -> tuple[dict, str, dict]:
    """(parameters, board, radio) from a registry `config` column."""
    params = {k: v for k, v in config.items() if k not in META_KEYS}
    board = config.get("board", "esp32")
    radio = dict(DEFAULT_RADIO.get(board, {"uart": 1, "baud": 115200}))
    radio.update(config.get("radio") or {})
    return params, board, radio


def check_board(board: str) -> str:
    if board not in boards.PROFILES:
        raise BadInput(f"board {board!r}: choose one of {', '.join(sorted(boards.PROFILES))}")
    return board


def check_params(profile: str, params: dict) -> dict:
    bad = bounds.problems(profile, params)
    if bad:
        raise BadInput("refused (the node would run its defaults instead): " + "; ".join(bad))
    return params


def check_radio(board: str, radio: dict) -> dict:
    out = {}
    for k, v in radio.items():
        if k == "baud" and v not in BAUDS:
            raise BadInput(f"radio.baud={v}: choose one of {', '.join(map(str, BAUDS))}")
        elif k == "uart":
            if v not in UARTS:
                raise BadInput(f"radio.uart={v}: choose 0, 1 or 2")
            if board == "esp32" and v == 0:
                raise BadInput("radio.uart=0 is the ESP32's USB console: the modem is on UART1 or UART2")
        elif k not in ("baud", "uart"):
            raise BadInput(f"radio.{k}: unknown setting (known: radio.uart, radio.baud)")
        out[k] = v
    return out


def _value(name: str, text: str):
    if name in bounds.CHOICES:
        low = text.strip().lower()
        for c in bounds.CHOICES[name]:
            if low == str(c).lower():
                return c
        raise BadInput(f"{name}={text}: choose one of {', '.join(str(c).lower() for c in bounds.CHOICES[name])}")
    try:
        return int(text, 0)
    except ValueError:
        raise BadInput(f"{name}={text}: must be a whole number (units: gas 0.1 % LEL, pressure Pa, "
                       "times ms unless named _s)") from None


def parse(profile: str, board: str, assignments: list[str]) -> tuple[dict, dict]:
    """['gas_l1=120', 'radio.baud=9600'] -> (param changes, radio changes); raises BadInput."""
    params: dict = {}
    radio: dict = {}
    for a in assignments:
        name, eq, text = a.partition("=")
        name = name.strip()
        if not eq or not name or not text.strip():
            raise BadInput(f"{a!r}: write NAME=VALUE, e.g. gas_l1=120 or radio.baud=9600")
        if name.startswith("radio."):
            radio[name[6:]] = _value(name, text)
            continue
        known = set(bounds.BOUNDS[profile]) | set(bounds.CHOICES)
        if name not in known:
            raise BadInput(f"{name}: not a {profile} setting (known: {', '.join(sorted(known))}, radio.uart, "
                           "radio.baud)")
        params[name] = _value(name, text)
    return params, check_radio(board, radio)


def effective(profile: str, params: dict) -> dict:
    """Every parameter as the node runs it: profile defaults < the given ones."""
    p = bounds.defaults(profile)
    p.update(params)
    return p
