# The node's link: protocol v1 frames over a UART (wired serial or a LoRa modem in transparent mode).
#
# - Bounded transmit queues with priority alarm > event > reading. Readings are the only thing ever
#   dropped (oldest first, counted in .dropped_readings); a newer alarm or event of the same kind
#   supersedes an unacked older one, which bounds those queues without losing the current state. Alarms and events that need an ack are
#   retransmitted with capped exponential backoff until the gateway acks them (SPEC 3.4: every copy gets a
#   new frame counter, the same aseq/eseq).
# - aseq/eseq are not a counter of their own: each is the low byte of the frame counter of the alarm's (event's)
#   first transmission, so its identity (that full counter, SPEC 3.4) is never reused, across power cuts
#   included, and costs no flash write (a sequence persisted only with each counter block resumed from an
#   old value after a power cut, and the gateway took the next new alarm for a retransmission: issue 12).
# - Uplink counters come from protocol.counter.CounterReservation; a new ceiling is persisted BEFORE the
#   first counter of its block goes on air (SPEC 4), so a counter is never reused after a reboot.
# - Downlink frames are verified (MIC, replay window) and the accepted counter is persisted BEFORE the
#   command is acted on, so a replay after a reboot is still refused.
# - Never blocks: reads only what uart.any() says is there (bounded per call) and writes a bounded
#   number of frames per call.

from gasguard.firmware import ticks
from gasguard.protocol import const, counter, frame, framing
from gasguard.protocol.errors import ProtocolError

RETX_FIRST_MS = 2000
RETX_CAP_MS = 60000
MAX_ALARMS = 16       # one per (code, cleared): a newer copy supersedes, so an alarm is never dropped
MAX_EVENTS = 16       # one per (code, first data byte): a newer copy supersedes; the cap is a last resort
MAX_ACKS = 4          # answers to commands; a gateway that misses one repeats the command
MAX_READINGS = 4
RX_CHUNK = 128        # bytes read per poll
TX_BURST = 3          # frames written per pump


class _Out:
    """One queued uplink: its fields, whether it waits for an ack, and when it is next due."""

    def __init__(self, fields, ack, due):
        self.fields = fields
        self.ack = ack
        self.due = due
        self.tries = 0


class Link:
    def __init__(self, uart, dev, key, store, log=None):
        self.uart = uart
        self.dev = dev
        self.key = key
        self.store = store
        self.log = log
        st = store.state
        self.counter = counter.CounterReservation(int(st.get("up_ceiling", 0)), const.COUNTER_BLOCK)
        self.down_last = int(st.get("down_last", 0))
        self.alarms = []
        self.events = []
        self.acks = []
        self.readings = []
        self.deframer = framing.Deframer()
        self.dropped_readings = 0
        self.dropped_events = 0
        self.dropped_acks = 0
        self.superseded = 0
        self.reidentified = 0  # queued alarms/events given a new identity: their low byte met a newer one's
        self.sent = 0
        self.retransmits = 0
        self.refused = {}      # downlink refusals by reason (mic, replay, ...)
        self.tx_bytes = 0

    def _say(self, msg):
        if self.log is not None:
            self.log(msg)

    # ---- uplink queueing ----
    def alarm(self, now, code, cleared, age, value, state):
        # aseq None: set from the counter of the first transmission (_send)
        f = {"type": "alarm", "dev": self.dev, "code": code, "cleared": cleared, "aseq": None,
             "age": age, "value": value, "state": state}
        for i in range(len(self.alarms)):
            o = self.alarms[i].fields
            if o["code"] == code and o["cleared"] == cleared:
                self.alarms.pop(i)
                break
        if len(self.alarms) >= MAX_ALARMS:
            # cannot happen with 8 codes x 2 states; keep the newest rather than silently losing it
            self.alarms.pop(0)
        self.alarms.append(_Out(f, True, now))

    def event(self, now, code, data=b"", ack=True):
        data = bytes(data)
        f = {"type": "event", "dev": self.dev, "code": code, "eseq": None, "data": data}
        first = data[0] if data else -1
        for i in range(len(self.events)):
            o = self.events[i].fields
            if o["code"] == code and (o["data"][0] if o["data"] else -1) == first:
                self.events.pop(i)  # the newer event of this kind carries the current state
                self.superseded += 1
                break
        if len(self.events) >= MAX_EVENTS:
            self.events.pop(0)
            self.dropped_events += 1
        self.events.append(_Out(f, ack, now))

    def ack(self, now, ref_type, ref, result):
        f = {"type": "ack", "dev": self.dev, "ref_type": ref_type, "ref": ref, "result": result}
        # answers to commands go ahead of events and are never acked themselves
        if len(self.acks) >= MAX_ACKS:
            self.acks.pop(0)
            self.dropped_acks += 1
        self.acks.append(_Out(f, False, now))

    def reading(self, now, gas, pressure, battery, state, inlet=-1):
        f = {"type": "reading", "dev": self.dev, "gas": None if gas < 0 else min(gas, 1000),
             "pressure": None if pressure < 0 else pressure,
             "battery": None if battery < 0 else battery, "state": state}
        if inlet != -1:
            f["inlet"] = None if inlet < 0 else inlet
        if len(self.readings) >= MAX_READINGS:
            self.readings.pop(0)
            self.dropped_readings += 1
        self.readings.append(_Out(f, False, now))

    def pending(self):
        return len(self.alarms) + len(self.acks) + len(self.events) + len(self.readings)

    # ---- transmit ----
    def _next_counter(self):
        c = self.counter
        if c.need_persist():
            ceiling = c.new_ceiling()
            self.store.save(up_ceiling=ceiling)
            c.persisted(ceiling)
        return c.take()

    def _identify(self, out, fc):
        """First transmission of an alarm or event: its aseq/eseq is the low byte of this counter (SPEC 3.4).
        Acks name only that byte, so a queued one with the same byte (first sent 256 or more counters ago and
        still unacked) takes a new identity at its next copy: the gateway may publish it once more, but an ack
        meant for one can never retire the other."""
        f = out.fields
        if f["type"] == "alarm":
            key, q = "aseq", self.alarms
        elif f["type"] == "event":
            key, q = "eseq", self.events
        else:
            return
        if f[key] is not None:
            return
        seq = fc & 0xFF
        for o in q:
            if o is not out and o.fields[key] == seq:
                o.fields[key] = None
                self.reidentified += 1
        f[key] = seq

    def _send(self, out):
        f = out.fields
        fc = self._next_counter()
        f["fcnt"] = fc
        self._identify(out, fc)
        raw = frame.seal(f, self.key, const.UP)
        data = framing.wrap(raw)
        self.uart.write(data)
        self.tx_bytes += len(data)
        self.sent += 1
        if out.tries:
            self.retransmits += 1
        out.tries += 1

    def pump(self, now):
        """Write up to TX_BURST due frames. Returns how many were written."""
        n = 0
        for q in (self.alarms, self.acks, self.events, self.readings):
            i = 0
            while i < len(q) and n < TX_BURST:
                out = q[i]
                if not ticks.reached(now, out.due):
                    i += 1
                    continue
                self._send(out)
                n += 1
                if out.ack:
                    back = RETX_FIRST_MS << (out.tries - 1) if out.tries < 8 else RETX_CAP_MS
                    out.due = ticks.add(now, min(back, RETX_CAP_MS))
                    i += 1
                else:
                    q.pop(i)
            if n >= TX_BURST:
                break
        return n

    # ---- receive ----
    def poll(self, now):
        """Read what the UART has (never waits); returns the verified downlink commands as field dicts."""
        avail = self.uart.any()
        if not avail:
            return []
        data = self.uart.read(min(avail, RX_CHUNK))
        if not data:
            return []
        cmds = []
        for kind, payload in self.deframer.feed(data):
            if kind != framing.FRAME:
                continue
            try:
                f = frame.decode(payload)
                if f["dev"] != self.dev:
                    continue  # another node's frame on a shared line
                if f["type"] != "command" and f["type"] != "ack":
                    raise ProtocolError("type", "not a downlink frame type")
                fc = frame.verify(payload, f, self.key, const.DOWN, self.down_last)
            except ProtocolError as e:
                r = e.reason
                self.refused[r] = self.refused.get(r, 0) + 1
                self._say("link: refused a downlink frame: %s" % r)
                continue
            # persist before acting: a reboot must not make this counter acceptable again
            self.store.save(down_last=fc)
            self.down_last = fc
            f["fcnt"] = fc
            if f["type"] == "ack":
                self._acked(f["ref_type"], f["ref"])
            else:
                cmds.append(f)
        return cmds

    def _acked(self, ref_type, ref):
        if ref_type == const.ALARM:
            q = self.alarms
            key = "aseq"
        elif ref_type == const.EVENT:
            q = self.events
            key = "eseq"
        else:
            return
        for i in range(len(q)):
            o = q[i]
            if o.ack and o.fields.get(key) == ref:
                q.pop(i)
                return
