"""What a technician in the field expects of `gasguard device ...`: the facts grading needs before a node is
created, the port from GASGUARD_PORT, --json on export-key, a readable `device show`, and a script that
decommissions without --yes told what to add."""

import json
import re
import stat

from click.testing import CliRunner

from gasguard.cli import cli as root
from gasguard.registry import Registry

from provisioning_helpers import cli, cli_json, new_device

MISSING = "/dev/ttyGASGUARD-field-nothing-here"


def test_new_refuses_a_node_without_the_facts_grading_needs(tmp_path):
    reg = tmp_path / "reg.db"
    code, out, err = cli("device", "new", "--profile", "household", "--households", "1", registry=reg)
    assert code == 2 and "--lat and --lon" in err and "grading" in err
    code, out, err = cli("device", "new", "--profile", "station", "--lat", "36.66", "--lon", "117.06", registry=reg)
    assert code == 2 and "--households" in err and "--lat" not in err
    code, out, err = cli("device", "new", "--profile", "household", "--lat", "117.06", "--lon", "36.66", registry=reg)
    assert code == 2 and "latitude is -90..90" in err
    assert not reg.exists() or not Registry(reg).all(include_decommissioned=True)
    made = cli_json("device", "new", "--profile", "station", "--lat", "36.66", "--lon", "117.06",
                    "--households", "4200", registry=reg)
    with Registry(reg) as r:
        d = r.get(int(made["dev"], 16))
    assert (d.lat, d.lon, d.households) == (36.66, 117.06, 4200)


def test_the_port_comes_from_gasguard_port(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    r = CliRunner().invoke(root, ["device", "config", f"{dev.dev_id:08x}", "--registry", str(reg)],
                           env={"GASGUARD_PORT": MISSING})
    assert r.exit_code == 1 and MISSING in r.stderr and "check the cable" in r.stderr, r.output


def test_export_key_speaks_json(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    out = tmp_path / "k.key"
    got = cli_json("device", "export-key", f"{dev.dev_id:08x}", "--out", str(out), registry=reg)
    assert got == {"ok": True, "dev": f"{dev.dev_id:08x}", "key_version": 1, "out": str(out)}
    assert out.read_text().strip() == dev.key.hex() and stat.S_IMODE(out.stat().st_mode) == 0o600
    got = cli_json("device", "export-key", f"{dev.dev_id:08x}", "--print", registry=reg)
    assert got["key"] == dev.key.hex()
    code, out_, err = cli("device", "export-key", f"{dev.dev_id:08x}", "--json", registry=reg)
    assert code == 2 and json.loads(out_) == {"ok": False, "error": "say where the key goes: --out FILE (0600) or "
                                                                     "--print", "exit": 2}


def test_device_show_is_for_people(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg, profile="station", site_name="燕山调压站", households=800, lat=36.659, lon=117.062)
    cli("device", "config", f"{dev.dev_id:08x}", "report_s=600", "--registry-only", registry=reg)
    code, out, err = cli("device", "show", f"{dev.dev_id:08x}", registry=reg)
    assert code == 0, err
    assert re.search(r"created\s+\d{4}-\d\d-\d\d \d\d:\d\d [+-]\d\d:\d\d \(\d+ s ago\)", out), out
    assert "report_s=600" in out and "location        36.65900, 117.06200" in out
    assert "{" not in out and "'" not in out                   # no Python dicts
    assert not re.search(r"\b1[0-9]{9}(\.[0-9]+)?\b", out)    # no epoch seconds
    assert dev.key.hex() not in out


def test_decommission_from_a_script_without_yes_says_what_to_add(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    for extra in ((), ("--json",)):
        code, out, err = cli("device", "decommission", f"{dev.dev_id:08x}", "--no-board", *extra, registry=reg)
        assert code == 2 and "add --yes" in (err + out) and "Aborted" not in err, err
    with Registry(reg) as r:
        assert r.get(dev.dev_id).active
    assert cli_json("device", "decommission", f"{dev.dev_id:08x}", "--no-board", "--yes", registry=reg)["ok"]
