"""`gasguard device ...`: the technicians' commands (thin: parse, validate, call the library, print).

Exit codes: 0 ok, 1 operational error (port, board, files), 2 bad input (caught before any port opens).
The interfaces of `flash` and `config` are used by the HIL suite: keep them stable (provisioning/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

import click

from gasguard.authority.errors import AuthorityError
from gasguard.registry import Registry, RegistryError

from . import bundle, configure, identity, keys, ports, settings
from .errors import BadInput, ProvisioningError

DATA = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "gasguard"
CONF = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "gasguard"


def _fail(ctx_json: bool, e: Exception, code: int):
    if ctx_json:
        click.echo(json.dumps({"ok": False, "error": str(e), "exit": code}))
    click.echo(f"error: {e}", err=True)
    sys.exit(code)


def command(fn):
    """Map library errors to exit codes (and a JSON error object under --json)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        as_json = kw.get("as_json", False)
        try:
            return fn(*a, **kw)
        except (ProvisioningError, AuthorityError) as e:     # keys and secrets are the authority library's
            _fail(as_json, e, e.exit_code)
        except RegistryError as e:
            _fail(as_json, e, 2)
        except KeyboardInterrupt:
            _fail(as_json, Exception("interrupted: run the command again to finish"), 1)
    return wrapper


registry_opt = click.option("--registry", "registry", envvar="GASGUARD_REGISTRY", show_default=True,
                            type=click.Path(dir_okay=False), default=str(DATA / "registry.db"),
                            help="device registry (SQLite, 0600; env GASGUARD_REGISTRY)")
json_opt = click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout, for scripts")
port_opt = click.option("--port", "-p", default="auto", show_default=True, envvar="GASGUARD_PORT",
                        help="serial port of the board (/dev/ttyUSB0, a virtual board's pty) or 'auto' "
                             "(env GASGUARD_PORT)")
baud_opt = click.option("--baud", default=115200, show_default=True, help="console baud rate")
dev_arg = click.argument("dev", metavar="DEV")


def _reg(path) -> Registry:
    """Open (creating) the registry; a new folder for it is the owner's only, like the file (0600)."""
    parent = Path(path).parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)
    return Registry(path)


def _existing_reg(path) -> Registry:
    if not Path(path).exists():
        raise BadInput(f"no registry at {path}: create a device with 'gasguard device new' or pass --registry")
    return Registry(path)


def _choose(found):
    if not sys.stdin.isatty():
        return None
    for i, p in enumerate(found, 1):
        click.echo(f"  {i}) {p}", err=True)
    n = click.prompt("Which port is the board on", type=click.IntRange(1, len(found)), err=True)
    return found[n - 1]


def _open(port, baud):
    from .board import Board
    return Board(ports.resolve(port, _choose), baud)


def _out(as_json, obj, lines=()):
    if as_json:
        click.echo(json.dumps(obj, sort_keys=True, default=str))
    else:
        for line in lines:
            click.echo(line)


class _Steps:
    """Progress on stderr (nothing under --json): a bar for the bytes written, then one for each phase that
    follows (verify, reboot, the BOOT wait with its countdown), each phase also said on a line of its own so
    a log of the session shows where it stopped."""

    PHASES = {"verify": "verifying", "reboot": "rebooting", "boot": "waiting for BOOT"}

    def __init__(self, bar, task):
        self.bar, self.task, self.phase = bar, task, None

    def bytes(self, n, total, name):
        self.bar.update(self.task, completed=n, total=total, description=name.rsplit("/", 1)[-1],
                        detail=f"{n:,}/{total:,} bytes")

    def step(self, phase, done=1, total=1):
        if phase != self.phase:
            self.phase = phase
            self.bar.console.print({"verify": "verifying every file by SHA-256 on the board",
                                    "reboot": "rebooting into the firmware",
                                    "boot": f"waiting up to {total:.0f} s for the node's BOOT event"}[phase])
        detail = (f"{done}/{total} files" if phase == "verify" else f"{done:.0f} s left" if phase == "boot" else "")
        self.bar.update(self.task, description=self.PHASES[phase], completed=(total - done) if phase == "boot"
                        else done, total=total, detail=detail)


@contextlib.contextmanager
def _progress(as_json, what):
    """Yields a _Steps (None under --json)."""
    if as_json:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn
    with Progress(TextColumn("{task.description:16}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  console=Console(stderr=True)) as bar:
        yield _Steps(bar, bar.add_task(what, total=1, detail=""))


@click.group()
def device():
    """Technician CLI: device identities, keys, registry, flashing, configuration, calibration.

    \b
    A full provisioning, as at the bench:
      gasguard device new --profile household --board esp32 --site "Block 7, flat 302" --households 1
      gasguard device flash 00c0ffee --port auto --compile
      gasguard device monitor --port auto --duration 30
      gasguard device config 00c0ffee gas_l1=120 --port auto
      gasguard device calibrate 00c0ffee --span-gas 500 --port auto
      gasguard device selftest 00c0ffee --port auto
      gasguard device export --out district.bundle
    Exit codes: 0 ok, 1 operational error, 2 bad input.
    """


@device.command("new")
@click.option("--profile", type=click.Choice(["household", "station"]), required=True,
              help="household meter or regulator station")
@click.option("--board", default="esp32", show_default=True, type=click.Choice(["esp32", "rp2040", "virtual"]))
@click.option("--id", "dev_id", help="device id (8 hex digits); default: a random unused one")
@click.option("--site", "site_name", default="", help="site name as the dispatcher says it")
@click.option("--address", default="", help="street address")
@click.option("--lat", type=float, help="latitude, decimal degrees (WGS 84)")
@click.option("--lon", type=float, help="longitude, decimal degrees (WGS 84)")
@click.option("--households", default=0, show_default=True, help="households served (stations: all fed by it)")
@click.option("--user-class", default="residential", show_default=True,
              help="residential, public_welfare, transport, commercial, industrial (plan 5.1.2)")
@click.option("--pressure-class", default="low", show_default=True,
              help="inlet network class (GB 50028): high_a .. medium_b, low")
@click.option("--key-area", is_flag=True, help="school, hospital, care home... (plan 3.3: warnings one level up)")
@click.option("--upstream", help="id of the station that feeds this device")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="initial setting (as for 'device config'), repeatable")
@registry_opt
@json_opt
@command
def new(profile, board, dev_id, site_name, address, lat, lon, households, user_class, pressure_class, key_area,
        upstream, assignments, registry, as_json):
    """Create a device identity and key (OS CSPRNG) and add it to the registry; print the label.

    The key is stored only in the registry (0600) and written to the board by 'device flash'.

    \b
    Examples:
      gasguard device new --profile household --site "Lane 3 No. 12" --lat 36.67 --lon 117.05 --households 1
      gasguard device new --profile station --board esp32 --households 4200 --pressure-class subhigh_b \\
          --set setpoint=2500 --key-area --json
    """
    dev_id = identity.parse_dev_id(dev_id) if dev_id else None
    up = identity.parse_dev_id(upstream) if upstream else None
    params, radio = settings.parse(profile, board, list(assignments))
    identity.check_grading_facts(profile, lat, lon, households)
    with _reg(registry) as reg:
        dev = identity.new(reg, profile=profile, board=board, dev_id=dev_id, site_name=site_name, address=address,
                           lat=lat, lon=lon, households=households, user_class=user_class,
                           pressure_class=pressure_class, key_area=key_area, upstream=up, params=params,
                           radio=radio)
    lab = identity.label(dev)
    _out(as_json, {"ok": True, "dev": f"{dev.dev_id:08x}", "label": lab, "registry": registry},
         ["Device created. Label:", *("  " + x for x in lab),
          f"Next: gasguard device flash {dev.dev_id:08x} --port auto"])


@device.command("list")
@click.option("--all", "show_all", is_flag=True, help="include decommissioned devices")
@registry_opt
@json_opt
@command
def list_(show_all, registry, as_json):
    """The registry's devices (never their keys).

    \b
    Examples:
      gasguard device list
      gasguard device list --all --json
    """
    with _existing_reg(registry) as reg:
        devs = reg.all(include_decommissioned=show_all)
    rows = [d.public() for d in devs]
    _out(as_json, {"ok": True, "devices": rows},
         [f"{'ID':8}  {'PROFILE':9}  {'STATE':14}  KEY  SITE"] +
         [f"{d['dev']}  {d['profile']:9}  {d['state']:14}  v{d['key_version']:<3} {d['site_name']}" for d in rows])


@device.command("show")
@dev_arg
@registry_opt
@json_opt
@command
def show(dev, registry, as_json):
    """One device's registry entry and what technicians did to it (never its key).

    \b
    Examples:
      gasguard device show 00c0ffee
      gasguard device show 00c0ffee --json
    """
    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev), active=False)
        hist = reg.history(d.dev_id)
    pub = d.public()
    _out(as_json, {"ok": True, "device": pub, "history": hist}, identity.describe(pub, hist))


@device.command("flash")
@dev_arg
@port_opt
@baud_opt
@click.option("--compile", "compile_mpy", is_flag=True, help="flash .mpy bytecode made with mpy-cross")
@click.option("--boot-timeout", default=30.0, show_default=True, help="seconds to wait for the BOOT event")
@registry_opt
@json_opt
@command
def flash(dev, port, baud, compile_mpy, boot_timeout, registry, as_json):
    """Put firmware, protocol, configuration and key on a board that runs MicroPython.

    Every file is verified by SHA-256 on the board; then the board is soft-reset and must send a BOOT
    event that verifies with the registry's key. Unchanged files are not rewritten.

    \b
    Examples:
      gasguard device flash 00c0ffee --port /dev/ttyUSB0 --compile
      gasguard device flash 00c0ffee --port auto --json
    """
    from . import flashing
    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev))
        flashing.check(d)
        app = flashing.application(compile_mpy)   # mpy-cross runs before the port is opened
        with _open(port, baud) as b, _progress(as_json, "flashing") as progress:
            rep = flashing.flash(b, d, compile_mpy=compile_mpy, boot_timeout=boot_timeout, app=app,
                                 progress=progress and progress.bytes, step=progress and progress.step)
        reg.update(d.dev_id, state="commissioned")
        gone = reg.get(int(rep["replaced"], 16)) if rep["replaced"] else None
        if gone is not None and gone.active and not as_json:
            click.echo(f"warning: this board was {gone.dev_id:08x}, still active in the registry: retire it with "
                       f"'gasguard device decommission {gone.dev_id:08x} --no-board'", err=True)
        reg.log(d.dev_id, "flash", {k: rep[k] for k in ("port", "files", "bytes", "written", "compiled")})
    boot = rep["boot"]
    _out(as_json, dict(rep, ok=True),
         [f"{rep['files']} files ({rep['bytes']} bytes; {rep['written']} written, {rep['unchanged']} unchanged) "
          f"verified by SHA-256 on {rep['port']}",
          f"booted as {rep['dev']}: firmware {boot['firmware']}, {boot['profile']}, BOOT event verified "
          f"(counter {boot['fcnt']})", "device commissioned"])


@device.command("config")
@dev_arg
@click.argument("assignments", nargs=-1, metavar="[NAME=VALUE]...")
@port_opt
@baud_opt
@click.option("--registry-only", is_flag=True, help="record the change without a board (flash it later)")
@registry_opt
@json_opt
@command
def config(dev, assignments, port, baud, registry_only, registry, as_json):
    """Read or change thresholds, sampling rates and radio settings on a board.

    Values are checked against the firmware's own safe bounds (firmware/bounds.py) before any port is
    opened; a refused value exits 2 and touches nothing. Units: gas 0.1 % LEL, pressure Pa, times ms
    (names ending _s: seconds). Without NAME=VALUE, shows what the board runs and where each value comes
    from (default, config, or a gateway's SET_PARAM override).

    \b
    Examples:
      gasguard device config 00c0ffee --port auto
      gasguard device config 00c0ffee gas_l1=120 report_s=600 --port /dev/ttyUSB0
      gasguard device config 00c0ffee radio.baud=9600 --port auto --json
      gasguard device config 00c0ffee gas_l2=300          # refused: above 25 % LEL for a household
    """
    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev))
        if not assignments:
            if registry_only:
                _out(as_json, {"ok": True, "config": d.config}, [json.dumps(d.config, indent=1, sort_keys=True)])
                return
            with _open(port, baud) as b:
                got = configure.read(b, d)
            _out(as_json, dict(got, ok=True),
                 [f"{k:15} {v!s:8} ({got['source'][k]})" for k, v in sorted(got["params"].items())] +
                 [f"radio.{k:9} {v}" for k, v in sorted(got["radio"].items())])
            return
        new_cfg = configure.plan(d, list(assignments))      # BadInput (exit 2) before any port
        if registry_only:
            reg.update(d.dev_id, config=new_cfg)
            reg.log(d.dev_id, "config", {"registry_only": True, "set": list(assignments)})
            _out(as_json, {"ok": True, "config": new_cfg}, ["recorded; run 'gasguard device flash' to apply"])
            return
        with _open(port, baud) as b:
            rep = configure.apply(b, reg, d, new_cfg)
    _out(as_json, dict(rep, ok=True),
         [f"set {k} = {v}" for k, v in rep["changed"].items()] +
         [f"dropped the gateway's override of {n}" for n in rep["dropped_overrides"]] +
         ["the node rebooted with the new settings; registry updated"])


@device.command("monitor")
@port_opt
@baud_opt
@click.option("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
@click.option("--count", type=int, help="stop after this many frames")
@registry_opt
@json_opt
@command
def monitor(port, baud, duration, count, registry, as_json):
    """Live frames from the board on the port, decoded and verified with the registry's keys.

    Nothing is acked and the firmware keeps running. One line per frame (JSON lines with --json).

    \b
    Examples:
      gasguard device monitor --port auto --duration 60
      gasguard device monitor --port /dev/ttyUSB0 --count 5 --json
    """
    from . import monitor as mon

    def emit(rec):
        if as_json:
            click.echo(json.dumps(rec, sort_keys=True))
        elif "log" in rec:
            click.echo(f"          log   {rec['log']}")
        elif rec["verified"]:
            click.echo(f"{rec['dev']}  #{rec['fcnt']:<6} {rec['text']}")
        else:
            click.echo(f"{rec['dev']}  REJECTED ({rec['reason']}) {rec['type']}")

    with _existing_reg(registry) as reg, _open(port, baud) as b:
        tally = mon.watch(b, reg, duration, count, emit)
    if not as_json:
        click.echo(f"{tally['frames']} frames, {tally['verified']} verified, {tally['rejected']} rejected", err=True)


@device.command("calibrate")
@dev_arg
@click.option("--span-gas", default=500, show_default=True, help="test gas concentration in 0.1 % LEL (500 = 50 % LEL)")
@click.option("--settle", default=120.0, show_default=True, help="seconds to wait for a stable reading")
@click.option("--yes", is_flag=True, help="do not wait for Enter between steps (gas applied by a rig)")
@port_opt
@baud_opt
@registry_opt
@json_opt
@command
def calibrate(dev, span_gas, settle, yes, port, baud, registry, as_json):
    """Guided zero and span calibration of the gas sensor with test gas.

    Prompts for zero gas, then span gas; each reading is accepted only once it is stable. Then the test
    gas must come off (the node would alarm and shut its valve with it on); once the sensor reads clean
    air, the coefficients are stored on the board and in the registry and the node restarts with them.

    \b
    Examples:
      gasguard device calibrate 00c0ffee --span-gas 500 --port auto
      gasguard device calibrate 00c0ffee --span-gas 250 --port /dev/ttyUSB0 --json
    """
    from . import calibration

    calibration.check_span_gas(span_gas)

    def prompt(step, message):
        click.echo(message, err=True)
        if not yes:
            click.prompt("Press Enter when done" if step == "clear" else "Press Enter when the gas flows",
                         default="", show_default=False, err=True)
        click.echo(f"waiting up to {settle:.0f} s for a stable {'clean-air' if step == 'clear' else step} reading "
                   f"(a 1 s window within {calibration.STABLE_COUNTS} counts)", err=True)

    live = sys.stderr.isatty()

    def watch(step, counts, pct_lel, spread, left):
        """The live reading and the countdown: one line rewritten on a terminal, a line each otherwise."""
        if as_json:
            return
        text = (f"  {step:5} {pct_lel:5.1f} % LEL  ({counts} counts, spread {spread}"
                f"{' ok' if spread <= calibration.STABLE_COUNTS else ''})  {left:3.0f} s left")
        click.echo(("\r" + text) if live else text, nl=not live, err=True)

    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev))
        with _open(port, baud) as b:
            rep = calibration.calibrate(b, reg, d, span_gas, prompt, settle, watch=watch)
        if live and not as_json:
            click.echo("", err=True)
    g = rep["gas"]
    _out(as_json, dict(rep, ok=True), [f"zero {g['zero']} counts, span {g['span']} counts at {span_gas / 10:g} % LEL "
                                       f"(sensitivity {rep['sensitivity']:.0%} of nominal): stored on the board "
                                       "and in the registry"])


@device.command("selftest")
@dev_arg
@click.option("--timeout", default=20.0, show_default=True, help="seconds to wait for the node's answer")
@port_opt
@baud_opt
@registry_opt
@json_opt
@command
def selftest(dev, timeout, port, baud, registry, as_json):
    """Valve stroke, sensor check and UART/radio loopback, run by the node; a pass/fail report.

    Exit 0 when every check passes, 1 otherwise. A latched (shut) valve is never stroked open.

    \b
    Examples:
      gasguard device selftest 00c0ffee --port auto
      gasguard device selftest 00c0ffee --port /dev/ttyUSB0 --json
    """
    from . import selftest as st
    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev))
        with _open(port, baud) as b:
            rep = st.run(b, reg, d, timeout)
    _out(as_json, dict(rep, ok=rep["passed"]),
         [f"{label:22} {'PASS' if rep['checks'][name] else 'FAIL'}" for name, _, label in st.CHECKS] +
         [f"round trip {rep['round_trip_ms']} ms" + ("; valve held shut (latched)" if rep["valve_latched"] else ""),
          "SELFTEST PASSED" if rep["passed"] else "SELFTEST FAILED"])
    if not rep["passed"]:
        sys.exit(1)


@device.command("rotate-key")
@dev_arg
@click.option("--registry-only", is_flag=True, help="rotate without the board (it must be re-flashed)")
@port_opt
@baud_opt
@registry_opt
@json_opt
@command
def rotate_key(dev, registry_only, port, baud, registry, as_json):
    """Give a device a new key: on the board and in the registry; frames with the old key are rejected.

    \b
    Examples:
      gasguard device rotate-key 00c0ffee --port auto
      gasguard device rotate-key 00c0ffee --registry-only     # key leaked, board not at hand
    """
    from . import lifecycle
    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev))
        if registry_only:
            rep = lifecycle.rotate_key(reg, d, None)
        else:
            with _open(port, baud) as b:
                rep = lifecycle.rotate_key(reg, d, b)
    _out(as_json, dict(rep, ok=True),
         [f"{rep['dev']} now has key v{rep['key_version']}" +
          (" (on the board, BOOT verified)" if rep["on_board"] else
           f"; the board still has the old one: run 'gasguard device flash {rep['dev']}'"),
          "export a new bundle for the gateways: gasguard device export --out FILE"])


@device.command("decommission")
@dev_arg
@click.option("--reason", default="", help="why (kept in the registry's log)")
@click.option("--no-board", is_flag=True, help="retire in the registry only (board lost or destroyed)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@port_opt
@baud_opt
@registry_opt
@json_opt
@command
def decommission(dev, reason, no_board, yes, port, baud, registry, as_json):
    """Retire a device for good: the gateway rejects its frames; its key and config are wiped from the board.

    \b
    Examples:
      gasguard device decommission 00c0ffee --port auto --reason "meter replaced"
      gasguard device decommission 00c0ffee --no-board --yes --json
    """
    from . import lifecycle
    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev))
        if not yes:
            if as_json or not sys.stdin.isatty():
                raise BadInput(f"decommissioning {d.dev_id:08x} cannot be undone and nobody is at a terminal to "
                               "confirm it: add --yes to the command")
            if not click.confirm(f"Retire {d.dev_id:08x} ({d.site_name or d.profile}) for good?", err=True):
                raise BadInput("not confirmed: nothing changed")
        if no_board:
            rep = lifecycle.decommission(reg, d, None, reason)
        else:
            with _open(port, baud) as b:
                rep = lifecycle.decommission(reg, d, b, reason)
    _out(as_json, dict(rep, ok=True), [f"{rep['dev']} decommissioned" +
                                       (f"; wiped {', '.join(rep['wiped'])} from the board" if rep["wiped"] else ""),
                                       "export a new bundle for the gateways: gasguard device export --out FILE"])


@device.command("export-key")
@dev_arg
@click.option("--out", type=click.Path(dir_okay=False), help="write the key (32 hex digits) to this file, 0600")
@click.option("--print", "to_stdout", is_flag=True, help="print the key on stdout (it ends up in your terminal "
                                                         "history and scrollback)")
@registry_opt
@json_opt
@command
def export_key(dev, out, to_stdout, registry, as_json):
    """Hand out one device's key, only when asked by name: to a 0600 file, or printed with --print.

    For programming a board by other means (a production jig); the export is logged in the registry.

    \b
    Examples:
      gasguard device export-key 00c0ffee --out /secure/00c0ffee.key
      gasguard device export-key 00c0ffee --print
      gasguard device export-key 00c0ffee --out /secure/00c0ffee.key --json
    """
    if bool(out) == bool(to_stdout):
        raise BadInput("say where the key goes: --out FILE (0600) or --print")
    with _existing_reg(registry) as reg:
        d = identity.get(reg, identity.parse_dev_id(dev))
        if out:
            keys.write_secret(out, (d.key.hex() + "\n").encode())
        reg.log(d.dev_id, "export-key", {"to": "stdout" if to_stdout else str(out), "key_version": d.key_version})
    rep = {"ok": True, "dev": f"{d.dev_id:08x}", "key_version": d.key_version}
    if as_json:
        click.echo(json.dumps(dict(rep, key=d.key.hex()) if to_stdout else dict(rep, out=str(out))))
    elif to_stdout:
        click.echo(d.key.hex())
    else:
        click.echo(f"key v{d.key_version} of {d.dev_id:08x} written to {out} (0600)", err=True)


authority_opt = click.option("--authority", envvar="GASGUARD_AUTHORITY", show_default=True,
                             type=click.Path(dir_okay=False), default=str(CONF / "authority.pem"),
                             help="the provisioning authority's Ed25519 private key (0600; env GASGUARD_AUTHORITY)")


auth_pass_opt = click.option("--authority-passphrase-file", type=click.Path(dir_okay=False), default=None,
                             help="first line: the authority key's passphrase (or env GASGUARD_AUTHORITY_PASSPHRASE, "
                             "or a prompt)")
bundle_pass_opt = click.option("--bundle-passphrase-file", type=click.Path(dir_okay=False), default=None,
                               help="first line: the passphrase the bundle is encrypted under (or env "
                               "GASGUARD_BUNDLE_PASSPHRASE, or a prompt); tell it to the gateway's operator apart "
                               "from the bundle")


@device.command("authority-init")
@authority_opt
@auth_pass_opt
@click.option("--force", is_flag=True, help="replace an existing authority key")
@json_opt
@command
def authority_init(authority, authority_passphrase_file, force, as_json):
    """Create the district authority's Ed25519 key (once per district), encrypted under a passphrase; prints
    its public key. It signs registry bundles and the operator roster (gasguard authority ...).

    Give the .pub.pem file (or the hex fingerprint) to every gateway: they accept only bundles it signed.

    \b
    Examples:
      gasguard device authority-init
      gasguard device authority-init --authority /secure/usb/authority.pem --json
    """
    from gasguard.authority.cli import AUTH_PASS_ENV, get_passphrase
    secret = get_passphrase(authority_passphrase_file, AUTH_PASS_ENV, f"new authority key {authority}", confirm=True)
    pub = keys.authority_init(authority, secret, force)
    fp = keys.fingerprint(pub)
    _out(as_json, {"ok": True, "authority": fp, "public": str(keys.public_path(Path(authority)))},
         [f"authority key {authority} (0600, encrypted)", f"public key {keys.public_path(Path(authority))}", f"fingerprint {fp}"])


@device.command("export")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="bundle file to write (0600)")
@click.option("--active-only", is_flag=True, help="leave decommissioned devices out (gateways then forget them)")
@authority_opt
@auth_pass_opt
@bundle_pass_opt
@registry_opt
@json_opt
@command
def export(out, active_only, authority, authority_passphrase_file, bundle_passphrase_file, registry, as_json):
    """Write the registry as a bundle for gateways, signed with the authority's Ed25519 key and encrypted
    under a bundle passphrase (it holds every device key): written 0600; carry it like a key.

    \b
    Examples:
      gasguard device export --out /media/usb/district.bundle
      gasguard gateway import-registry /media/usb/district.bundle --config gateway.toml --trust authority.pub.pem
    """
    from gasguard.authority.cli import load_authority_key
    key = load_authority_key(authority, authority_passphrase_file)
    secret = bundle_passphrase(bundle_passphrase_file, confirm=True)
    with _existing_reg(registry) as reg:
        rep = bundle.export(reg, key, out, include_retired=not active_only, secret=secret)
    _out(as_json, dict(rep, ok=True), [f"{rep['devices']} devices -> {out} (0600, encrypted), signed by "
                                       f"{rep['authority'][:16]}..."])


def bundle_passphrase(file, confirm: bool = False) -> bytes:
    from gasguard.authority.cli import get_passphrase
    return get_passphrase(file, bundle.PASS_ENV, "registry bundle", confirm=confirm)
