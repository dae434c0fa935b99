"""Flashing and configuring a board through the technician CLI (`gasguard device ...`, its own process, as
a technician runs it), before the suite's DUT opens the port.

Virtual target: a blank virtual board (MicroPython only), a new identity from `device new`. Real board: the
identity of `--node-dir` is put in a scratch registry, so `device flash` re-flashes the board with the same
key and dev id (its state and counters are kept) and the rest of the suite still knows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gasguard.registry import Device, Registry
from gasguard.provisioning import identity


class CliFailed(AssertionError):
    pass


def device(registry: Path, *args: str, timeout: float = 240) -> dict:
    """Run `gasguard device ARGS --json`; its JSON answer, or CliFailed with the exit code and output."""
    argv = [sys.executable, "-m", "gasguard.cli", "device", *args, "--registry", str(registry), "--json"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise CliFailed(f"gasguard device {' '.join(args)}: exit {p.returncode}\n"
                        f"{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    return json.loads(p.stdout)


def registry_from_node_dir(registry: Path, config: dict, key: bytes) -> str:
    """A registry entry that reproduces a provisioned board's gg_config.json (a real board on the bench)."""
    meta = {"board": config.get("board", "esp32")}
    if config.get("radio"):
        meta["radio"] = config["radio"]
    with Registry(registry) as r:
        r.add_many([Device(dev_id=int(config["dev_id"]), key=key, profile=config["profile"], state="provisioned",
                           site_name="HIL bench", config={**(config.get("params") or {}), **meta},
                           calibration=config.get("calibration") or {})])
    return f"{int(config['dev_id']):08x}"


def entry(registry: Path, dev: str) -> tuple[dict, bytes]:
    """(gg_config.json the registry would flash, key) for a device."""
    with Registry(registry) as r:
        d = r.get(int(dev, 16))
        return identity.node_config(d), d.key
