"""Waiting on something observable, with a deadline: the one polling helper of the test kit."""

from __future__ import annotations

import asyncio
import time


def wait_until(pred, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(step)


async def until(pred, timeout: float, what: str, step: float = 0.002):
    """wait_until for a test running on the event loop under test: the loop keeps turning between looks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = pred()
        if r:
            return r
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(step)
