"""The systemd unit as shipped, the template gateway/gasguard-gateway@.service (one instance per serial bus,
each reading /etc/gasguard/<instance>.toml), checked by systemd's own tools (Debian `systemd`, installed by
.ci/run) on an instance of it: it parses and its commands exist (`systemd-analyze verify`), its hardening
keeps the exposure at or below 2.0 (`systemd-analyze security --offline=yes`), and what it says about the
daemon holds: Type=notify with a watchdog, the groups of the documented install, no restart on exit 2, each
instance its own config and the default instance the single-bus /etc/gasguard/gateway.toml."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import gasguard.gateway
from gasguard.cli import cli

UNIT = Path(gasguard.gateway.__file__).parent / "gasguard-gateway@.service"
MAX_EXPOSURE = 2.0
SINGLE_BUS_CONFIG = "/etc/gasguard/gateway.toml"   # the documented install (docs/OPERATIONS.md, gateway/README.md)


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run installs it)")
    return exe


def _unit(want: str = "[Service]") -> dict[str, list[str]]:
    """One section as {key: [values]} (keys may repeat in a unit file)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == want:
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def _default_instance() -> str:
    names = _unit("[Install]").get("DefaultInstance", [])
    assert len(names) == 1, f"{UNIT.name}: [Install] DefaultInstance= missing or repeated: {names}"
    return names[0]


def _instance(tmp_path: Path, text: str) -> Path:
    """The template as the unit file of its default instance (gasguard-gateway@gateway.service): systemd's
    tools check an instance, with %i set, and name it in what they say."""
    unit = tmp_path / UNIT.name.replace("@.", f"@{_default_instance()}.")
    unit.write_text(text)
    return unit


def _config_of(instance: str) -> str:
    """The --config path of ExecStart for one instance, expanded as systemd does: %i is the instance name
    (systemd.unit(5), "Specifiers"); the path may hold no other specifier."""
    (cmd,) = _unit()["ExecStart"]
    argv = shlex.split(cmd)
    path = argv[argv.index("--config") + 1]
    assert re.findall(r"%.", path) == ["%i"], path
    return path.replace("%i", instance)


def test_unit_verifies_with_systemd(tmp_path):
    """`systemd-analyze verify` of the default instance: the unit parses, no unknown keys, the ExecStart
    commands are executables. The unit names the documented install prefix /opt/gasguard/.venv; here the same
    command lives in this checkout's virtual env, so only that prefix is swapped."""
    text = UNIT.read_text().replace("/opt/gasguard/.venv", sys.prefix)
    assert text != UNIT.read_text(), "the unit no longer runs /opt/gasguard/.venv/bin/gasguard"
    unit = _instance(tmp_path, text)
    r = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [l for l in (r.stdout + r.stderr).splitlines() if unit.name in l or UNIT.name in l]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


def test_unit_exposure_is_at_most_2(tmp_path):
    unit = _instance(tmp_path, UNIT.read_text())
    r = subprocess.run([_analyze(), "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
                        str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+) (\w+)", r.stdout)
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


def test_one_instance_per_bus_each_reads_its_own_config():
    """Two buses, two cores: `gasguard-gateway@bus0` and `@bus1` read /etc/gasguard/bus0.toml and bus1.toml;
    a single-bus substation enables the template (or @gateway) and keeps /etc/gasguard/gateway.toml."""
    assert _default_instance() == "gateway"
    assert _config_of(_default_instance()) == SINGLE_BUS_CONFIG
    bus0, bus1 = _config_of("bus0"), _config_of("bus1")
    assert bus0 == "/etc/gasguard/bus0.toml" and bus1 == "/etc/gasguard/bus1.toml"
    assert len({bus0, bus1, SINGLE_BUS_CONFIG}) == 3
    # which instance is which, in `systemctl status` and the journal
    (description,) = _unit("[Unit]")["Description"]
    assert "%i" in description
