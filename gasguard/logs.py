"""Structured logs for every GasGuard service (gateway, command, tools): one line per event, through structlog.

Two formats, chosen by the service's configuration (`gateway.log_json` for the gateway):

  text (logfmt, for journalctl and grep): every field is key=value; values with spaces, quotes or '=' are
      double-quoted with \\" and \\n escaped, so `grep 'device=00a10000'` and a logfmt parser both work:
      t=2026-12-02T06:50:00.123Z level=warning logger=gasguard.gateway gateway=sub-017 msg="device offline" device=00a10000 silent_s=2700
  json (one object per line, for a log shipper): the same keys.
      {"t": "2026-12-02T06:50:00.123Z", "level": "warning", "logger": "gasguard.gateway", "gateway": "sub-017", ...}

Field names (FIELDS; use these, not synonyms, so one query finds a device across services):
  gateway   the gateway id (bound once per process by `setup(gateway=...)`)
  device    a node's dev id as 8 hex digits (`dev(0x00A10000)` -> "00a10000")
  port      a serial port's configured name (or the Semtech forwarder's address)
  incident  an incident id ("north-leak-00a10000-1795462055")
  operator  who acted: the operator id from a signed request, or "command" when unsigned
  request   a command's request id
Plus t, level (the log level: an incident's grade is `grade`), logger, msg (the human sentence, without the
fields inside it) and any event-specific keys.

How to log (both render the same):
  structlog:  `log = logs.get(__name__)`; `log.info("incident escalated", incident=i, stage="phone")`
  stdlib:     `logging.getLogger(name).info("device offline", extra=logs.fields(device=dev))`
Incidents, escalations, acknowledgements, operator input and commands are logged at INFO; repeated
conditions (rejections, line noise) go through the gateway's BurstLog so a flood is a count, not a flood.
Never log a key (device keys, MIC keys, operator private keys).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import structlog

FIELDS = ("gateway", "device", "port", "incident", "operator", "request")
_FIRST = ["t", "level", "logger", *FIELDS[:1], "msg", *FIELDS[1:]]   # logfmt key order: the rest follow


def dev(d: int | str | None) -> str | None:
    """A device id as logged: 8 lowercase hex digits."""
    if d is None or isinstance(d, str):
        return d
    return f"{d:08x}"


def fields(**kw: Any) -> dict:
    """`extra=` for a stdlib logging call: the given fields, device ids as 8 hex digits, None left out."""
    if "device" in kw:
        kw["device"] = dev(kw["device"])
    return {k: v for k, v in kw.items() if v is not None}


def get(name: str):
    """A structlog logger that renders through the handler `setup` installs (stdlib logging underneath, so
    pytest's caplog, journald and the level of the `gasguard` logger apply)."""
    return structlog.stdlib.get_logger(name)


def _static(values: dict):
    def add(_logger, _name, event: dict) -> dict:
        for k, v in values.items():
            event.setdefault(k, v)
        return event
    return add


def _device_hex(_logger, _name, event: dict) -> dict:
    if isinstance(event.get("device"), int):
        event["device"] = dev(event["device"])
    return event


def _ordered(_logger, _name, event: dict) -> dict:
    """t, level, logger, gateway, msg, then the fields, then the rest, in both formats; None left out."""
    out = {k: event.pop(k) for k in _FIRST if k in event}
    out.update(event)
    return {k: v for k, v in out.items() if v is not None}      # an absent field, not `stage=`


def formatter(as_json: bool = False, **static: Any) -> logging.Formatter:
    """The formatter for a handler: `static` fields (e.g. gateway="sub-017") are added to every line."""
    pre = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()]
    renderer = (structlog.processors.JSONRenderer(sort_keys=False) if as_json else
                structlog.processors.LogfmtRenderer(key_order=_FIRST, drop_missing=True, bool_as_flag=False))
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S.%fZ", utc=True, key="t"),
                    _static({k: v for k, v in static.items() if v is not None}),
                    _device_hex,
                    structlog.processors.format_exc_info,
                    structlog.processors.EventRenamer("msg"),
                    _ordered,
                    renderer])


# structlog loggers hand their events to stdlib logging as message + extra fields (render_to_log_kwargs), so
# one handler renders both kinds and a process that never calls setup() behaves as with stdlib loggers (its
# own handlers, or nothing below WARNING) instead of structlog's default print to stdout.
structlog.configure(
    processors=[structlog.stdlib.filter_by_level,
                structlog.stdlib.PositionalArgumentsFormatter(),
                structlog.processors.StackInfoRenderer(),
                structlog.stdlib.render_to_log_kwargs],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True)


def setup(level: str = "INFO", as_json: bool = False, stream=None, **static: Any) -> logging.Handler:
    """Configure the `gasguard` logger tree for one process: one handler on stderr (journald reads it)."""
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(formatter(as_json, **static))
    root = logging.getLogger("gasguard")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False
    return h


def user_state_file(name: str) -> Path:
    """Where a user's own command keeps its log: $XDG_STATE_HOME/gasguard/NAME, else
    ~/.local/state/gasguard/NAME (the XDG base directory spec's state directory)."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"   # the spec: relative = unset
    return root / "gasguard" / name


@contextlib.contextmanager
def to_file(path: str | os.PathLike, level: str = "INFO", **static: Any) -> Iterator[logging.Handler]:
    """`setup`, into a file instead of stderr, for a command that holds the terminal (the field console): the
    file appended to, created 0600 in a folder created 0700 (a log may name operators). Every logger's records
    go there, the root's too (a library's warning must not reach Python's last-resort stderr under a TUI).
    OSError if it cannot be opened. The logging as it was comes back on exit."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stream = open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8",
                  buffering=1)        # line-buffered: a reader (tail -f) sees each line as it is logged
    gg, root = logging.getLogger("gasguard"), logging.getLogger()
    before = (gg.handlers[:], gg.level, gg.propagate, root.handlers[:])
    try:
        h = setup(level, stream=stream, **static)
        root.handlers[:] = [h]
        yield h
    finally:
        gg.handlers[:], gg.level, gg.propagate, root.handlers[:] = before
        stream.close()
