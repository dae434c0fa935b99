"""Sensing: calibration, the one-sample filter bound, and fault detection (a dead sensor is never zero gas)."""

import json

import pytest

from gasguard.firmware import sensing
from gasguard.protocol import const
from gasguard.tools.sim import micropython


def gas():
    return sensing.gas_channel({"zero": 8000, "span": 24000, "span_gas": 500})


def test_gas_calibration_zero_and_span():
    ch = gas()
    for _ in range(3):
        ch.update(8000)
    assert ch.value == 0 and ch.fault == 0
    for _ in range(3):
        ch.update(24000)
    assert ch.value == 500
    for _ in range(3):
        ch.update(16000)
    assert ch.value == 250


def test_step_is_delayed_by_at_most_one_sample_and_a_spike_is_rejected():
    ch = gas()
    seen = [ch.update(r) for r in (8000, 8000, 8000, 24000, 24000, 24000)]
    assert seen[3] == 0 and seen[4] == 500  # the step shows on the second sample after it
    ch2 = gas()
    seen = [ch2.update(r) for r in (8000, 8000, 24000, 8000, 8000)]
    assert max(seen) == 0  # a single-sample spike never reaches the safety logic


@pytest.mark.parametrize("raw,kind", [(0, const.FAULT_OPEN), (65535, const.FAULT_SHORT), (6000, const.FAULT_RANGE)])
def test_gas_faults_give_no_value(raw, kind):
    ch = gas()
    ch.update(8000)
    assert ch.update(raw) == sensing.NO_VALUE or kind == const.FAULT_RANGE
    for _ in range(3):
        v = ch.update(raw)
    assert v == sensing.NO_VALUE
    assert ch.fault == kind


def test_stuck_value_is_a_fault():
    ch = sensing.gas_channel({"zero": 8000, "span": 24000, "span_gas": 500, "stuck": 50})
    for i in range(49):
        ch.update(8000)
    assert ch.fault == 0
    ch.update(8000)
    assert ch.fault == const.FAULT_STUCK and ch.value == sensing.NO_VALUE
    ch.update(8001)
    assert ch.fault == 0


def test_over_range_is_clamped_flag_not_fault():
    ch = gas()
    for _ in range(3):
        ch.update(50000)
    assert ch.fault == 0 and ch.over == 1 and ch.value > 1000


def test_pressure_ratiometric_and_4_20():
    ch = sensing.pressure_channel({"kind": "ratiometric", "full_scale": 10000})
    for _ in range(3):
        ch.update(6619)
    assert ch.value == 0
    for _ in range(3):
        ch.update(59578)
    assert abs(ch.value - 10000) <= 5  # within 0.05 % FS (transducers: ~0.25 % FS)
    for _ in range(3):
        ch.update((6619 + 59578) // 2)
    assert abs(ch.value - 5000) <= 2
    big = sensing.pressure_channel({"kind": "4-20mA", "full_scale": 4000000})
    for _ in range(3):
        big.update(59578)
    assert abs(big.value - 4000000) <= 2000
    for _ in range(3):
        big.update(100)
    assert big.fault == const.FAULT_OPEN and big.value == sensing.NO_VALUE


def test_bad_calibration_says_what_is_wrong():
    with pytest.raises(ValueError, match="span"):
        sensing.gas_channel({"zero": 9000, "span": 8000, "span_gas": 500})
    with pytest.raises(ValueError, match="ratiometric or 4-20mA"):
        sensing.pressure_channel({"kind": "0-10V", "full_scale": 1})


@pytest.mark.micropython
def test_same_results_and_no_allocation_in_micropython():
    code = '''
import gc, json
from gasguard.firmware import sensing
g = sensing.gas_channel({"zero": 8000, "span": 24000, "span_gas": 500})
p = sensing.pressure_channel({"kind": "4-20mA", "full_scale": 4000000})
def run(n):
    gc.collect(); gc.disable()
    a = gc.mem_alloc()
    i = 0
    while i < n:
        g.update(8000 + (i & 1023) * 15)
        p.update(11916 + (i & 4095) * 11)
        i += 1
    d = gc.mem_alloc() - a
    gc.enable()
    return d
run(10)
alloc = run(5000)
g = sensing.gas_channel({"zero": 8000, "span": 24000, "span_gas": 500})
vals = []
for r in (8000, 8000, 16000, 16000, 16000):
    vals.append(g.update(r))
for r in (59578, 59578, 59578):
    p.update(r)
print("@@RESULT@@", json.dumps({"alloc": alloc, "vals": vals, "p": p.value}))
'''
    r = micropython.run_json(code)
    assert r["alloc"] == 0
    assert r["vals"] == [0, 0, 0, 250, 250]
    assert abs(r["p"] - 4000000) <= 2000
