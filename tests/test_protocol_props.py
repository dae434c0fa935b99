"""Property tests: every frame type round-trips; arbitrary bytes raise only ProtocolError."""

from hypothesis import given, settings, strategies as st

from gasguard.protocol import ProtocolError, const, frame, framing, units
from gasguard.protocol.counter import CounterReservation, forward

KEY = bytes(range(16))
dev = st.integers(1, 0xFFFFFFFE)
fcnt = st.integers(1, 0xFFFFFFFF)  # counters start at 1 (SPEC 4)
u8 = st.integers(0, 255)
gas = st.one_of(st.none(), st.integers(0, 1000))
# pressures that the encoding represents exactly: 1 Pa steps below 32,768, 125 Pa steps above
pressure = st.one_of(st.none(), st.integers(0, 32767), st.integers(263, 0x7FFE).map(lambda n: n * 125))
battery = st.one_of(st.none(), st.integers(0, 100))
blob = st.binary(max_size=8)

readings = st.fixed_dictionaries({"type": st.just("reading"), "dev": dev, "fcnt": fcnt, "gas": gas,
                                  "pressure": pressure, "battery": battery, "state": u8},
                                 optional={"inlet": pressure})
alarms = st.builds(lambda d, f, c, cl, a, age, v, s, pv: {
    "type": "alarm", "dev": d, "fcnt": f, "code": c, "cleared": cl, "aseq": a, "age": age,
    "value": pv if c in (const.AL_OPSO, const.AL_UPSO) else v, "state": s},
    dev, fcnt, st.integers(1, 127), st.booleans(), u8, st.integers(0, 65535), st.integers(0, 65535), u8, pressure)
events = st.fixed_dictionaries({"type": st.just("event"), "dev": dev, "fcnt": fcnt, "code": u8, "eseq": u8,
                                "data": blob})
commands = st.fixed_dictionaries({"type": st.just("command"), "dev": dev, "fcnt": fcnt, "cmd": u8, "cid": u8,
                                  "args": blob})
acks = st.fixed_dictionaries({"type": st.just("ack"), "dev": dev, "fcnt": fcnt, "ref_type": u8, "ref": u8,
                              "result": u8})
any_frame = st.one_of(readings, alarms, events, commands, acks)


@given(any_frame, st.sampled_from([const.UP, const.DOWN]))
@settings(max_examples=400)
def test_every_frame_type_round_trips(fields, direction):
    raw = frame.seal(fields, KEY, direction)
    assert len(raw) <= 23
    last = max(0, fields["fcnt"] - 1)
    got = frame.open_frame(raw, KEY, direction, last)
    for k, v in fields.items():
        if k == "inlet" and v is None:
            assert got["inlet"] is None
        else:
            assert got[k] == v, k
    # and through the serial framing
    (kind, payload), = framing.Deframer().feed(framing.wrap(raw))
    assert kind == framing.FRAME and payload == raw


@given(st.binary(max_size=40), st.integers(0, 0xFFFFFFFF))
@settings(max_examples=2000)
def test_arbitrary_bytes_raise_only_protocol_error(data, last):
    for fn in (frame.decode, framing.unwrap, framing.cobs_decode):
        try:
            fn(data)
        except ProtocolError:
            pass
    try:
        frame.open_frame(data, KEY, const.UP, last)
    except ProtocolError:
        pass


@given(st.lists(st.binary(max_size=300), max_size=5))
def test_deframer_takes_any_stream_and_stays_bounded(chunks):
    d = framing.Deframer()
    for c in chunks:
        for kind, payload in d.feed(c):
            assert kind in (framing.FRAME, framing.TEXT, framing.NOISE)
        assert len(d.buf) <= d.max_segment


@given(st.integers(0, units.P_MAX))
def test_pressure_resolution(pa):
    back = units.pressure_from_wire(units.pressure_to_wire(pa))
    if pa <= units.P_FINE_MAX:
        assert back == pa
    else:
        assert abs(back - pa) <= 63


@given(st.integers(0, 0xFFFFFFFF - 20000), st.integers(1, const.MAX_GAP))
def test_counter_reconstruction_from_16_bits(last, step):
    sent = last + step
    assert forward(sent & 0xFFFF, last) == sent


def test_counter_block_is_never_reused_across_reboots():
    stored = 0
    used = set()
    for boot in range(20):
        r = CounterReservation(stored, const.COUNTER_BLOCK)
        for i in range(37 * boot % 300):
            if r.need_persist():
                stored = r.new_ceiling()   # "flash write" happens before the counter is used
                r.persisted(stored)
            n = r.take()
            assert n not in used
            used.add(n)
    assert min(used) == 1
