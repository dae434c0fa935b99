"""Fuzzing stays (issue 12 item 11): 200,000 seeded inputs over the gateway's whole ingest path, in-process
and through the real code (serial deframer, verifier and group commit into a real SQLite spool, the Semtech
UDP handler, the command topic, the incident topics of the grading plugin). No exception may escape a handler
or be caught by the daemon's last-resort handlers, and no frame may be accepted that a node did not seal,
twice, or out of counter order. The 2,000,000-input run is `gasguard bench fuzz`."""

import os

import pytest

from gasguard.tools.bench.fuzz import TARGETS, print_report, run_fuzz

INPUTS = 200_000


@pytest.mark.timeout(600)
def test_fuzz_of_the_whole_ingest_path_finds_no_unexpected_exception_and_no_wrongly_accepted_frame(tmp_path):
    seed = int(os.environ.get("GASGUARD_FUZZ_SEED", "12"))
    r = run_fuzz(INPUTS, seed, workdir=tmp_path)
    print_report(r)
    assert r["inputs"] == INPUTS and all(r["per_target"][t] >= INPUTS // 20 for t in TARGETS), r["per_target"]
    assert r["unexpected"] == {}, "\n".join(r["unexpected_examples"].values())
    assert r["wrongly_accepted"] == 0, r["wrong_examples"]
    # the generator reached deep: legit frames were accepted and every kind of refusal was met
    assert r["accepted"] > 1000
    for reason in ("mic", "replay", "crc", "cobs", "udp_json", "udp_rxpk", "unknown_device", "version"):
        assert r["rejected"].get(reason, 0) > 0, reason


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_fuzz_with_the_reading_lane_on_finds_nothing_either(tmp_path, compiled):
    """The run above has the grading plugin, which turns the reading lane off; a gateway runs without plugins by
    default, its common readings taken by the lane (compiled, or its Python reference). The same generator and
    oracle over that path: with the Python lane before ce79d95 a Semtech datagram's empty frame raised in the
    lane, and ingest refused its whole group as internal_error."""
    r = run_fuzz(100_000, 21, workdir=tmp_path, lane=True, compiled=compiled)
    print_report(r)
    assert r["lane"].startswith("compiled" if compiled else "in Python"), r["lane"]
    assert r["unexpected"] == {}, "\n".join(r["unexpected_examples"].values())
    assert r["wrongly_accepted"] == 0, r["wrong_examples"]
    assert r["lane_taken"] > 500 and r["accepted"] > r["lane_taken"], (r["lane_taken"], r["accepted"])
