"""The safety state machine: one table of vectors under CPython AND in real MicroPython; zero allocation."""

import json
from pathlib import Path

import pytest

from gasguard.tools.sim import micropython

REPO = Path(__file__).resolve().parent.parent
VECTORS = json.loads((REPO / "firmware" / "safety_vectors.json").read_text())

# The same runner source is executed by CPython and by MicroPython, so both see identical inputs.
RUNNER = '''
from gasguard.firmware import bounds, safety

def run_vectors(cases):
    out = []
    for case in cases:
        p = bounds.defaults(case["profile"])
        p.update(case["params"])
        s = safety.Safety(case["profile"], p, latched=case.get("latched", False), latch_cause=4)
        obs = []
        for st in case["steps"]:
            act = s.step(st["t"], st["gas"], st["p"], st["f"])
            o = {"act": act, "level": s.level, "valve": s.valve, "latched": s.latched,
                 "raised": s.raised, "cleared": s.cleared, "state": s.state_byte(), "reset": -1, "reset_act": -1}
            if st.get("reset"):
                r, ra = s.reset()
                o["reset"] = r
                o["reset_act"] = ra
                o["valve"] = s.valve
                o["latched"] = s.latched
            obs.append(o)
        out.append(obs)
    return out
'''


def _check(observed):
    assert len(observed) == len(VECTORS["cases"])
    for case, obs in zip(VECTORS["cases"], observed):
        assert len(obs) == len(case["steps"]), f"{case['name']}: {len(obs)} of {len(case['steps'])} steps ran"
        for i, (st, o) in enumerate(zip(case["steps"], obs)):
            got = {k: o[k] for k in st["expect"]}
            assert got == st["expect"], f"{case['name']}, step {i}: {got} != {st['expect']}"


def test_vectors_cpython():
    ns = {}
    exec(RUNNER, ns)
    _check(ns["run_vectors"](VECTORS["cases"]))


@pytest.mark.micropython
def test_vectors_micropython():
    code = (RUNNER + "\nimport json\n"
            f"cases = json.loads({json.dumps(VECTORS['cases'])!r})\n"
            f"print({micropython.RESULT_MARK!r}, json.dumps(run_vectors(cases)))\n")
    _check(micropython.run_json(code, files=micropython.device_files()))


ALLOC = '''
import gc, json
from gasguard.firmware import bounds, safety
p = bounds.defaults("household")
s = safety.Safety("household", p)
step = s.step
# warm up: every branch once (alarm, trip, clear) so that the steady state is what is measured
for t in range(0, 5000, 100):
    step(t, 300, 2000, 0)
s.step(6000, 0, 2000, 0)

def measure(n):
    t = 0
    i = 0
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    while i < n:
        g = 300 if (i & 64) else 40
        step(t, g, 2000, 0)
        t = (t + 100) & 0x3FFFFFFF
        i += 1
    a1 = gc.mem_alloc()
    gc.enable()
    return a1 - a0

measure(10)  # first run: the loop's own locals and code paths
alloc = measure(10000)
print("@@RESULT@@", json.dumps({"alloc": alloc, "valve": s.valve}))
'''


@pytest.mark.micropython
def test_safety_step_allocates_nothing_in_micropython():
    r = micropython.run_json(ALLOC, files=micropython.device_files())
    assert r["valve"] == 1  # the loop really exercised a trip
    assert r["alloc"] == 0, f"{r['alloc']} bytes allocated over 10,000 steps"
