"""The trip bound (issue 8): the median filter's one sample of delay is given back, so the valve command
comes in the sample at which the debounce, timed from the first raw sample over the threshold, is met;
single-sample spikes and bursts shorter than the debounce still never trip. Same code path as app.sample:
sensing.Channel -> Safety.step(..., gas_raw=channel.raw_value)."""

from gasguard.firmware import bounds, safety, sensing

SAMPLE = 1000
DEBOUNCE = 2000
LOW, HIGH = 8000, 24000      # raw: 0 % LEL and 50 % LEL (> L2 = 25 %)


def run(raws, debounce=DEBOUNCE):
    p = bounds.defaults("household")
    p.update({"debounce_ms": debounce, "sample_ms": SAMPLE})
    s = safety.Safety("household", p)
    ch = sensing.gas_channel({"zero": 8000, "span": 24000, "span_gas": 500})
    closed = None
    for i, raw in enumerate(raws):
        now = i * SAMPLE
        act = s.step(now, ch.update(raw), safety.NO_VALUE, 0, ch.raw_value)
        if act & safety.ACT_CLOSE and closed is None:
            closed = now
    return closed


def test_valve_closes_when_the_debounce_from_the_first_crossing_sample_is_met():
    first = 5
    closed = run([LOW] * first + [HIGH] * 10)
    assert closed == first * SAMPLE + DEBOUNCE      # not one sample later, as the median alone would give


def test_zero_debounce_closes_one_filtered_sample_after_the_step():
    # with no debounce the median's own delay remains (it must see two samples to tell a step from a spike)
    assert run([LOW] * 5 + [HIGH] * 5, debounce=0) == 6 * SAMPLE


def test_spikes_and_bursts_shorter_than_the_debounce_never_trip():
    assert run([LOW] * 5 + [HIGH] + [LOW] * 6) is None
    assert run([LOW] * 5 + [HIGH, HIGH] + [LOW] * 6) is None          # 2 samples = 1 s over, debounce 2 s
    assert run([LOW] * 5 + [HIGH, LOW, HIGH] + [LOW] * 6) is None
    assert run([LOW] * 5 + [HIGH] * 3 + [LOW] * 6) == 7 * SAMPLE      # 3 samples = 2 s over: trips


def test_without_gas_raw_the_old_accounting_holds():
    p = bounds.defaults("household")
    s = safety.Safety("household", p)
    ch = sensing.gas_channel({"zero": 8000, "span": 24000, "span_gas": 500})
    closed = None
    for i, raw in enumerate([LOW] * 5 + [HIGH] * 10):
        if s.step(i * SAMPLE, ch.update(raw), safety.NO_VALUE, 0) & safety.ACT_CLOSE and closed is None:
            closed = i * SAMPLE
    assert closed == 6 * SAMPLE + p["debounce_ms"]
