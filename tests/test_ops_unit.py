"""The systemd unit as shipped (gateway/gasguard-gateway.service), checked by systemd's own tools (Debian
`systemd`, installed by .ci/run): it parses and its commands exist (`systemd-analyze verify`), its hardening
keeps the exposure at or below 2.0 (`systemd-analyze security --offline=yes`), and what it says about the
daemon holds: Type=notify with a watchdog, the groups of the documented install, no restart on exit 2."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import gasguard.gateway
from gasguard.cli import cli

UNIT = Path(gasguard.gateway.__file__).parent / "gasguard-gateway.service"
MAX_EXPOSURE = 2.0


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run installs it)")
    return exe


def _unit() -> dict[str, list[str]]:
    """Service section as {key: [values]} (keys may repeat in a unit file)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_verifies_with_systemd(tmp_path):
    """`systemd-analyze verify`: the unit parses, no unknown keys, the ExecStart commands are executables.
    The unit names the documented install prefix /opt/gasguard/.venv; here the same command lives in this
    checkout's virtual env, so only that prefix is swapped."""
    text = UNIT.read_text().replace("/opt/gasguard/.venv", sys.prefix)
    assert text != UNIT.read_text(), "the unit no longer runs /opt/gasguard/.venv/bin/gasguard"
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    r = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [l for l in (r.stdout + r.stderr).splitlines() if UNIT.name in l]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


def test_unit_exposure_is_at_most_2():
    r = subprocess.run([_analyze(), "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
                        str(UNIT)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(m.group(0))
    assert exposure <= MAX_EXPOSURE and r.returncode == 0, r.stdout


def test_unit_says_what_the_daemon_does(tmp_path):
    u = _unit()
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert int(u["WatchdogSec"][0]) > 0
    # the documented install: /etc/gasguard root:gasguard 0750 (primary group), serial ports group dialout
    assert u["User"] == ["gasguard"] and u["Group"] == ["gasguard"]
    assert "dialout" in " ".join(u["SupplementaryGroups"]).split()
    # the daemon's refusal code: a bad configuration exits 2, and the unit does not restart on it
    bad = tmp_path / "gateway.toml"
    bad.write_text("[gateway]\nid = \"g 1\"\n")
    r = CliRunner().invoke(cli, ["gateway", "run", "--config", str(bad)])
    assert r.exit_code == 2, r.output
    assert u["RestartPreventExitStatus"] == [str(r.exit_code)]
    # a stuck loop is named (log, STATUS=) before systemd's watchdog fires
    from gasguard.gateway.config import Config
    assert Config.stall_after < int(u["WatchdogSec"][0])
