"""`device config`: plan a change against the registry (no port), then apply it to the board and record it.

plan() runs before any port is opened: every value is checked against the firmware's bounds merged with
the device's current settings, so a refused value never reaches a board.
"""

from __future__ import annotations

from gasguard.registry import Device, Registry

from . import onboard, settings
from .board import Board


def plan(dev: Device, assignments: list[str]) -> dict:
    """The device's new registry `config`; raises BadInput (exit 2) on any unsafe or unknown value."""
    params, board, radio = settings.split(dev.config)
    p_changes, r_changes = settings.parse(dev.profile, board, assignments)
    new_params = dict(params, **p_changes)
    settings.check_params(dev.profile, new_params)
    return dict(new_params, board=board, radio=dict(radio, **r_changes))


def read(board: Board, dev: Device) -> dict:
    """What the board runs: defaults < /gg_config.json params < SET_PARAM overrides (firmware/app.py)."""
    board.repl()
    cfg = onboard.config_of(board, dev)
    st = onboard.read_json(board, "/gg_state.json") or {}
    file_params = cfg.get("params") or {}
    overrides = st.get("params") or {}
    eff = settings.effective(dev.profile, dict(file_params, **overrides))
    source = {k: ("override" if k in overrides else "config" if k in file_params else "default") for k in eff}
    onboard.boot_and_check(board, dev)    # back to work, and proof it still boots with what we read
    return {"params": eff, "source": source, "radio": cfg.get("radio") or {}, "board": cfg.get("board")}


def apply(board: Board, reg: Registry, dev: Device, new_config: dict) -> dict:
    """Write the new settings to the board, reboot it, check it runs them, then record them."""
    board.repl()
    cfg = onboard.config_of(board, dev)
    params, _, radio = settings.split(new_config)
    before = dict(cfg.get("params") or {})
    changed = {k: v for k, v in params.items() if before.get(k) != v}
    cfg["params"] = params
    cfg["radio"] = radio
    dropped = onboard.drop_overrides(board, changed)
    onboard.write_json(board, "/gg_config.json", cfg)
    onboard.boot_and_check(board, dev)
    reg.update(dev.dev_id, config=new_config)
    reg.log(dev.dev_id, "config", {"changed": changed, "radio": radio, "dropped_overrides": dropped})
    return {"dev": f"{dev.dev_id:08x}", "changed": changed, "radio": radio, "dropped_overrides": dropped}
