"""Fuzz the gateway's whole ingest path in-process (issue 12 item 11): the serial deframer, the verifier and
the daemon's group commit, the Semtech UDP handler, the command topic and the incident (command-side) topics,
all the real code (a real registry, a real SQLite spool, the grading plugin), driven by a seeded generator.

The oracle: every frame the gateway accepts (seen where the verifier records it) must be one a node sealed
with its own key, with the fields the node sealed, accepted once and in counter order (`wrongly_accepted`
counts the others); no exception may escape a handler, and none may be caught by the daemon's last-resort
handlers either (`unexpected` counts both, by type). Used by
tests/test_fuzz_ingest.py (>= 200,000 inputs) and `gasguard bench fuzz` (>= 2,000,000).

With `lane=True` (`gasguard bench fuzz --lane`) the daemon runs without the grading plugin, as a gateway does by
default, so its reading lane (gateway/_lane.c where built: fastlane.ReadingLane) takes the common readings, which
a plugin turns off; the incident topics, which are the plugin's, are left out, and the oracle sees what the
lane takes (decoded from the frame it took, with its counter) as well as what the verifier accepts.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from gasguard.testing.node import Node, make_registry
from gasguard.gateway.config import parse
from gasguard.gateway.daemon import Daemon
from gasguard.gateway.fastlane import ReadingLane
from gasguard.gateway.grading_plugin import GradingPlugin
from gasguard.gateway.transports.semtech_udp import SemtechUDP
from gasguard.protocol import frame, framing

TARGETS = ("serial", "frame", "udp", "command", "incident")
# of the inputs; a command costs a spool commit each (its result), so it gets fewer
SHARE = {"serial": 0.25, "frame": 0.25, "udp": 0.25, "command": 0.1, "incident": 0.15}
GROUP = 256          # inputs handed to the daemon per group commit


class _Traps(logging.Handler):
    """Every log record that carries a traceback: the daemon's last-resort handlers caught something."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.types: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def emit(self, record):
        if record.exc_info and record.exc_info[1] is not None:
            name = type(record.exc_info[1]).__name__
            self.types[name] = self.types.get(name, 0) + 1
            self.first.setdefault(name, self.format(record))


class _Wire:
    """The UDP socket's far side (a forwarder's view): what the handler sends back is only counted."""

    def __init__(self):
        self.sent = 0

    def sendto(self, data, addr):
        self.sent += 1


def _json_value(r: random.Random, depth: int = 0):
    k = r.randrange(9 if depth < 4 else 6)
    if k == 0:
        return None
    if k == 1:
        return r.choice([True, False])
    if k == 2:
        return r.choice([0, -1, 1, 255, 256, 65535, 65536, 2**31, -2**63, 2**64, r.randrange(-1000, 1000)])
    if k == 3:
        return r.choice([0.5, -1e308, 1e308, float(r.randrange(100)) / 3])
    if k == 4:
        return r.choice(["", "x", "reset", "status", "set_param", "selftest", "\u2028", "\x00\x1b[2J", "é" * 50,
                         "a" * 300, "NONE", "TOO_LATE", "SF11BW125", "AAEC", "%s%n", "../../etc"])
    if k == 5:
        return base64.b64encode(r.randbytes(r.randrange(40))).decode()
    if k == 6:
        return [_json_value(r, depth + 1) for _ in range(r.randrange(4))]
    keys = ["request_id", "cmd", "param", "value", "mask", "ttl_s", "rxpk", "data", "stat", "rssi", "lsnr", "freq",
            "datr", "txpk_ack", "error", "incident", "operator", "by", "note", "revision", "id", "level", "kind"]
    return {r.choice(keys) if r.random() < 0.8 else str(_json_value(r, 9)): _json_value(r, depth + 1)
            for _ in range(r.randrange(5))}


def _mutate(r: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    for _ in range(r.randrange(1, 4)):
        op = r.randrange(6)
        if op == 0 and b:
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        elif op == 1 and b:
            del b[r.randrange(len(b)):]
        elif op == 2:
            b += r.randbytes(r.randrange(1, 8))
        elif op == 3 and b:
            b[r.randrange(len(b))] = r.randrange(256)
        elif op == 4 and len(b) > 1:
            i = r.randrange(len(b))
            del b[i:i + r.randrange(1, 4)]
        elif op == 5:
            b = bytearray(r.randbytes(r.randrange(64)))
    return bytes(b)


class Fuzz:
    def __init__(self, workdir: Path, seed: int, nodes: int = 8, lane: bool = False, compiled: bool = True):
        self.r = random.Random(seed)
        self.nodes = [Node(0x00C10000 + i) for i in range(nodes)]
        make_registry(workdir / "registry.db", self.nodes)
        doc = {"gateway": {"id": "gw1", "district": "d1", "registry": str(workdir / "registry.db"),
                           "spool": str(workdir / "spool.db")},
               "udp": {"bind": "127.0.0.1:1"},            # never opened: the handler is fed in-process
               "spool": {"synchronous": "NORMAL", "max_mb": 4096.0, "audit": True},
               "limits": {"rate_per_min": 1e9, "burst": 1_000_000}}
        self.cfg = parse(doc, workdir)
        self.t = time.time()
        # the grading plugin (incident engine and its command-side topics), without its state file: a JSON
        # dump with fsync per change would be the whole cost of the run, and it is not an input path
        plugins = [] if lane else [GradingPlugin({"district": "d1", "gateway_id": "gw1"}, state_path=None,
                                                 keep_state=False)]
        self.d = Daemon(self.cfg, clock=lambda: self.t, plugins=plugins)
        self.targets = tuple(t for t in TARGETS if plugins or t != "incident")
        self.d.ingest.start()                       # its queue, drained by `_drain` below (no event loop runs)
        self.udp = SemtechUDP(self.d._deliver_nowait, self.d.metrics, self.d.burst)
        self.udp.connection_made(_Wire())
        self.deframer = framing.Deframer()
        self.serial_rx = {"transport": "serial", "port": "fuzz", "rssi": None, "snr": None}
        self.legit: dict[tuple[int, int], dict] = {}       # (dev, fcnt) sealed with the right key -> its fields
        self.sent_legit: list[bytes] = []                  # delivered at least once, in delivery order
        self.fresh = 0                                     # legit frames made
        self.accepted: list[dict] = []                     # what the verifier accepted, in order
        accept = self.d.verifier.accept

        def recording(v, *args):
            self.accepted.append(dict(v.f))
            return accept(v, *args)
        self.d.verifier.accept = recording                 # observed, not changed: the daemon's own call
        self.lane_taken = 0
        if lane:
            if not compiled:                               # the Python lane, the compiled one's reference
                self.d.ingest.lane = ReadingLane(self.d.verifier, self.d.presence, compiled=False)
            assert self.d.ingest.lane is not None
            take = self.d.ingest.lane.take

            def taking(raw, *args):
                r = take(raw, *args)
                if r is not None:                          # (dev, fcnt, ...): the fields of the frame it took
                    f = frame.decode(raw)
                    f["fcnt"] = r[1]
                    self.accepted.append(f)
                    self.lane_taken += 1
                return r
            self.d.ingest.lane.take = taking
            # the lane's loop as the Python lane runs it, so that every frame it takes goes through `taking` (the
            # compiled loop calls its own take); what decides each frame is still the compiled take
            self.d.ingest.lane.run = functools.partial(ReadingLane.run, self.d.ingest.lane)
        self.counts = dict.fromkeys(self.targets, 0)
        self.escaped: dict[str, int] = {}
        self.first_escape: dict[str, str] = {}
        self.pending: list = []

    # -- inputs ---------------------------------------------------------------------------------
    def _legit_frame(self) -> bytes:
        n = self.r.choice(self.nodes)
        k = self.r.randrange(10)
        if k < 6:
            raw = n.reading(gas=self.r.randrange(1001), pressure=self.r.randrange(0, 400000),
                            battery=self.r.randrange(101), state=self.r.choice([0, 0, 1, 4, 0x10]))
        elif k < 8:
            raw = n.alarm(code=self.r.choice([1, 2, 3, 4]), value=self.r.randrange(1001), cleared=self.r.random() < .3)
        elif k < 9:
            raw = n.event(code=self.r.randrange(1, 6), data=self.r.randbytes(self.r.randrange(9)))
        else:
            raw = n.ack(self.r.choice([1, 2, 3]), self.r.randrange(256))
        f = frame.decode(raw)
        f["fcnt"] = n.fcnt
        self.legit[(n.dev, n.fcnt)] = f
        return raw

    def _frame(self) -> bytes:
        """A fresh legit frame (1 in 8), a replay of one, or a mutation of one."""
        k = self.r.random()
        if k < 0.125 or not self.sent_legit:
            raw = self._legit_frame()
            self.fresh += 1
            self.sent_legit.append(raw)
            if len(self.sent_legit) > 4096:
                del self.sent_legit[:2048]
            return raw
        old = self.r.choice(self.sent_legit)
        return old if k < 0.2 else _mutate(self.r, old)

    def _udp_datagram(self) -> bytes:
        r = self.r
        k = r.randrange(8)
        ver, tok, eui = bytes([r.choice([1, 2, 2, 2, 3, 0])]), r.randbytes(2), b"\xaa\x55\x5a\x00\x00\x00\x00\x01"
        if k == 0:
            return r.randbytes(r.randrange(40))
        if k == 1:
            return ver + tok + bytes([r.choice([2, 5, 9])]) + eui + r.randbytes(r.randrange(8))
        if k == 2:
            return ver + tok + b"\x00" + eui + json.dumps(_json_value(r)).encode()
        if k == 3:
            return ver + tok + b"\x05" + eui + json.dumps({"txpk_ack": _json_value(r)}).encode()
        if k == 4:
            return ver + tok + b"\x00" + eui + _mutate(r, json.dumps({"rxpk": [{"data": "AAAA", "stat": 1}]}).encode())
        pks = []
        for _ in range(r.randrange(1, 4)):
            raw = self._frame()
            pk = {"data": base64.b64encode(raw).decode(), "stat": r.choice([1, 1, 1, -1, 0]), "rssi": -97,
                  "lsnr": 5.5, "freq": 470.9, "datr": "SF11BW125"}
            if r.random() < 0.3:
                pk[r.choice(list(pk))] = _json_value(r)
            pks.append(pk)
        return ver + tok + b"\x00" + eui + json.dumps({"rxpk": pks}).encode()

    def _serial_bytes(self) -> bytes:
        r = self.r
        k = r.randrange(6)
        if k < 3:
            return framing.wrap(self._frame())
        if k == 3:
            return _mutate(r, framing.wrap(self._frame()))
        if k == 4:
            return b"boot ok\n" + r.randbytes(r.randrange(20)) + b"\x00"
        return r.randbytes(r.randrange(300))

    def _command(self) -> tuple[str, bytes]:
        r = self.r
        dev = r.choice([n.dev for n in self.nodes] + [0, 0xFFFFFFFF, 0x12345678])
        level = r.choice([f"{dev:08x}", f"{dev:08X}", "-0000001", "+1234567", "zzzzzzzz", "0x123456", ""])
        topic = f"{self.d.topics.root}/{level}/cmd"
        if r.random() < 0.5:
            doc = {"request_id": r.choice(["r1", "", "x" * 200, 5]), "cmd": r.choice(["reset", "status", "set_param",
                                                                                     "selftest", "nope", None]),
                   "param": _json_value(r), "value": _json_value(r), "mask": _json_value(r), "ttl_s": _json_value(r)}
            return topic, json.dumps(doc).encode()
        k = r.random()
        if k < 0.05:
            return topic, b"[" * 5000                       # nested past the JSON parser's depth
        return topic, (json.dumps(_json_value(r)).encode() if k < 0.7 else _mutate(r, b'{"cmd": "reset"}'))

    def _incident(self) -> tuple[str, bytes]:
        r = self.r
        base = "gasguard/v1/d1/command"
        plugin = self.d.plugins[0]
        ids = list(plugin.engine.incidents) or ["none"]
        # "sync" re-publishes every open incident with its report: rare, as from a real command service (once
        # at its start); at 2 % of these inputs the run's time went quadratic with the open incidents
        leaf = "sync" if r.random() < 0.001 else r.choice(["ack/" + r.choice(ids), "input/" + r.choice(ids), "ack",
                                                          "ack/" + r.choice(ids) + "/x", "input/\u2028", "ack/"])
        body = json.dumps(_json_value(r)).encode() if r.random() < 0.8 else r.choice(
            [b"[" * 5000, b"\xff\xfe", b"", b"null", _mutate(r, b'{"by": "op1", "note": "x"}')])
        return f"{base}/{leaf}", body

    # -- running ----------------------------------------------------------------------------------
    def _guard(self, target: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - the point: anything escaping a handler is a finding
            name = f"{target}:{type(e).__name__}"
            self.escaped[name] = self.escaped.get(name, 0) + 1
            if name not in self.first_escape:
                import traceback
                self.first_escape[name] = traceback.format_exc()

    def _drain(self) -> None:
        group = self.d.ingest.queue.take_all()
        group.extend(self.pending)
        self.pending = []
        if group:
            self._guard("process", self.d.process, group)

    def run(self, inputs: int, progress=None) -> dict:
        traps = _Traps()
        logging.getLogger("gasguard").addHandler(traps)
        quiet = logging.getLogger("gasguard").level
        logging.getLogger("gasguard").setLevel(logging.ERROR)     # the fuzz is meant to provoke warnings
        t0 = time.monotonic()
        try:
            plan = [t for t in self.targets for _ in range(int(SHARE[t] * 1000))]
            for i in range(inputs):
                self.t += 0.01
                target = plan[self.r.randrange(len(plan))]
                self.counts[target] += 1
                if target == "serial":
                    for kind, payload in self.deframer.feed(self._serial_bytes()):
                        if kind == framing.FRAME:
                            self.pending.append((payload, self.serial_rx, "serial"))
                        elif kind == framing.NOISE:
                            self.pending.append((None, self.serial_rx, payload))
                elif target == "frame":
                    self.pending.append((self._frame(), self.serial_rx, "serial"))
                elif target == "udp":
                    self._guard("udp", self.udp.datagram_received, self._udp_datagram(), ("127.0.0.1", 1700))
                elif target == "command":
                    self._guard("command", self.d._on_mqtt, *self._command())
                else:
                    self._guard("incident", self.d._on_mqtt, *self._incident())
                if i % GROUP == GROUP - 1:
                    self._drain()
                    if i % 8192 == 8191:
                        self._guard("tick", self.d.tick, self.t)
                        self.d.publisher.flush_acked()
                        if progress:
                            progress(i + 1, time.monotonic() - t0)
            self._drain()
        finally:
            logging.getLogger("gasguard").removeHandler(traps)
            logging.getLogger("gasguard").setLevel(quiet)
        return self._report(inputs, time.monotonic() - t0, traps)

    def _report(self, inputs: int, seconds: float, traps: _Traps) -> dict:
        # the oracle: each accepted frame is a legit one with its sealed fields, and per device the counters
        # strictly rise (no frame twice, no replay); the spool's audit holds only legit device ids
        wrong, last = [], {}
        for f in self.accepted:
            key = (f["dev"], f["fcnt"])
            if self.legit.get(key) != f:
                wrong.append(f"not sealed so: {f}")
            elif f["fcnt"] <= last.get(f["dev"], 0):
                wrong.append(f"accepted again or out of order: {f}")
            last[f["dev"]] = f["fcnt"]
        with sqlite3.connect(self.cfg.spool) as db:
            ids = [m for (m,) in db.execute("SELECT msg_id FROM audit WHERE msg_id NOT LIKE 'gw1:plugin:%' "
                                            "AND msg_id NOT LIKE 'd1-%'")]
        legit_ids = {f"gw1:{dev:08x}:{fcnt}" for dev, fcnt in self.legit}
        wrong += [f"spooled id {i} not legit" for i in ids if i not in legit_ids]
        m = self.d.metrics
        accepted = int(sum(s.value for x in m.accepted.collect() for s in x.samples if s.name.endswith("_total")))
        rejected = {s.labels["reason"]: int(s.value) for x in m.rejected.collect() for s in x.samples
                    if s.name.endswith("_total")}
        if accepted != len(self.accepted):
            wrong.append(f"accepted metric {accepted} != frames the verifier accepted {len(self.accepted)}")
        unexpected = dict(self.escaped)
        for k, v in traps.types.items():
            unexpected[f"caught:{k}"] = unexpected.get(f"caught:{k}", 0) + v
        for reason in ("internal_error", "udp_internal"):
            if rejected.get(reason):
                unexpected[reason] = rejected[reason]
        return {"inputs": inputs, "seconds": round(seconds, 1), "per_target": self.counts,
                "legit_fresh": self.fresh, "accepted": accepted, "rejected": rejected,
                "wrongly_accepted": len(wrong), "wrong_examples": wrong[:5],
                "unexpected": unexpected, "unexpected_examples": {**self.first_escape, **traps.first},
                "security_events": int(m.value("gasguard_gateway_security_events_total", kind="mic_failures")),
                "lane": None if self.d.ingest.lane is None else self.d.ingest.lane.describe(),
                "lane_taken": self.lane_taken,
                "incidents": len(self.d.plugins[0].engine.incidents) if self.d.plugins else 0,
                "open_incidents": len(self.d.plugins[0].engine.open_incidents()) if self.d.plugins else 0}

    def close(self) -> None:
        for p in self.d.plugins:
            p.close()
        self.d.spool.close()
        self.d.registry.close()


def run_fuzz(inputs: int, seed: int = 1, workdir: Path | None = None, progress=None, lane: bool = False,
             compiled: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="gasguard-fuzz-") as tmp:
        f = Fuzz(Path(workdir or tmp), seed, lane=lane, compiled=compiled)
        try:
            return f.run(inputs, progress)
        finally:
            f.close()


def print_report(r: dict, echo=print) -> None:
    echo(f"fuzzed {r['inputs']:,} inputs in {r['seconds']} s ({r['inputs'] / max(r['seconds'], 1e-9):,.0f}/s): "
         + ", ".join(f"{k} {v:,}" for k, v in r["per_target"].items()))
    echo(f"legit frames made {r['legit_fresh']:,}; accepted {r['accepted']:,}; rejected "
         f"{sum(r['rejected'].values()):,} by reason: "
         + ", ".join(f"{k} {v:,}" for k, v in sorted(r["rejected"].items(), key=lambda kv: -kv[1])))
    if r.get("lane"):
        echo(f"reading lane ({r['lane']}): took {r['lane_taken']:,} of the accepted frames")
    echo(f"wrongly accepted: {r['wrongly_accepted']}; unexpected exception types: {len(r['unexpected'])} "
         f"{r['unexpected'] or ''}; MIC security events: {r['security_events']}")
    for name, tb in r.get("unexpected_examples", {}).items():
        echo(f"--- first {name}:\n{tb}")
    for w in r["wrong_examples"]:
        echo(f"--- wrongly accepted: {w}")
