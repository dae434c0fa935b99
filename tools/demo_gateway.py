"""The real gateway daemon on a sped-up clock, for the demo.

    python -m gasguard.tools.demo_gateway --config gateway.toml --t0 1795462055.0 --speed 30

Only the clock differs from `gasguard gateway run`: daemon time is `t0 + (wall - t0) * speed`, so the plan's
20- and 45-minute reporting deadlines (plan 4.1.2) fall due in 40 s and 90 s of wall time at speed 30. The
demo's console and fleet use the same mapping, so every timestamp on the broker is on one demo clock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time


def die_with_parent() -> None:
    """Linux: get SIGTERM when the process that started us dies, even by SIGKILL (prctl PR_SET_PDEATHSIG), so a
    killed demo leaves no gateway or broker behind. Elsewhere, or if prctl is missing, nothing happens."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)          # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:                                # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def demo_clock(t0: float, speed: float):
    """Wall time -> demo time: `t0` is the same instant in both; demo time runs `speed` times faster."""
    return lambda: t0 + (time.time() - t0) * speed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GasGuard gateway daemon on an accelerated clock (demo only)")
    ap.add_argument("--config", "-c", required=True)
    ap.add_argument("--t0", type=float, required=True, help="wall time (Unix s) the demo clock starts from")
    ap.add_argument("--speed", type=float, required=True, help="demo seconds per wall second")
    a = ap.parse_args(argv)
    die_with_parent()
    from gasguard import logs
    from gasguard.gateway.config import ConfigError, load
    from gasguard.gateway.daemon import Daemon
    try:
        cfg = load(a.config)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_json, gateway=cfg.gateway_id)
    daemon = Daemon(cfg, clock=demo_clock(a.t0, a.speed))

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
