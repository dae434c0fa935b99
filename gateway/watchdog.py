"""systemd readiness and watchdog: READY=1 once the daemon's loops run, WATCHDOG=1 only while they make progress.

The unit (`gasguard-gateway@.service`, one instance per config) is `Type=notify` with `WatchdogSec=`:
systemd starts the next unit only after READY=1, and kills and restarts the daemon when WATCHDOG=1 stops
coming. The messages go over `$NOTIFY_SOCKET` through the `sdnotify` package; without that variable (a shell,
a test) nothing is sent.

Which loops: `ingest` (verification and the spool commit) and `ticker` (offline detection, command retries,
plugins' deadlines, gauges). Each calls `Heartbeats.beat(name)` when it has done a round of work; an idle
ingest (empty queue) is beaten by the ticker, so waiting for frames is healthy and a full queue that does not
drain is not. A loop is stuck when its last beat is older than `metrics.stall_after` seconds.

The feeding runs in a thread, not on the event loop: a blocked event loop (a hung disk under the spool's
fsync, a plugin stuck in a blocking call) stops its own beats, and the thread can still say which loop
stopped, in the log and in systemd's STATUS= (`systemctl status gasguard-gateway@gateway`), before systemd
kills it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("gasguard.gateway.watchdog")


class Heartbeats:
    """Last-progress times of named loops (monotonic seconds). Written on the event loop, read by the
    watchdog thread: single float stores, which the GIL makes atomic."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.last: dict[str, float] = {}    # loop name -> monotonic time of its last round of work

    def beat(self, name: str) -> None:
        self.last[name] = self.clock()

    def stale(self, limit: float) -> list[tuple[str, float]]:
        """[(loop, seconds since its last beat)] for each loop silent longer than `limit`."""
        now = self.clock()
        return [(n, now - t) for n, t in sorted(self.last.items()) if now - t > limit]


def watchdog_interval(env=os.environ) -> float | None:
    """Seconds between two WATCHDOG=1: a third of systemd's WatchdogSec (sd_watchdog_enabled(3) asks for less
    than half), or None when systemd set no watchdog for this process."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(0.01, int(usec) / 1e6 / 3)
    except ValueError:
        log.error("WATCHDOG_USEC=%r is not a number of microseconds; the watchdog is not fed", usec)
        return None


class Watchdog:
    """READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1 for one daemon run."""

    def __init__(self, beats: Heartbeats, stall_after: float, env=os.environ):
        self.beats, self.stall_after = beats, stall_after
        self.interval = watchdog_interval(env)
        self.notifier = None
        self.failed = False                      # one log line when the socket stops taking messages
        self.stuck: tuple = ()                    # names of the loops reported stuck, () while healthy
        self.stop_ev = threading.Event()
        self.thread: threading.Thread | None = None
        self.fed = 0                              # WATCHDOG=1 messages sent (tests, bench)
        if env.get("NOTIFY_SOCKET"):
            import sdnotify
            try:
                self.notifier = sdnotify.SystemdNotifier(debug=True)
            except OSError as e:
                log.error("cannot reach systemd's NOTIFY_SOCKET %s (%s): no READY=1 will be sent and systemd "
                          "will time the start out; check the unit's NotifyAccess=", env["NOTIFY_SOCKET"], e)

    def _send(self, msg: str) -> bool:
        if self.notifier is None:
            return False
        try:
            self.notifier.notify(msg)
            self.failed = False
            return True
        except OSError as e:
            if not self.failed:
                log.error("systemd notification %r failed (%s)", msg.split("=")[0], e)
            self.failed = True
            return False

    def ready(self, status: str) -> None:
        """The loops are running: systemd may consider the start done. Starts the feeding thread."""
        self._send(f"READY=1\nSTATUS={status}")
        if self.notifier is not None and self.interval is not None:
            self.thread = threading.Thread(target=self._feed, name="gasguard-watchdog", daemon=True)
            self.thread.start()

    def check(self) -> bool:
        """One round: feed if every loop made progress within stall_after, else say which did not."""
        stale = self.beats.stale(self.stall_after)
        names = tuple(n for n, _ in stale)
        if not stale:
            if self.stuck:
                log.warning("daemon loops %s make progress again; feeding the watchdog", ", ".join(self.stuck))
                self._send("STATUS=running")
                self.stuck = ()
            if self._send("WATCHDOG=1"):
                self.fed += 1
            return True
        if names != self.stuck:
            what = ", ".join(f"{n} (no progress for {age:.0f} s)" for n, age in stale)
            if len(stale) == len(self.beats.last) > 1:
                what += ": all of them, so the event loop itself is blocked (a blocking call in the daemon or a plugin)"
            log.critical("daemon loop stuck: %s; not feeding the systemd watchdog, so systemd restarts the "
                         "gateway (the spool keeps what was accepted)", what)
            self._send(f"STATUS=stuck: {what}")
            self.stuck = names
        return False

    def _feed(self) -> None:
        while not self.stop_ev.wait(self.interval):
            self.check()

    def stopping(self) -> None:
        self.stop_ev.set()
        self._send("STOPPING=1")
        if self.thread is not None:
            self.thread.join(5)
