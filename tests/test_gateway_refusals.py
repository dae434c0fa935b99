"""Refusals at start (issue 12 items 4 and 8): a storage fault or a bad file stops `gasguard gateway run` with
exit 2 and one line naming the file and the fix, never a traceback; `gateway check-config` gives the same
answer by the same code path; and the shipped systemd unit does not restart on that exit code.

The real command in a child process. Read-only files and folders are made read-only for real: when the
tests run as root (CI), the child runs without CAP_DAC_OVERRIDE (setpriv), as the `gasguard` user would."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gasguard.testing.config import write_config
from gasguard.testing.node import Node, make_registry
from gasguard.gateway.spool import Item, Spool
from gasguard.testing.mosquitto import free_port
from test_ops_unit import _unit       # the shipped unit's [Service] section, read in one place

NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []


def _gateway(*args, no_dac=False, timeout=30) -> subprocess.CompletedProcess:
    cmd = (NO_DAC if no_dac else []) + [sys.executable, "-m", "gasguard.cli", "gateway", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _setup(tmp_path: Path, extra: str = "", udp: str | None = None) -> Path:
    reg = tmp_path / "registry.db"
    make_registry(reg, [Node(7)])
    return write_config(tmp_path / "gateway.toml", registry=reg, spool=tmp_path / "spool" / "spool.db",
                                mqtt_port=free_port(), udp=udp or f"127.0.0.1:{free_port()}", extra=extra)


def _not_utf8(tmp_path):
    cfg = _setup(tmp_path)
    cfg.write_bytes(cfg.read_bytes() + b"# Stra\xdfe 17 (latin-1)\n")
    return cfg, cfg, "save it as UTF-8", False


def _grading_typo(tmp_path):
    cfg = _setup(tmp_path, "[plugins.grading]\nleak_levle = 2\n")
    return cfg, cfg, "plugins.grading: unknown [grading] key 'leak_levle': did you mean 'leak_level'?", False


def _grading_bad_value(tmp_path):
    cfg = _setup(tmp_path, '[plugins.grading]\nleak_level = "two"\n')
    return cfg, cfg, "plugins.grading: [grading] leak_level = 'two': expected int", False


def _registry_garbage(tmp_path):
    cfg = _setup(tmp_path)
    (tmp_path / "registry.db").write_bytes(os.urandom(4096))
    return cfg, tmp_path / "registry.db", "gasguard gateway import-registry", False


def _registry_missing(tmp_path):
    cfg = _setup(tmp_path)
    (tmp_path / "registry.db").unlink()
    return cfg, tmp_path / "registry.db", "gasguard gateway import-registry", False


def _spool_read_only(tmp_path):
    cfg = _setup(tmp_path)
    spool = tmp_path / "spool" / "spool.db"
    Spool(spool).close()
    spool.chmod(0o444)
    return cfg, spool, "must be able to write it and its folder", True


def _spool_folder_read_only(tmp_path):
    cfg = _setup(tmp_path)
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool").chmod(0o555)
    return cfg, tmp_path / "spool" / "spool.db", "must exist and be writable by the gateway user", True


def _spool_garbage(tmp_path):
    cfg = _setup(tmp_path)
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "spool.db").write_bytes(os.urandom(8192))
    return cfg, tmp_path / "spool" / "spool.db", "move the damaged file aside", False


def _spool_truncated(tmp_path):
    cfg = _setup(tmp_path)
    spool = tmp_path / "spool" / "spool.db"
    s = Spool(spool)
    s.commit([Item(3, 7, "x" * 300, f"m{i}", 0.0) for i in range(3000)], {(7, 0): 3000})
    s.wait_checkpoint()
    s.close()
    os.truncate(spool, spool.stat().st_size // 2)      # a copy cut short, a disk that lost its tail
    return cfg, spool, "move the damaged file aside", False


FAULTS = [_not_utf8, _grading_typo, _grading_bad_value, _registry_garbage, _registry_missing, _spool_read_only,
          _spool_folder_read_only, _spool_garbage, _spool_truncated]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__.strip("_"))
def test_a_fault_at_start_is_one_line_naming_the_file_and_the_fix_exit_2_in_run_and_check_config(
        tmp_path, fault):
    cfg, culprit, fix, no_dac = fault(tmp_path)
    if no_dac and NO_DAC and not shutil.which("setpriv"):
        pytest.skip("root without setpriv: a file cannot be made read-only for root")
    prevent = {int(c) for v in _unit()["RestartPreventExitStatus"] for c in v.split()}
    for cmd in ("run", "check-config"):
        r = _gateway(cmd, "--config", str(cfg), no_dac=no_dac)
        err = r.stderr.strip()
        assert r.returncode == 2 and r.returncode in prevent, f"{cmd}: exit {r.returncode}\n{r.stderr}"
        assert "Traceback" not in r.stderr and "\n" not in err, f"{cmd}: not one line:\n{r.stderr}"
        assert str(culprit) in err and fix in err, f"{cmd}: {err}"
    assert not (tmp_path / "spool" / "spool.db").exists() or fault in (_spool_read_only, _spool_garbage,
                                                                         _spool_truncated), \
        "check-config or a refused run created a spool"


@pytest.mark.timeout(60)
def test_a_port_in_use_at_start_is_a_refusal_too(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        bind = f"127.0.0.1:{holder.getsockname()[1]}"
        cfg = _setup(tmp_path, udp=bind)
        r = _gateway("run", "--config", str(cfg))
    err = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert err.startswith("configuration error: udp.bind: ") and bind in err and str(cfg) in err, err


def test_the_shipped_unit_does_not_restart_a_refusal():
    """RestartPreventExitStatus= applies to the main process only (systemd issue #11868): a check in
    ExecStartPre exiting 2 would be restarted every RestartSec. `run` refuses by itself, with exit 2."""
    u = _unit()
    assert "ExecStartPre" not in u, u.get("ExecStartPre")
    assert any(re.search(r"\bgateway run\b", v) for v in u["ExecStart"])
    assert 2 in {int(c) for v in u["RestartPreventExitStatus"] for c in v.split()}


@pytest.mark.timeout(90)
def test_a_spool_another_gateway_holds_is_refused_and_freed_when_that_gateway_dies(tmp_path):
    """One gateway per bus means several configurations on one machine. A copied one that still names the
    first gateway's spool must not start beside it: the spool has one writer (its publisher takes each
    commit's rows by consecutive seqs, and its counters are the replay protection). The lock is the kernel's,
    so a SIGKILLed holder leaves nothing to clear by hand."""
    from gasguard.testing.gateway import GatewayProcess
    cfg = _setup(tmp_path)
    copy = write_config(tmp_path / "bus1.toml", registry=tmp_path / "registry.db",
                        spool=tmp_path / "spool" / "spool.db", mqtt_port=free_port(),
                        udp=f"127.0.0.1:{free_port()}", gateway_id="bus1")
    first = GatewayProcess(cfg, tmp_path / "first.log").start()
    try:
        first.wait_log("starting; spool", timeout=30)
        for cmd in ("run",):
            r = _gateway(cmd, "--config", str(copy))
            err = r.stderr.strip()
            assert r.returncode == 2 and "Traceback" not in r.stderr and "\n" not in err, r.stderr
            assert str(tmp_path / "spool" / "spool.db") in err and f"pid {first.proc.pid}" in err, err
            assert "its own [gateway] spool" in err and str(copy) in err, err
        assert first.proc.poll() is None, "the refused second gateway disturbed the first"
        first.kill()
        second = GatewayProcess(copy, tmp_path / "second.log").start()
        try:
            second.wait_log("starting; spool", timeout=30)
        finally:
            second.stop()
    finally:
        first.close()


@pytest.mark.timeout(90)
def test_a_second_gateway_with_the_same_id_beside_the_first_is_refused(tmp_path):
    """Two gateways with one id connect with one MQTT client id and drop each other in turn; a copied bus
    configuration whose spool was renamed but whose [gateway] id was not is refused at start, naming the key."""
    from gasguard.testing.gateway import GatewayProcess
    cfg = _setup(tmp_path)
    gid = re.search(r'^id\s*=\s*"([^"]+)"', cfg.read_text(), re.M).group(1)
    copy = write_config(tmp_path / "bus1.toml", registry=tmp_path / "registry.db",
                        spool=tmp_path / "spool" / "spool-bus1.db", mqtt_port=free_port(),
                        udp=f"127.0.0.1:{free_port()}", gateway_id=gid)
    first = GatewayProcess(cfg, tmp_path / "first.log").start()
    try:
        first.wait_log("starting; spool", timeout=30)
        r = _gateway("run", "--config", str(copy))
        err = r.stderr.strip()
        assert r.returncode == 2 and "Traceback" not in r.stderr and "\n" not in err, r.stderr
        assert err.startswith("configuration error: gateway.id: ") and str(copy) in err, err
        assert f"pid {first.proc.pid}" in err and "its own [gateway] id" in err, err
        assert first.proc.poll() is None
    finally:
        first.close()
