"""The reading lane: ingest's path for the common frame, in one function (issue 17).

Nearly every frame a gateway hears is a routine reading of a known device at its next counter. The general
path (verify.Verifier.check -> accept, payloads.reading_json, presence.heard) handles every frame and names
every rejection, at ~15 Python calls a frame. This lane does the same work for that one common case in one
call: the checks of `Verifier._reading` (MIC at the next counter, rate bucket), `Verifier.accept` (counter and
replay memory), the entry JSON of `payloads.reading_json` (written from pre-encoded parts, same text) and
`PresenceTable.heard`. A reading whose retained state falls due (the device back online, a new state byte, the
refresh) is taken too, and says so: ingest marks the state due (`PresenceTable.published`) where heard would have.
So is a device's first reading (since the fourteenth pass: in-process a first sighting took ~93 µs through the
general path, ~51 µs through the lane): the lane makes its replay state and presence (`Verifier.state`,
`PresenceTable.first_heard`) once nothing can refuse it, and its state falls due. Anything else - another frame
type, an unknown or decommissioned device, a MIC that fails, an empty rate bucket - returns None having changed
nothing, and the general path decides, as it always did.

tests/test_fastlane.py holds the two paths equal, frame by frame: the same verdicts, counters, replay memory,
rate buckets, presence and entry text.

The same lane is compiled (gateway/_lane.c, built with the package; issue 17): `take` is the C one where the module
was built, this Python one where it was not (`compiled` says which). The Python lane stays the reference: the test
holds both equal to the general path. `run` is ingest's loop over the frames the lane takes (their undo entries,
counters, routes and row texts), compiled too, so Python steps in only at a frame the lane declines.
"""

from __future__ import annotations

import orjson

from gasguard.protocol.const import FLAG_INLET, MAX_FCNT, MAX_GAP, MIC_LEN, NA16
from gasguard.protocol.units import pressure_from_wire

from . import payloads
from .presence import PresenceTable
from .verify import _B0_HEAD, _R, _READING_HDR, _READING_LEN, _REC, _RI, PADS_MAX, RECENT, mic_at_next

try:
    from . import _lane
except ImportError:         # not built (no C compiler where the package was installed): the Python lane
    _lane = None

_RECENT_BYTES = RECENT * _REC
_INLET_HDR = _READING_HDR | FLAG_INLET

# JSON text of each field value, made once (hot path): what orjson writes for the value payloads.reading_json
# puts there, so the entry's text is the same (the state: its byte, gasguard.readings/3)
_STATE_TXT = [str(b) for b in range(256)]
_GAS_TXT = {g: orjson.dumps(g / 10.0).decode() for g in range(1001)}
_GAS_TXT[NA16] = "null"
_BATTERY_TXT = {b: str(b) for b in range(101)}
_BATTERY_TXT[0xFF] = "null"


def _pressure_txt(u: int) -> str:
    return orjson.dumps(pressure_from_wire(u)).decode()


def add_to_run(rs: list, js: str, routine: bool, dev: int, mid: str, most: int, room: int, flush) -> None:
    """A reading's row text into the run being gathered (rs = [texts, bytes, routine, head dev, head msg id]):
    flush() ends the run first when this text would change its routine or pass `most` texts or `room` bytes.
    (The compiled Lane.run keeps the same rule.)"""
    texts = rs[0]
    if texts and (routine is not rs[2] or len(texts) >= most or rs[1] + len(js) + 1 > room):
        flush()
        texts = rs[0]
    if not texts:
        rs[1:] = [0, routine, dev, mid]
    texts.append(js)
    rs[1] += len(js) + 1


class ReadingLane:
    """Bound to one ingest's verifier and presence table; `run` takes the lane's frames of a group, `take` one."""

    def __init__(self, verifier, presence, compiled: bool = True):
        """`compiled`: the C lane when the module was built (else, and with False, this one)."""
        self.verifier, self.presence = verifier, presence
        self.compiled = compiled and _lane is not None
        if self.compiled:
            c = _lane.Lane(verifier, presence, gas_txt=_GAS_TXT, battery_txt=_BATTERY_TXT, state_txt=_STATE_TXT,
                           pressure_from_wire=pressure_from_wire, pressure_txt=_pressure_txt, header=_READING_HDR,
                           inlet_flag=FLAG_INLET, recent=RECENT, b0_head=_B0_HEAD, pads_max=PADS_MAX,
                           layout=(_READING_LEN, MIC_LEN, NA16, _REC), max_gap=MAX_GAP, max_fcnt=MAX_FCNT)
            self.take, self.run = c.take, c.run
        else:       # (the C lane keeps its own)
            self.pressure_txt: dict[int, str] = {}     # wire value -> JSON text, filled as values are seen
            #                                            (bounded: 65,536 values at most)

    def describe(self) -> str:
        """Which lane runs, for the start log (without the compiled lane a reading takes ~3x the CPU in the lane:
        `gasguard bench lane`, BENCHMARKS.md, issue 17)."""
        if self.compiled:
            return "compiled, " + ("SHA extensions" if _lane.SHA_EXTENSIONS else "portable SHA-256")
        if _lane is None:
            return ("in Python: gasguard.gateway._lane is not built (reinstall the package where a C compiler and "
                    "Python's headers are installed)")
        return "in Python"

    def run(self, group: list, i: int, now: float, shared: tuple, rx: dict, undo: list, counters: dict, routes: list,
            rs: list, states: list, most: int, room: int, flush, published, up: int) -> int:
        """Ingest._prepare's loop over the lane's frames, from group[i] on (the C lane's `run` does the same in one
        call, ~1-2 µs a reading less of Python): each frame of the transport's `rx` that take() takes gets its
        undo entry, counter, route, its text in the run being gathered (rs = [texts, bytes, routine, head dev,
        head msg id], ended by flush() past `most` texts or `room` bytes or at a change of routine) and, when its
        state falls due, what published(dev, state byte) returns, appended to `states` (ingest: the device). Returns the index of the first frame it
        did not take (noise, another rx, a frame take() declines): the Python loop goes on from there."""
        take, n = self.take, len(group)
        while i < n:
            raw, frx, route = group[i]
            if frx is not rx or type(raw) is not bytes:
                break
            r = take(raw, now, shared)
            if r is None:
                break
            dev, fcnt, prev, mid, js, routine, due = r
            undo.append((dev, prev))
            counters[(dev, up)] = fcnt
            routes.append((dev, route, rx))
            add_to_run(rs, js, routine, dev, mid, most, room, flush)
            if due is not None:
                states.append(published(dev, due))
            i += 1
        return i

    def group(self, gateway_id: str, now: float, rx: dict) -> tuple:
        """What every frame of a group shares: the msg id's head, the time (its JSON and replay-memory
        forms) and the rx JSON (for the transport's rx dict of this group)."""
        return (f"{gateway_id}:", orjson.dumps(round(now, 3)).decode(), (int(now) & 0xFFFFFFFF).to_bytes(4, "little"),
                orjson.dumps(payloads.rx_cell(rx), option=orjson.OPT_NON_STR_KEYS).decode())

    def take(self, raw: bytes, now: float, shared: tuple):
        """A reading taken: (dev, fcnt, previous counter, msg id, entry JSON, routine, due): `due` is the reading's
        state byte when the device's retained state falls due with it (the caller publishes it:
        PresenceTable.published), else None. None: not this lane's frame; nothing was changed."""
        n = len(raw)
        if n == _READING_LEN and raw[0] == _READING_HDR:     # (the length first: an empty frame has no header)
            _h, dev, c16, g, p, bat, st = _R.unpack_from(raw)
            iw = None
        elif n == _READING_LEN + 2 and raw[0] == _INLET_HDR:
            _h, dev, c16, g, p, bat, st, iw = _RI.unpack_from(raw)
        else:
            return None
        if (g > 1000 and g != NA16) or (bat > 100 and bat != 0xFF) or dev == 0 or dev == 0xFFFFFFFF:
            return None
        verifier = self.verifier
        cache = verifier.registry.cached            # the LRU, kept fresh by the group's prefetch
        device = cache.get(dev)
        if device is None or not device.active:
            return None
        cache.move_to_end(dev)                      # the LRU's order, as RegistryCache.get keeps it
        # None: the device's first frame since the gateway started with an empty spool; its state is made once the
        # reading is accepted, and its counter so far is 0, as the general path takes it
        sta = verifier.states.get(dev)
        last = 0 if sta is None else sta.up
        fcnt = mic_at_next(device.key, raw, n, c16, last)
        if fcnt is None:
            return None
        tag = raw[n - MIC_LEN:]
        # the rate bucket (Verifier._take_token; full before a device's first reading): an empty one is the general
        # path's rejection to name
        if sta is None or sta.tokens is None:
            tokens = verifier.burst
        else:
            tokens = min(verifier.burst, sta.tokens + (now - sta.t_bucket) * verifier.rate)
        if tokens < 1.0:
            return None
        # presence (PresenceTable.heard). Nothing refuses the reading past the rate bucket: a device heard for the
        # first time gets its presence here (its silence, counted as heard), and its state falls due
        pr = self.presence.devices.get(dev)
        if pr is None or not pr.silence:
            pr = self.presence.first_heard(dev, device)
        due = st if PresenceTable.falls_due(pr, st, now) else None
        # accepted: from here on every change the general path would make
        if sta is None:
            sta = verifier.state(dev)
        sta.tokens, sta.t_bucket = tokens - 1.0, now
        sta.up = fcnt
        r = sta.recent + fcnt.to_bytes(4, "little") + tag + shared[2]
        sta.recent = r[-_RECENT_BYTES:]
        inlet = None if iw is None else pressure_from_wire(iw)
        pr.last_seen = now
        pr.r_fcnt, pr.r_gas, pr.r_pressure, pr.r_battery, pr.r_state, pr.r_inlet, pr.r_t = (
            fcnt, None if g == NA16 else g, pressure_from_wire(p), None if bat == 0xFF else bat, st, inlet, now)
        mid = f"{shared[0]}{dev:08x}:{fcnt}"
        pt = self.pressure_txt.get(p)
        if pt is None:
            pt = self.pressure_txt[p] = _pressure_txt(p)
        js = (f'["{dev:08x}",{fcnt},{shared[1]},{_GAS_TXT[g]},{pt},{_BATTERY_TXT[bat]},{_STATE_TXT[st]},'
              f'{shared[3]}')
        if inlet is not None:
            js += f',{orjson.dumps(inlet).decode()}]'
        else:
            js += "]"
        return dev, fcnt, last, mid, js, (st & 0xF8) == 0, due
