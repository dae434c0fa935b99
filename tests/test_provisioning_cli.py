"""The technician CLI without a board: input checked before any port opens (exit 2), registry bundles signed
by the authority (tampered / foreign / stale refused), keys 0600 and never printed, --help with examples."""

import base64
import json
import stat

import click
import pytest

from gasguard.registry import Registry
from gasguard.provisioning import ports
from gasguard.provisioning.cli import device
from gasguard.provisioning.errors import ProvisioningError

from provisioning_helpers import cli, cli_json, new_device

MISSING = "/dev/ttyGASGUARD-nothing-here"


@pytest.mark.parametrize("setting,why", [
    ("gas_l2=300", "gas_l2=300 (30.0 % LEL) outside 10.0–25.0 % LEL"),     # above 25 % LEL at a home
    ("gas_l2=100", "gas_l1 (10.0 % LEL) must be below gas_l2 (10.0 % LEL)"),
    ("upso=8000", "upso=8000 (8.0 kPa) outside 0.3–1.5 kPa"),
    ("report_s=5", "report_s=5 outside 60–86400 s"),
    ("setpoint=2000", "setpoint: not a household setting"),
    ("fault_action=ignore", "fault_action=ignore: choose one of"),
    ("radio.baud=11520", "radio.baud=11520: choose one of"),
    ("gas_l1=ten", "must be a whole number"),
])
def test_out_of_bounds_config_is_refused_before_the_port_is_opened(tmp_path, setting, why):
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    code, out, err = cli("device", "config", f"{dev.dev_id:08x}", setting, "--port", MISSING, registry=reg)
    assert code == 2, out + err                 # a port that is not there would have been exit 1
    assert why in err and MISSING not in err
    with Registry(reg) as r:
        assert r.get(dev.dev_id).config == dev.config


def test_a_missing_port_is_an_operational_error_that_says_what_to_do(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    code, _, err = cli("device", "config", f"{dev.dev_id:08x}", "gas_l1=120", "--port", MISSING, registry=reg)
    assert code == 1 and "check the cable" in err


def test_port_problems_are_explained(monkeypatch):
    assert "dialout" in str(ports.explain("/dev/ttyUSB0", PermissionError(13, "Permission denied")))
    assert "fuser /dev/ttyUSB0" in str(ports.explain("/dev/ttyUSB0", OSError(11, "Could not exclusively lock port")))
    monkeypatch.setattr(ports, "candidates", lambda: [])
    with pytest.raises(ProvisioningError, match="plug in the USB cable"):
        ports.resolve("auto")
    monkeypatch.setattr(ports, "candidates", lambda: ["/dev/ttyUSB0"])
    assert ports.resolve("auto") == "/dev/ttyUSB0"
    monkeypatch.setattr(ports, "candidates", lambda: ["/dev/ttyUSB0", "/dev/ttyUSB1"])
    with pytest.raises(ProvisioningError, match="several serial ports"):
        ports.resolve("auto")
    assert ports.resolve("auto", choose=lambda found: found[1]) == "/dev/ttyUSB1"


def test_new_validates_site_data_and_never_prints_the_key(tmp_path):
    reg = tmp_path / "reg.db"
    code, _, err = cli("device", "new", "--profile", "household", "--lat", "36.67", "--lon", "117.05", "--user-class", "boiler", registry=reg)
    assert code == 2 and "residential" in err
    code, _, err = cli("device", "new", "--profile", "station", "--set", "opso=7000", "--lat", "36.67", "--lon", "117.05", registry=reg)
    assert code == 2 and "not a station setting" in err
    made = cli_json("device", "new", "--profile", "station", "--id", "00c0ffee", "--households", "4200",
                    "--lat", "36.67", "--lon", "117.05", "--pressure-class", "subhigh_b", "--key-area", "--set", "setpoint=3000", registry=reg)
    assert made["dev"] == "00c0ffee" and "ID 00C0FFEE" in made["label"] and "key v1  KEY AREA" in made["label"]
    with Registry(reg) as r:
        d = r.get(0xC0FFEE)
    assert d.config["setpoint"] == 3000 and d.config["board"] == "esp32"
    listing = cli("device", "list", "--json", registry=reg)[1]
    assert d.key.hex() not in listing and "key" not in json.loads(listing)["devices"][0]
    code, _, err = cli("device", "new", "--profile", "station", "--id", "00c0ffee", "--households", "10", "--lat", "36.67", "--lon", "117.05", 
                       registry=reg)
    assert code == 2 and "never reused" in err


@pytest.fixture(autouse=True)
def _passphrases(monkeypatch):
    """The authority key and bundles are encrypted (issue 14): the passphrases come from the environment."""
    monkeypatch.setenv("GASGUARD_AUTHORITY_PASSPHRASE", "district authority passphrase")
    monkeypatch.setenv("GASGUARD_BUNDLE_PASSPHRASE", "bundle passphrase")


def _bundle_setup(tmp_path):
    reg = tmp_path / "tech.db"
    a = new_device(reg)
    b = new_device(reg, profile="station", households=900)
    auth = tmp_path / "auth" / "authority.pem"
    cli_json("device", "authority-init", "--authority", str(auth))
    return reg, a, b, auth


def test_signed_bundle_loads_into_a_gateway_registry(tmp_path):
    reg, a, b, auth = _bundle_setup(tmp_path)
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600 and b"ENCRYPTED PRIVATE KEY" in auth.read_bytes()
    out = tmp_path / "district.bundle"
    rep = cli_json("device", "export", "--out", str(out), "--authority", str(auth), registry=reg)
    assert rep["devices"] == 2 and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert a.key.hex().encode() not in out.read_bytes()          # sealed: no device key readable in the file
    gw = tmp_path / "gw.db"
    pub = str(auth.with_name("authority.pub.pem"))
    code, o, e = cli("gateway", "import-registry", str(out), "--registry", str(gw), "--trust", pub, "--json")
    assert code == 0, o + e
    assert json.loads(o)["devices"] == 2
    with Registry(gw) as g:
        assert g.get(a.dev_id).key == a.key and g.get(b.dev_id).households == 900
    # the same bundle again is stale: it could bring back a rotated key
    code, _, e = cli("gateway", "import-registry", str(out), "--registry", str(gw), "--trust", pub)
    assert code == 2 and "not after the bundle already loaded" in e
    # the gateway's record: each new device, and the refusal
    from gasguard.authority import audit as A
    recs = A.show(tmp_path / "audit", category="registry")
    assert [r["type"] for r in recs] == ["device_added", "device_added", "bundle_loaded", "bundle_refused"]


def test_a_bundle_needs_its_passphrase_and_the_authority_key_its_own(tmp_path, monkeypatch):
    reg, a, b, auth = _bundle_setup(tmp_path)
    out = tmp_path / "district.bundle"
    cli_json("device", "export", "--out", str(out), "--authority", str(auth), registry=reg)
    pub = str(auth.with_name("authority.pub.pem"))
    monkeypatch.setenv("GASGUARD_BUNDLE_PASSPHRASE", "guessed")
    code, _, e = cli("gateway", "import-registry", str(out), "--registry", str(tmp_path / "gw.db"), "--trust", pub)
    assert code == 2 and "wrong passphrase" in e
    monkeypatch.setenv("GASGUARD_AUTHORITY_PASSPHRASE", "guessed")
    code, _, e = cli("device", "export", "--out", str(tmp_path / "x.bundle"), "--authority", str(auth), registry=reg)
    assert code == 2 and "wrong passphrase" in e and not (tmp_path / "x.bundle").exists()


def test_tampered_or_foreign_bundles_are_refused_and_change_nothing(tmp_path):
    reg, a, _, auth = _bundle_setup(tmp_path)
    out = tmp_path / "district.bundle"
    cli_json("device", "export", "--out", str(out), "--authority", str(auth), registry=reg)
    from gasguard.authority.secretfile import unseal
    doc = json.loads(unseal(out.read_bytes(), b"bundle passphrase"))   # the insider who knows the passphrase
    body = json.loads(base64.b64decode(doc["payload"]))
    body["devices"][0]["key"] = "00" * 16                        # an attacker's key for a real device
    doc["payload"] = base64.b64encode(json.dumps(body, sort_keys=True).encode()).decode()
    bad = tmp_path / "tampered.bundle"
    bad.write_text(json.dumps(doc))
    gw = tmp_path / "gw.db"
    pub = str(auth.with_name("authority.pub.pem"))
    code, _, e = cli("gateway", "import-registry", str(bad), "--registry", str(gw), "--trust", pub)
    assert code == 2 and "signature does not verify" in e
    other = tmp_path / "other" / "authority.pem"
    cli_json("device", "authority-init", "--authority", str(other))
    code, _, e = cli("gateway", "import-registry", str(out), "--registry", str(gw), "--trust",
                     str(other.with_name("authority.pub.pem")))
    assert code == 2 and "this gateway trusts" in e
    with Registry(gw) as g:
        assert g.count() == 0


def test_every_command_has_help_with_examples():
    from gasguard.gateway.cli import import_registry
    for name, cmd in list(device.commands.items()) + [("import-registry", import_registry)]:
        text = cmd.get_help(click.Context(cmd, info_name=name))
        assert "Examples:" in text and f"gasguard " in text, name


def test_a_key_leaves_the_registry_only_when_asked_by_name_and_0600(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    d = f"{dev.dev_id:08x}"
    code, _, err = cli("device", "export-key", d, registry=reg)
    assert code == 2 and "--out FILE" in err
    out = tmp_path / "k" / "dev.key"
    code, stdout, _ = cli("device", "export-key", d, "--out", str(out), registry=reg)
    assert code == 0 and dev.key.hex() not in stdout
    assert out.read_text().strip() == dev.key.hex() and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert cli("device", "export-key", d, "--print", registry=reg)[1].strip() == dev.key.hex()
    with Registry(reg) as r:
        assert [h["action"] for h in r.history(dev.dev_id)] == ["new", "export-key", "export-key"]
        assert dev.key.hex() not in json.dumps(r.history(dev.dev_id))


def test_radio_settings_at_creation_are_checked_and_kept(tmp_path):
    reg = tmp_path / "reg.db"
    code, _, err = cli("device", "new", "--profile", "household", "--set", "radio.uart=0", "--lat", "36.67", "--lon", "117.05", registry=reg)
    assert code == 2 and "USB console" in err
    made = cli_json("device", "new", "--profile", "household", "--set", "radio.baud=9600", "--lat", "36.67", "--lon", "117.05", registry=reg)
    with Registry(reg) as r:
        assert r.get(int(made["dev"], 16)).config["radio"] == {"uart": 1, "baud": 9600}


def test_calibration_accepts_a_reading_only_once_a_whole_window_is_stable(monkeypatch):
    from gasguard.provisioning import calibration
    windows = iter([[8000, 8400, 8100] * 3 + [8000], [8100, 8160] * 5, [8100, 8101] * 5])
    monkeypatch.setattr(calibration, "window", lambda board, pin: next(windows))
    assert calibration.settle(None, 1, "zero") == 8130          # the first window within 96 counts
    t = iter(range(0, 1000, 50))
    monkeypatch.setattr(calibration, "window", lambda board, pin: [8000, 8500])
    with pytest.raises(ProvisioningError, match="did not settle within 120 s"):
        calibration.settle(None, 1, "span", clock=lambda: next(t))


def test_a_port_held_by_another_program_is_reported_busy_with_the_fix(tmp_path):
    import os
    import serial
    master, slave = os.openpty()
    path = os.ttyname(slave)
    reg = tmp_path / "reg.db"
    dev = new_device(reg)
    holder = serial.Serial(path, exclusive=True)        # e.g. the gateway's serial input
    try:
        code, _, err = cli("device", "config", f"{dev.dev_id:08x}", "--port", path, registry=reg)
    finally:
        holder.close()
        os.close(master)
        os.close(slave)
    assert code == 1 and "is busy" in err and f"fuser {path}" in err


def test_show_gives_the_entry_and_history_without_the_key(tmp_path):
    reg = tmp_path / "reg.db"
    dev = new_device(reg, site_name="Lane 3")
    cli("device", "config", f"{dev.dev_id:08x}", "report_s=600", "--registry-only", registry=reg)
    code, out, _ = cli("device", "show", f"{dev.dev_id:08x}", registry=reg)
    assert code == 0 and "Lane 3" in out and "new" in out and "config" in out and dev.key.hex() not in out
    got = cli_json("device", "show", f"{dev.dev_id:08x}", registry=reg)
    assert got["device"]["config"]["report_s"] == 600 and [h["action"] for h in got["history"]] == ["new", "config"]


def test_a_schema_1_registry_is_upgraded_in_place_and_still_readable_before(tmp_path):
    import sqlite3
    p = tmp_path / "old.db"
    dev = new_device(p)
    db = sqlite3.connect(p)
    db.executescript("DROP TABLE device_log; UPDATE meta SET v = '1' WHERE k = 'schema_version';")
    db.commit()
    db.close()
    with Registry(p, readonly=True) as r:                       # a gateway that reads it untouched
        assert r.get(dev.dev_id).key == dev.key and r.history(dev.dev_id) == []
    with Registry(p) as r:                                       # the technician's CLI upgrades it
        assert r.meta_get("schema_version") == "2"
        r.log(dev.dev_id, "flash", {"port": "/dev/ttyUSB0"})
        assert r.history(dev.dev_id)[0]["action"] == "flash"


def test_a_board_without_room_for_the_application_is_refused_before_writing():
    from gasguard.provisioning import flashing

    class Full:                                  # only the board's answer to the space query is faked
        def eval_code(self, code):
            assert "statvfs" in code
            return (20000, 5000)                 # bytes free, bytes of an older application

    items = flashing.application(False)
    with pytest.raises(ProvisioningError, match="flash with --compile"):
        flashing.check_space(Full(), items)
    small = flashing.application(True)
    assert sum(len(i.data) for i in small) < 0.5 * sum(len(i.data) for i in items)
