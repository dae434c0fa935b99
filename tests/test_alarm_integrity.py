"""Issue 12, alarm integrity: a frame replayed an hour later is a `replay`, not a second path's `duplicate`
(item 10); an incident survives a SIGKILL just after the ack (item 2); the spool holds replay state and its
loss is loud (item 3); rows whose delete failed on a full disk are deleted once space is back (item 5).
Item 1 (alarm identity across a node's power cut) is proven on the real firmware in
hil_tests/test_hil_gateway.py and tests/test_firmware_app.py."""

import re
import resource
import select
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from gasguard.gateway import config as gwconfig
from gasguard.testing.config import write_config
from gasguard.testing.gateway import GatewayProcess
from gasguard.testing.mosquitto import free_port
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.mosquitto
def test_a_frame_replayed_an_hour_later_is_a_replay_and_a_copy_within_seconds_a_duplicate(tmp_path, mosquitto):
    """Item 10: the old gateway called any copy of one of the last 8 frames `duplicate`, however old, so a
    recorded alarm replayed an hour later was counted as a harmless second radio."""
    rig = Rig(tmp_path, mosquitto.port, cables=2)       # limits.duplicate_window: the default, 30 s
    clock = {"t": 1_000_000.0}
    try:
        rig.start(clock=lambda: clock["t"])
        a = rig.nodes[0]
        raw = a.alarm()
        rig.cables[0].send(raw)
        wait_until(lambda: rig.metric("gasguard_gateway_accepted_total", type="alarm") == 1, 10, "alarm accepted")
        clock["t"] += 4.0                                       # a second radio's copy, within the window
        rig.cables[1].send(raw)
        wait_until(lambda: rig.rejected("duplicate") == 1, 10, "the copy within 4 s counted as duplicate")
        clock["t"] += 3600.0                                    # the same recorded frame, an hour later
        rig.cables[0].send(raw)
        wait_until(lambda: rig.rejected("replay") == 1, 10, "the hour-old copy counted as replay")
        assert rig.rejected("duplicate") == 1
        assert rig.metric("gasguard_gateway_accepted_total", type="alarm") == 1
        assert len(rig.sub.wait(lambda ms: rig.sub.on("/alarm"), 10)) == 1
    finally:
        rig.close()


def test_the_duplicate_window_is_configuration(tmp_path):
    def cfg(name, extra):
        return write_config(tmp_path / name, registry=tmp_path / "r.db", spool=tmp_path / "s.db",
                                    mqtt_port=1883, serial=["/dev/ttyUSB0"], extra=extra)
    assert gwconfig.load(cfg("g.toml", "[limits]\nduplicate_window = 2.5\n")).duplicate_window == 2.5
    with pytest.raises(gwconfig.ConfigError, match="duplicate_window"):
        gwconfig.load(cfg("b.toml", "[limits]\nduplicate_window = 0\n"))


# --- item 2: an incident is never lost to a kill just after the ack ------------------------------------------

KILL_AFTER_ACK_MS = (0, 0.5, 1, 2, 4, 8)    # the old gateway lost the incident at every one of these


def _ack(cable, node, timeout=15.0):
    """The first downlink for `node`, as soon as it is on the line (select, not polling)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([cable.master], [], [], 0.05)
        for raw in cable.downlinks():
            return node.open_downlink(raw)
    raise AssertionError(f"no ack for {node.dev:08x} within {timeout} s")


@pytest.mark.mosquitto
def test_every_acked_alarm_is_graded_after_a_sigkill_at_any_offset_after_its_ack(tmp_path, mosquitto):
    """Item 2: the old gateway acked the alarm, then graded it and saved the incident state in a file of the
    plugin's own: a SIGKILL within ~3 ms of the ack lost the incident (the raw alarm was kept). Now the
    alarm's observation is journalled with the alarm, before the ack, and settled with the incidents and the
    plugin's state in one later transaction. Six kills at 0-8 ms after the node has its ack; after the
    restarts, every one of the six alarms is in a published incident (the old code: none of them)."""
    rig = Rig(tmp_path, mosquitto.port, nodes=len(KILL_AFTER_ACK_MS), extra="[plugins.grading]\n")
    gw = GatewayProcess(rig.config_path, tmp_path / "gateway.log")
    cable = rig.cables[0]
    try:
        for node, ms in zip(rig.nodes, KILL_AFTER_ACK_MS):
            gw.start()
            gw.wait_log(" open (", 30)
            cable.send(node.alarm(code=2, state=0x15))        # gas level 2, valve closed and latched
            ack = _ack(cable, node)
            time.sleep(ms / 1000)      # not a wait for anything: the kill's offset after the ack is the experiment
            gw.kill()
            assert ack["type"] == "ack" and ack["ref"] == node.aseq
        gw.start()                     # the last start settles the last kill
        want = {f"{n.dev:08x}" for n in rig.nodes}

        def graded():
            with rig.sub.lock:
                return {d for t, p, _ in rig.sub.messages if "/command/incident/" in t
                        for d in p["report"]["source"]["devices"]}
        try:
            rig.sub.wait(lambda ms: want <= graded(), 40)
        except Exception:
            raise AssertionError(f"acked alarms with no incident: {sorted(want - graded())}; log {gw.log_path}")
        assert len(rig.sub.on("/alarm")) >= len(want)
    finally:
        gw.stop()
        rig.close()


# --- item 3: the spool is state, its loss is loud ---------------------------------------------------------------

def _run(cfg, timeout=30):
    return subprocess.run([sys.executable, "-m", "gasguard.cli", "gateway", "run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=timeout)


def test_a_missing_empty_or_other_spool_where_one_existed_refuses_to_start(tmp_path):
    """Item 3: the spool holds the replay counters; deleted, the old gateway started silently from nothing
    (captured frames accepted again, downlink counters reused). Now: exit 2 naming the file and the fix."""
    from gasguard.gateway.spool import Spool
    from gasguard.testing.node import make_registry
    make_registry(tmp_path / "registry.db", [])
    spool = tmp_path / "state" / "spool.db"
    cfg = write_config(tmp_path / "gateway.toml", registry=tmp_path / "registry.db", spool=spool,
                       mqtt_port=free_port(), serial=[str(tmp_path / "ttyNONE")])
    Spool(spool).close()                                  # the gateway's first start made it
    backup = tmp_path / "backup.db"
    with sqlite3.connect(spool) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    for p in spool.parent.glob("spool.db*"):             # "the spool is transient": rm spool.db*
        p.unlink()
    r = _run(cfg)
    assert r.returncode == 2 and str(spool) in r.stderr and "missing" in r.stderr and "restore" in r.stderr, r
    spool.write_bytes(b"")                                # truncated to nothing
    r = _run(cfg)
    assert r.returncode == 2 and "empty (0 bytes)" in r.stderr, r
    spool.unlink()
    Spool(tmp_path / "other" / "spool.db").close()        # some other spool put in its place
    shutil.copyfile(tmp_path / "other" / "spool.db", spool)
    r = _run(cfg)
    assert r.returncode == 2 and "not the one" in r.stderr, r
    spool.unlink()
    shutil.copyfile(backup, spool)                        # the fix: the backup restored
    Spool(spool).close()
    assert (spool.parent / ".spool.db.id").exists()


# --- item 5: rows whose delete failed on a full disk -------------------------------------------------------------

def _rows(spool) -> int:
    """Alarms and readings in the spool (a row may hold many readings: spool.Item)."""
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT coalesce(sum(count), 0) FROM outbox WHERE lane IN (0, 3)").fetchone()[0]


def _published(port) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^gasguard_gateway_published_total\{lane="(?:alarm|reading)"\} (\S+)',
                                            text, re.M))


@pytest.mark.mosquitto
def test_rows_whose_delete_failed_on_a_full_disk_are_deleted_once_space_is_back(tmp_path, mosquitto):
    """Item 5: a PUBACKed row whose DELETE failed (no space) stayed until a restart sent it again (251 rows in
    the report). The disk is made full for the real gateway process with RLIMIT_FSIZE = 0 (every write to a
    file fails, as on a full disk), set from outside with prlimit, and given back the same way."""
    port = free_port()
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.1\n",
              metrics=f'tick_interval = 0.1\nbind = "127.0.0.1:{port}"\n')
    gw = GatewayProcess(rig.config_path, tmp_path / "gateway.log").start()
    a, b = rig.nodes
    try:
        gw.wait_log("connected to mqtt broker", 30)
        gw.wait_log(f"{rig.cables[0].link} open", 30)      # (the port may open after the broker)
        mosquitto.stop()
        for _ in range(20):                                # within the rate limit's burst (30)
            rig.cables[0].send(a.reading())
        rig.cables[0].send(b.alarm())
        wait_until(lambda: _rows(rig.spool) == 21, 20, "20 readings and an alarm spooled while the broker is away")
        before = _published(port)
        resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))     # the disk is full
        mosquitto.start()
        rig.sub.wait(lambda ms: len(rig.readings()) == 20 and rig.sub.on("/alarm"), 30)
        wait_until(lambda: _published(port) >= before + 2, 20, "the gateway has the PUBACKs")
        assert _rows(rig.spool) == 21                      # published, but the deletes failed: no space
        resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))                  # space is back
        wait_until(lambda: _rows(rig.spool) == 0, 15, "the published rows deleted without a restart")
        assert "are deleted now" in gw.run_log()
    finally:
        gw.stop()
        rig.close()
