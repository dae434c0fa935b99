"""Run asyncio tasks that are never silently gone: a crash is logged loudly and the task restarted
with capped exponential backoff (STYLE 6)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("gasguard.gateway.supervisor")


async def supervise(name: str, factory, *, metrics=None, backoff_min: float = 0.5, backoff_max: float = 30.0,
                    healthy_after: float = 60.0):
    delay = backoff_min
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await factory()
            log.error("task %s returned; restarting it in %.1f s", name, delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s crashed; restarting it in %.1f s", name, delay)
        if metrics is not None:
            metrics.task_restarts.labels(name).inc()
        if loop.time() - started > healthy_after:
            delay = backoff_min
        await asyncio.sleep(delay)
        delay = min(backoff_max, delay * 2)
