"""protocol/vectors.json on both interpreters: CPython and the real MicroPython (WebAssembly port)."""

import hashlib
import hmac
import json
import struct
from pathlib import Path

import pytest

from gasguard.protocol import const, frame, framing, mic
from gasguard.tools.sim import micropython
from gasguard.tools.vectors.check import check

REPO = Path(__file__).resolve().parent.parent
VECTORS = json.loads((REPO / "protocol" / "vectors.json").read_text())


def expected_report():
    return {"valid": [{"name": v["name"], "frame": v["frame"], "wire": v["wire"], "fields": v["decoded"]}
                      for v in VECTORS["valid"]],
            "invalid": [{"name": v["name"], "reason": v["reason"]} for v in VECTORS["invalid"]],
            "identity": [{"name": v["name"], "identity": v["identity"]} for v in VECTORS["identity"]]}


def run_in_micropython():
    files = micropython.device_files(("protocol",)) + [(REPO / "tools" / "vectors" / "check.py", "/lib/vector_check.py")]
    code = ("import json\nimport vector_check\n"
            "v = json.loads(%r)\n" % json.dumps(VECTORS)
            + "print(%r, json.dumps(vector_check.check(v)))\n" % micropython.RESULT_MARK)
    return micropython.run_json(code, files=files)


@pytest.mark.parametrize("interpreter", ["cpython", pytest.param("micropython", marks=pytest.mark.micropython)])
def test_every_vector_gives_the_expected_bytes(interpreter):
    report = check(VECTORS) if interpreter == "cpython" else run_in_micropython()
    want = expected_report()
    assert len(report["valid"]) == len(want["valid"]) >= 15
    for got, exp in zip(report["valid"], want["valid"]):
        assert got["frame"] == exp["frame"], f"{interpreter}: {exp['name']}"
        assert got["wire"] == exp["wire"], f"{interpreter}: {exp['name']}"
        assert got["fields"] == exp["fields"], f"{interpreter}: {exp['name']}"
    for got, exp in zip(report["invalid"], want["invalid"]):
        assert got["reason"] == exp["reason"], f"{interpreter}: {exp['name']}"
    assert report["identity"] == want["identity"] and len(want["identity"]) >= 6   # SPEC 3.4 alarm identity
    print(f"{interpreter}: {len(report['valid'])} valid and {len(report['invalid'])} invalid vectors as expected")


def test_mic_matches_an_independent_hmac():
    """The MIC of every valid vector, recomputed from SPEC 5 with the stdlib (not protocol.mic)."""
    for v in VECTORS["valid"]:
        raw = bytes.fromhex(v["frame"])
        b0 = b"GG" + struct.pack(">BBI", 1, v["direction"], v["fields"]["fcnt"])
        tag = hmac.new(bytes.fromhex(v["key"]), b0 + raw[:-6], hashlib.sha256).digest()[:6]
        assert raw[-6:] == tag, v["name"]


def test_signed_household_reading_fits_the_lora_budget():
    raw = bytes.fromhex(VECTORS["valid"][0]["frame"])
    assert len(raw) == 19 <= 23
    # with transparent-modem framing too (SPEC 7: trailing delimiter only on air)
    assert len(framing.wrap(raw)) - 1 == 23
    station = bytes.fromhex(VECTORS["valid"][3]["frame"])
    assert len(station) == 21 <= 23
    for v in VECTORS["valid"]:
        assert len(bytes.fromhex(v["frame"])) <= 23, v["name"]


def test_mic_compare_is_constant_time_on_cpython():
    assert mic.equal is hmac.compare_digest


def test_flipping_any_bit_of_a_frame_is_caught():
    key = bytes.fromhex(VECTORS["valid"][0]["key"])
    good = bytes.fromhex(VECTORS["valid"][0]["frame"])
    for i in range(len(good) * 8):
        bad = bytearray(good)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(frame.ProtocolError):
            frame.open_frame(bytes(bad), key, const.UP, 0)
