"""Authority end to end (issue 14): the node's real firmware, latched shut after a leak whose gas has
cleared, behind the real gateway process and a real mosquitto. An operator's signed reset is refused by
the gateway (wrong role) and the valve stays shut; an engineer's signed reset reaches the node and re-opens
it; the same request replayed is refused. While the gas is still there the firmware itself refuses the
reset (its own safety rule stays). Every act and refusal is in the gateway's audit log, whose chain verifies.
"""

from gasguard.authority import audit as A
from hil_gateway import run_until
from test_hil_gateway import board_gas, stack, trip_and_wait  # noqa: F401  (the stack fixture)


def _results(sub):
    return {d["request_id"]: d for d in sub.on("/cmd/result")}


def _wait_result(board, sub, rid, what):
    return run_until(board, lambda: _results(sub).get(rid), what, board_ms=60_000, wall_s=60)


def test_only_an_engineers_signed_reset_reopens_a_latched_node(stack):  # noqa: F811
    board, gw, sub = stack
    trip_and_wait(board, sub, "the leak alarm and its incident")
    run_until(board, lambda: board.rig.valve() == 1, "the valve shut on the leak")
    # gas still there: the gateway lets the engineer's reset through, the firmware refuses to re-open
    gw.command(sub, board.dev, "while-gas", "reset", by="eng")
    assert _wait_result(board, sub, "while-gas", "the node's answer")["result"] == "refused"
    assert board.rig.valve() == 1
    board.rig.set_inputs(gas=board_gas(board, 0))
    board.rig.elapse(10_000)
    # an operator may acknowledge incidents but not re-open gas: refused at the gateway, the node never asked
    gw.command(sub, board.dev, "by-operator", "reset", by="op")
    r = _wait_result(board, sub, "by-operator", "the refusal of the operator's reset")
    assert r["result"] == "rejected" and r["reason"] == "wrong_role" and "engineer" in r["detail"]
    board.rig.elapse(5_000)
    assert board.rig.valve() == 1, "an operator's reset re-opened the valve"
    # the engineer's reset, now that the gas has cleared, re-opens it
    raw = gw.command(sub, board.dev, "by-engineer", "reset", by="eng")
    r = _wait_result(board, sub, "by-engineer", "the engineer's reset acked by the node")
    assert r["result"] == "ok" and r["operator"] == "eng"
    run_until(board, lambda: board.rig.valve() == 0, "the valve re-opened by the engineer's reset")
    # the same signed request again (captured off the broker): refused, whoever sends it
    n = len(sub.on("/cmd/result"))
    sub.c.publish(f"gasguard/v1/lixia/hil-gw/{board.dev:08x}/cmd", raw, qos=1).wait_for_publish(5)
    again = run_until(board, lambda: sub.on("/cmd/result")[n:], "the replay's refusal")
    assert again[0]["reason"] == "replayed" and again[0]["request_id"] == "by-engineer"
    # the gateway's record: who asked, what was refused and why, what the node answered
    recs = [r for r in A.show(gw.dir / "audit", category="command")]
    seen = [(r["type"], r["outcome"], r["source"].get("operator"), r["reason"].split(":")[0]) for r in recs]
    assert ("reset", "allowed", "eng", "") in seen and ("reset", "refused", "op", "wrong_role") in seen
    outcomes = [r["detail"].get("result") for r in recs if r["outcome"] in ("done", "failed")]
    assert outcomes == ["refused", "ok"], outcomes          # the firmware's refusal, then the re-open
    assert A.verify(gw.dir / "audit")["ok"]
