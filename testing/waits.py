"""Waiting on something observable, with a deadline: the one polling helper of the test kit."""

from __future__ import annotations

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
