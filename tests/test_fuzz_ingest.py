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
