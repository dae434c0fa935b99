"""`gasguard bench udp`: the Semtech UDP intake at a fixed offered rate (issue 17).

The real daemon (gateway.daemon.Daemon with [udp] bind, a real mosquitto on loopback, the SQLite spool with
synchronous=FULL on this machine's disk) runs in a child process; this process plays the packet forwarder and
sends PUSH_DATA datagrams of 1 or `--rxpk` signed readings each to it over loopback at a fixed offered rate
of frames per second. Every device is heard once before the clock starts (the steady state: ~20 µs a frame,
not ~100 at first sight).

Where each offered frame ended, per run:
- accepted: verified and committed to the spool (`Daemon.accepted_count`);
- refused:  counted by the gateway (`gasguard_gateway_rejected_total`, e.g. ingest_overflow: queue full);
- lost:     dropped by the kernel because the socket's receive buffer was full: the socket's `drops` in
            /proc/net/udp (datagrams, times the rxpk per datagram), which nothing in the gateway counted
            before issue 17 (`counted`: of those, what the gateway's gasguard_gateway_udp_kernel_drops_total saw);
and how ingest committed them: commits (transactions, each paying an fsync) per second, frames per commit.

With `--against REV`, gateway/transports/semtech_udp.py as of that git revision is the listener of the
`REV` runs (everything else is this tree), alternated with this tree's runs: A B, B A, ...
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from gasguard.gateway.transports.procnet import udp_socket_stats
from gasguard.tools.bench.gateway import PER_DEV, _cfg, _fresh, _nodes, load

REPO = Path(__file__).resolve().parents[2]
EUI = b"\xaa\x55\x5a\x00\x00\x00\x00\x01"

CHILD = r'''
import sys
from gasguard.tools.bench.udp import gateway_child
gateway_child(*sys.argv[1:])
'''


def _listener_at(rev: str, workdir: Path):
    """gateway/transports/semtech_udp.py as of git revision `rev`, imported as a module of its own."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:gateway/transports/semtech_udp.py"],
                             check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise click.ClickException(f"git show {rev}:gateway/transports/semtech_udp.py failed ({e.stderr.strip()}):"
                                   " give a revision of this repository (e.g. main~1 or a commit id)") from None
    path = workdir / ("gg_bench_udp_" + re.sub(r"\W", "_", rev) + ".py")
    path.write_text(src)
    return path


def gateway_child(workdir: str, broker_port: str, udp_port: str, listener: str, rcvbuf_kb: str) -> None:
    """The gateway side: the daemon, warmed with one reading per device, then driven by lines on stdin:
    `go` (counters start), `report` (wait until the socket and the queue are empty, print the figures)."""
    import asyncio
    import inspect

    from gasguard.gateway import daemon as daemon_mod
    from gasguard.tools.bench.gateway import _start

    d, port = Path(workdir), int(udp_port)
    if listener:                            # another revision's listener, with whatever arguments it takes
        spec = importlib.util.spec_from_file_location("gg_bench_listener", listener)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        takes = inspect.signature(mod.listen).parameters

        async def listen(*a, **kw):
            transport, proto = await mod.listen(*a, **{k: v for k, v in kw.items() if k in takes})
            if not hasattr(transport, "poll_drops"):    # the daemon's ticker calls it; older listeners lack it
                transport.poll_drops = lambda: None
            return transport, proto
        daemon_mod.listen = listen
    kw = {"udp_rcvbuf": int(rcvbuf_kb) * 1024} if int(rcvbuf_kb) else {}
    daemon = daemon_mod.Daemon(_cfg(d, int(broker_port), udp_bind=f"127.0.0.1:{port}", **kw), plugins=[])
    ing, out = daemon.ingest, daemon.outbox
    n = {"commits": 0, "datagrams": 0}
    commit = out.commit

    def counted_commit(*a, **kw):
        n["commits"] += 1
        return commit(*a, **kw)
    out.commit = counted_commit
    warm = pickle.loads((d / "warm.pickle").read_bytes())

    async def go():
        loop = asyncio.get_running_loop()
        stop, task = await _start(daemon)
        rx = {"transport": "udp", "gw": EUI.hex()}
        for i in range(0, len(warm), 512):
            daemon.process([(raw, rx, "bench") for raw in warm[i:i + 512]])
        proto, received = daemon.udp, daemon.udp.datagram_received

        def counted_datagram(data, addr):
            n["datagrams"] += 1
            return received(data, addr)
        proto.datagram_received = counted_datagram
        sock = daemon.udp.transport.get_extra_info("socket")
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        print(json.dumps({"ready": True, "warm": daemon.accepted_count, "rcvbuf": rcvbuf}), flush=True)
        assert (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go"
        for k in n:
            n[k] = 0
        acc0, rej0 = daemon.accepted_count, daemon.stats()["rejected"]
        t0 = time.perf_counter()
        print("going", flush=True)          # the sender starts now, not before the counters did
        assert (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "report"
        # settled: nothing left in the socket, the queue empty and no frame accepted or refused since the last
        # look, three looks 10 ms apart (a group taken from the queue is not in it, nor counted yet)
        calm, last = 0, None
        while calm < 3:
            s = udp_socket_stats(port)
            now = (daemon.accepted_count, sum(daemon.stats()["rejected"].values()))
            calm = calm + 1 if s is not None and s[0] == 0 and ing.queue.empty() and now == last else 0
            last = now
            await asyncio.sleep(0.01)
        wall = time.perf_counter() - t0
        s = udp_socket_stats(port)
        rej = {k: v - rej0.get(k, 0) for k, v in daemon.stats()["rejected"].items() if v - rej0.get(k, 0)}
        counted = daemon.metrics.value("gasguard_gateway_udp_kernel_drops_total")    # 0 where not counted
        print(json.dumps({"accepted": daemon.accepted_count - acc0, "rejected": rej, "drops": s[1] if s else None,
                          "counted": int(counted),
                          "wall": wall, **n}), flush=True)
        stop.set()
        await asyncio.wait_for(task, 15)
    asyncio.run(go())


def _datagrams(frames: list[bytes], per: int) -> list[bytes]:
    from gasguard.protocol import semtech
    out = []
    for i in range(0, len(frames), per):
        pks = [{"tmst": (i + j) * 1000 & 0xFFFFFFFF, "chan": 2, "rfch": 0, "freq": 470.9, "stat": 1,
                "modu": "LORA", "datr": "SF11BW125", "codr": "4/5", "rssi": -97, "lsnr": 7.5, "size": len(raw),
                "data": base64.b64encode(raw).decode()} for j, raw in enumerate(frames[i:i + per])]
        out.append(semtech.push_data(len(out) & 0xFFFF, EUI, {"rxpk": pks}))
    return out


def _blast(datagrams: list[bytes], addr, per_s: float) -> float:
    """Send at `per_s` datagrams a second (each sent once it is due: a late send catches up at once, so the
    offered rate does not sink when this process is descheduled); the wall time it took."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    send, n, i = s.sendto, len(datagrams), 0
    t0 = time.perf_counter()
    while i < n:
        due = min(n, int((time.perf_counter() - t0) * per_s) + 1)
        while i < due:
            send(datagrams[i], addr)
            i += 1
        ahead = t0 + i / per_s - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    wall = time.perf_counter() - t0
    s.close()
    return wall


def run_once(d: Path, broker_port: int, frames: list[bytes], per: int, rate: float, listener: str,
             rcvbuf_kb: int = 0) -> dict:
    _fresh(d)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        udp_port = s.getsockname()[1]
    datagrams = _datagrams(frames, per)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(broker_port), str(udp_port), listener,
                              str(rcvbuf_kb)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line:
            raise click.ClickException(f"the gateway child exited ({child.wait()}) before it was ready")
        ready = json.loads(line)
        child.stdin.write("go\n")
        child.stdin.flush()
        if child.stdout.readline().strip() != "going":
            raise click.ClickException(f"the gateway child exited ({child.wait()}) before it started counting")
        wall = _blast(datagrams, ("127.0.0.1", udp_port), rate / per)
        child.stdin.write("report\n")
        child.stdin.flush()
        line = child.stdout.readline()
        if not line:
            raise click.ClickException(f"the gateway child exited ({child.wait()}) before its report")
        r = json.loads(line)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    offered = len(frames)
    refused = sum(r["rejected"].values())
    lost = (r["drops"] or 0) * per
    return {"rxpk": per, "rate": rate, "frames": offered, "datagrams": len(datagrams),
            "offered_per_s": offered / wall, "accepted": r["accepted"], "refused": refused,
            "refused_by": r["rejected"], "lost": lost, "lost_counted": r["counted"] * per, "unaccounted": offered - r["accepted"] - refused - lost,
            "received": r["datagrams"], "commits": r["commits"], "commits_per_s": r["commits"] / r["wall"],
            "frames_per_commit": r["accepted"] / max(1, r["commits"]), "rcvbuf": ready["rcvbuf"], "load": load()}


def row(name: str, f: dict) -> str:
    return (f"{name:>12} {f['rxpk']:>4} {f['rate']:>7,.0f} {f['offered_per_s']:>9,.0f} {f['accepted']:>9,} "
            f"{f['refused']:>8,} {f['lost']:>8,} {f['lost_counted']:>8,} {f['unaccounted']:>5,} {f['commits_per_s']:>9,.0f} "
            f"{f['frames_per_commit']:>9.1f} {f['rcvbuf']:>9,}  {f['load']}")


HEAD = (f"{'listener':>12} {'rxpk':>4} {'rate':>7} {'offered/s':>9} {'accepted':>9} {'refused':>8} {'lost':>8} "
        f"{'counted':>8} {'?':>5} {'commits/s':>9} {'fr/commit':>9} {'rcvbuf':>9}")


def figures(*, rates=(5_000, 20_000, 50_000), rxpk=(1, 8), seconds=2.0, rounds=1, against=None, rcvbuf_kb=0,
            echo=click.echo, workdir=None) -> dict:
    from gasguard.testing.mosquitto import Mosquitto
    from gasguard.testing.node import make_registry
    base = Path(workdir or tempfile.mkdtemp(prefix="gg-bench-udp-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    out: dict = {"load_before": load(), "seconds": seconds, "runs": []}
    try:
        variants = {"this tree": ""}
        if against:
            variants = {against: str(_listener_at(against, base)), "this tree": ""}
        most = int(max(rates) * seconds)
        nodes = _nodes(max(1, math.ceil(most / PER_DEV)))
        make_registry(base / "registry.db", nodes)
        echo(f"sealing {len(nodes) * (PER_DEV + 1):,} readings of {len(nodes):,} devices ... ({load()})")
        (base / "warm.pickle").write_bytes(pickle.dumps([n.reading() for n in nodes]))
        frames = [n.reading(pressure=2000 + k) for k in range(PER_DEV) for n in nodes]
        names = list(variants)
        with Mosquitto(workdir=base / "broker") as broker:
            echo(HEAD)
            for r in range(rounds):
                for per in rxpk:
                    for rate in rates:
                        for name in (names if r % 2 == 0 else names[::-1]):    # A B, B A: drift falls on both
                            f = run_once(base, broker.port, frames[:int(rate * seconds)], per, rate,
                                         variants[name], rcvbuf_kb)
                            f["listener"] = name
                            out["runs"].append(f)
                            echo(row(name, f))
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    out["load_after"] = load()
    return out


@click.command("udp")
@click.option("--rate", "rates", multiple=True, type=int, default=(5_000, 20_000, 50_000), show_default=True,
              help="offered frames/s (repeatable)")
@click.option("--rxpk", "rxpk", multiple=True, type=click.IntRange(1, 8), default=(1, 8), show_default=True,
              help="frames per PUSH_DATA datagram (repeatable)")
@click.option("--seconds", default=2.0, show_default=True, help="length of each run at its offered rate")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1), help="rounds (alternated with --against)")
@click.option("--against", default=None, help="a git revision: its UDP listener runs alternately with this one")
@click.option("--rcvbuf-kb", default=0, show_default=True, type=click.IntRange(0),
              help="udp.rcvbuf_kb of this tree's runs (0: its default)")
@click.option("--json", "as_json", is_flag=True)
def udp_bench(rates, rxpk, seconds, rounds, against, rcvbuf_kb, as_json):
    """Semtech UDP intake at fixed offered rates: frames accepted, refused (counted) and lost in the kernel
    (the socket's drops), commits/s and frames per commit; optionally A/B against another revision's listener."""
    out = figures(rates=rates, rxpk=rxpk, seconds=seconds, rounds=rounds, against=against, rcvbuf_kb=rcvbuf_kb,
                  echo=(lambda *_: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"{out['load_before']} before, {out['load_after']} after; rxpk: frames per datagram; lost: "
                   "the kernel's drops x rxpk; counted: of those, what the gateway counted "
                   "(gasguard_gateway_udp_kernel_drops_total); ?: offered - accepted - refused - lost")
