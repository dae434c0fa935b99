"""`gasguard sim district` and `gasguard sim fleet` as a technician or a script runs them."""

import json

from click.testing import CliRunner

from gasguard.cli import cli
from gasguard.registry import Registry
from gasguard.testing.waits import wait_until


def test_district_then_fleet_with_a_frame_log(tmp_path):
    reg = tmp_path / "d.db"
    r = CliRunner().invoke(cli, ["sim", "district", "--registry", str(reg), "--scale", "0.02", "--households", "80",
                                 "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["stations"] == 27 and summary["households_served"] == 6600 and not summary["sim_keys"]
    # a second write into a registry with devices is refused (ids and keys would be replaced)
    r = CliRunner().invoke(cli, ["sim", "district", "--registry", str(reg)])
    assert r.exit_code == 2 and "already holds" in r.output
    log = tmp_path / "frames.jsonl"
    r = CliRunner().invoke(cli, ["sim", "fleet", "--registry", str(reg), "--scenario", "alarm_storm",
                                 "--param", "count=5", "--fast", "--duration", "300", "--log", str(log), "--json",
                                 "--state", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == rep["frames"] and rep["alarms"]["raised"] == 10 and len(rep["targets"]) == 5
    first = [x for x in lines if x["type"] == "alarm" and x["retx"] == 0]
    assert {f"{x['dev']:08x}" for x in first} == set(rep["targets"])
    assert all({"t", "vt", "dev", "fcnt", "type", "aseq", "code"} <= set(x) for x in first)
    with Registry(reg, readonly=True) as r2:
        assert r2.count() == summary["stations"] + sum(summary["users"].values())
    state = json.loads((tmp_path / "c.json").read_text())
    assert max(v[0] for v in state.values()) > 1                       # counters saved for the next run


def test_fleet_refuses_bad_arguments_with_exit_2(tmp_path):
    reg = tmp_path / "d.db"
    CliRunner().invoke(cli, ["sim", "district", "--registry", str(reg), "--scale", "0.01", "--households", "0"])
    r = CliRunner().invoke(cli, ["sim", "fleet", "--registry", str(reg), "--transport", "udp"])
    assert r.exit_code == 2 and "--target 127.0.0.1:1700" in r.output
    r = CliRunner().invoke(cli, ["sim", "fleet", "--registry", str(reg), "--transport", "udp", "--target",
                                 "192.0.2.7:1700"])
    assert r.exit_code == 2 and "loopback" in r.output
    r = CliRunner().invoke(cli, ["sim", "fleet", "--registry", str(reg), "--param", "count"])
    assert r.exit_code == 2 and "NAME=VALUE" in r.output


def test_fleet_to_two_udp_gateways_with_overlap(tmp_path):
    import socket
    import threading

    reg = tmp_path / "d.db"
    CliRunner().invoke(cli, ["sim", "district", "--registry", str(reg), "--scale", "0.01", "--households", "40"])
    socks, got, stop = [], [0, 0], threading.Event()
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.02)
        socks.append(s)

    def drain(i):                      # read while the fleet sends: a full socket buffer drops datagrams
        while not stop.is_set():
            try:
                dg = socks[i].recv(65535)
            except socket.timeout:
                continue
            if dg[3] == 0:             # PUSH_DATA
                got[i] += len(json.loads(dg[12:]).get("rxpk", []))

    readers = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    args = ["sim", "fleet", "--registry", str(reg), "--transport", "udp", "--overlap", "0.5", "--fast",
            "--duration", "900", "--json"]
    for s in socks:
        args += ["--target", f"127.0.0.1:{s.getsockname()[1]}"]
    try:
        r = CliRunner().invoke(cli, args)
        rep = json.loads(r.output[r.output.index("{"):]) if r.exit_code == 0 else {}
        sent = rep.get("transport", {})
        # the readers have taken every datagram the fleet sent (both sockets) before they stop
        wait_until(lambda: not rep or got == [sent["0.frames"], sent["1.frames"]], 5, "both gateways read every datagram")
    finally:
        stop.set()
        for t in readers:
            t.join(2)
        for s in socks:
            s.close()
    assert r.exit_code == 0, r.output
    t = sent
    assert t["heard_twice"] > 0 and got == [t["0.frames"], t["1.frames"]]
    assert sum(got) == rep["frames"] + t["heard_twice"]
