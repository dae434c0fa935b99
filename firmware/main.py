# Entry point. /main.py on the board is the 2-line stub:
#     from gasguard.firmware import main
#     main.run()
# Builds the hardware from the board profile (firmware/boards.py), hands it to the application and runs
# the loop. The loop awaits between passes (it never busy-waits), so on the virtual board the host's
# events run, and on a real board other tasks could.

import sys

from gasguard.firmware import app as app_mod
from gasguard.firmware import boards, link, store

VIRTUAL = sys.platform == "webassembly"


class Clock:
    """ticks_ms() and an awaitable sleep_ms(); the virtual board supplies its own (virtual time)."""

    def __init__(self):
        import time

        import asyncio

        self.ticks_ms = time.ticks_ms
        self._sleep = asyncio.sleep_ms

    async def sleep_ms(self, ms):
        await self._sleep(ms)


def setup(machine, clock, root="/", flush=None, log=print):
    """Read the configuration and persisted state, build the hardware, and return the App."""
    cfg, key = store.read_config(root)
    st = store.StateStore(root, flush)
    st.load()
    hw = boards.build(machine, cfg.get("board", "virtual" if VIRTUAL else "esp32"), cfg)
    ln = link.Link(hw.uart, int(cfg["dev_id"]), key, st, log)
    cause = machine.reset_cause() if hasattr(machine, "reset_cause") else 0
    a = app_mod.App(cfg, key, hw, st, ln, log=log, now=clock.ticks_ms(), reset_cause=cause)
    # the watchdog starts last: from here on only a healthy loop feeds it
    hw.wdt = machine.WDT(timeout=hw.wdt_ms)
    return a


async def loop(a, clock, steps=-1):
    """Run the node: tick, then await until the next sample (bounded by app.POLL_MS)."""
    while steps != 0:
        wait = a.tick(clock.ticks_ms())
        await clock.sleep_ms(wait if wait > 0 else 1)
        if steps > 0:
            steps -= 1


async def arun():
    if VIRTUAL:
        import machine  # the virtual board's shim

        # the shim's extras (virtual clock, flash write-back) are not in the ESP32 stubs
        clock = getattr(machine, "clock")()
        a = setup(machine, clock, flush=getattr(machine, "flash_sync"))
    else:
        import machine

        clock = Clock()
        a = setup(machine, clock)
    await loop(a, clock)


def run():
    """Start the node (from /main.py). On the WebAssembly port the host awaits arun() itself."""
    if VIRTUAL:
        return arun()
    import asyncio

    asyncio.run(arun())
