"""`gasguard command ...`: the district command's console.

Thin: parse, call command/console.py, print. Exit 0 ok, 1 operational error (broker, timeout, unknown
incident, a refusal by the gateway), 2 bad usage.

Every subcommand logs in and uses TLS as mosquitto_sub does (-u/--username, -P/--password or
GASGUARD_MQTT_PASSWORD, --cafile, --cert, --key). Acts (ack, input, watch) are signed as the operator
(--operator, --operator-key, passphrase from GASGUARD_OPERATOR_PASSPHRASE or --passphrase-file): the gateway
records the verified operator as who acted and refuses anything else (issue 14).
"""

import contextlib
import getpass
import json
import logging
import sys

import click

_OPTS = [
    click.option("--host", "-h", default="127.0.0.1", show_default=True, help="MQTT broker host"),
    click.option("--port", "-p", default=1883, show_default=True, type=int, help="MQTT broker port (8883 with TLS)"),
    click.option("--username", "-u", envvar="GASGUARD_MQTT_USERNAME", default=None,
                 help="broker login (env GASGUARD_MQTT_USERNAME)"),
    click.option("--password", "-P", envvar="GASGUARD_MQTT_PASSWORD", default=None,
                 help="broker password (prefer env GASGUARD_MQTT_PASSWORD: arguments show in ps)"),
    click.option("--cafile", type=click.Path(dir_okay=False, exists=True), default=None,
                 help="CA of the broker's certificate: connect with TLS"),
    click.option("--cert", type=click.Path(dir_okay=False, exists=True), default=None, help="client certificate"),
    click.option("--key", type=click.Path(dir_okay=False, exists=True), default=None, help="client key"),
    click.option("--operator", envvar="GASGUARD_OPERATOR", default=None,
                 help="your operator id in the district's roster (env GASGUARD_OPERATOR)"),
    click.option("--operator-key", envvar="GASGUARD_OPERATOR_KEY", type=click.Path(dir_okay=False), default=None,
                 help="your key file from 'gasguard authority key-init' (env GASGUARD_OPERATOR_KEY)"),
    click.option("--passphrase-file", type=click.Path(dir_okay=False), default=None,
                 help="first line: your key's passphrase (or env GASGUARD_OPERATOR_PASSPHRASE, or a prompt)"),
    click.option("--district", default="lixia", show_default=True, help="district topic segment"),
    click.option("--timeout", default=10.0, show_default=True, type=float, help="seconds to wait for answers"),
    click.option("--city", is_flag=True, help="the city's view: incidents routed to the city topic (level III+)"),
]


def _common(f):
    for opt in reversed(_OPTS):
        f = opt(f)
    return f


def _client(o: dict, sign: bool = False):
    """A connected CommandClient from the common options; `sign`: load the operator's key (exit 2 without)."""
    from gasguard.command.console import BrokerLogin, CommandClient, Signer
    signer = None
    if sign:
        if not o["operator"] or not o["operator_key"]:
            click.echo("error: acts are signed: give --operator ID and --operator-key FILE (env GASGUARD_OPERATOR, "
                       "GASGUARD_OPERATOR_KEY); an admin adds you with 'gasguard authority add'", err=True)
            sys.exit(2)
        from gasguard.authority.cli import load_operator_key
        from gasguard.authority.errors import AuthorityError
        try:
            signer = Signer(o["operator"], load_operator_key(o["operator_key"], o["passphrase_file"]))
        except AuthorityError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
    login = BrokerLogin(o["username"], o["password"], o["cafile"], o["cert"], o["key"])
    return CommandClient(o["host"], o["port"], o["district"], city=o["city"], login=login,
                         signer=signer).connect(o["timeout"])     # once: `with` on it does not connect again


def _fail(e) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["--help"]})   # -h is the broker host, as in mosquitto_sub
def command():
    """District console: watch incidents, acknowledge them, read draft reports."""


@command.command()
@_common
@click.option("--refresh", default=1.0, show_default=True, type=float, help="seconds between redraws")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="the console's log file (appended to; created 0600) [default: $XDG_STATE_HOME/gasguard/watch.log, "
                   "else ~/.local/state/gasguard/watch.log]")
def watch(refresh, log_path, **o):
    """Live view of open incidents (? help, j/k select, a acknowledge, i input, r report, q quit); acts signed
    as you. Its log (e.g. what the broker refuses this console and what to ask its admin) goes to a file, named
    in its help: the terminal is the board's."""
    from gasguard import logs
    from gasguard.command.console import ConsoleError
    from gasguard.command.watch import WatchApp
    log_path = str(log_path or logs.user_state_file("watch.log"))
    logged = contextlib.ExitStack()
    try:
        logged.enter_context(logs.to_file(log_path))
    except OSError as e:
        click.echo(f"error: cannot write the console's log {log_path} ({e.strerror or e}): give --log FILE", err=True)
        sys.exit(2)
    with logged:                # the logging as it was once the board is gone
        logging.getLogger("gasguard.command").info("watch started", extra=logs.fields(
            operator=o["operator"], district=o["district"], broker=f"{o['host']}:{o['port']}",
            username=o["username"]))
        try:
            with _client(o, sign=True) as client:
                WatchApp(client, by=o["operator"], refresh=refresh, confirm_timeout=o["timeout"],
                         log_path=log_path).run()
        except ConsoleError as e:
            _fail(e)
        except KeyboardInterrupt:
            pass
    sys.exit(0)


@command.command("list")
@_common
@click.option("--wait", default=2.0, show_default=True, type=float, help="seconds to collect incidents")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_(wait, as_json, **o):
    """Incidents the gateway holds now (asks it to re-publish them), and which the command service holds
    shelved (its retained command/shelves): who shelved each, until when and why."""
    import time

    from rich.console import Console

    from gasguard.command.console import ConsoleError, render_board
    try:
        with _client(o) as client:
            time.sleep(wait)
            now = time.time()
            rows = client.board.rows(now)
            if as_json:       # "shelf": the command service's shelf while it holds (who, why, until), else null
                click.echo(json.dumps([{**{k: m[k] for k in ("incident_id", "revision", "status", "level", "warning",
                                                            "projected", "households", "acked", "escalation",
                                                            "deadlines", "title")},
                                        "shelf": client.board.holding(m, now)} for m in rows], ensure_ascii=False))
            else:
                Console().print(render_board(client.board, now, district=o["district"]))
    except ConsoleError as e:
        _fail(e)


@command.command()
@_common
@click.argument("incident_id")
@click.option("--json", "as_json", is_flag=True, help="the full JSON publication instead of the Chinese text")
def report(incident_id, as_json, **o):
    """Print the draft report (plan 4.1.3) of one incident."""
    from gasguard.command.console import ConsoleError
    try:
        with _client(o) as client:
            m = client.wait_for(incident_id, o["timeout"])
    except ConsoleError as e:
        _fail(e)
    click.echo(json.dumps(m, ensure_ascii=False, indent=2) if as_json else m["text_zh"])


@command.command()
@_common
@click.argument("incident_id")
@click.option("--json", "as_json", is_flag=True, help="print the acknowledged incident as JSON")
def ack(incident_id, as_json, **o):
    """Acknowledge an incident (stops its escalation), signed as you; waits until the gateway confirms it."""
    from gasguard.command.console import ConsoleError
    timeout = o["timeout"]
    try:
        with _client(o, sign=True) as client:
            m = client.wait_for(incident_id, timeout)
            client.ack(incident_id, None, m["revision"], timeout, confirm=True)
            done = client.wait_for(incident_id, timeout, lambda x: bool(x.get("acked")) and x["revision"] > m["revision"])
    except ConsoleError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({"incident_id": incident_id, "revision": done["revision"], "acked": done["acked"]},
                              ensure_ascii=False))
    else:
        click.echo(f"{incident_id} acknowledged by {done['acked']['by']} (revision {done['revision']})")


@command.command("input")
@_common
@click.argument("incident_id")
@click.argument("fields", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="print the re-graded incident as JSON")
def input_(incident_id, fields, as_json, **o):
    """Send operator facts (re-grades): FIELDS like deaths=0 evacuated=300 note='...'.

    Numbers: deaths, serious_injuries, direct_loss_cny, evacuated, forecast_excess_pct. Text: secondary_hazards,
    hazard_sources_nearby, warnings_issued, support_needed, on_site_lead, note. Yes/no: evacuation_advised,
    resolved (closes the incident with a final report)."""
    from gasguard.grading import report as R
    from gasguard.command.console import ConsoleError, parse_fields
    try:
        payload = parse_fields(fields)
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    payload["by"] = o["operator"] or getpass.getuser()     # the gateway records the verified signer instead
    problems = R.validate_operator_input(payload)
    if problems:
        click.echo("error: " + "; ".join(problems), err=True)
        sys.exit(2)
    try:
        timeout = o["timeout"]
        with _client(o, sign=True) as client:
            m = client.wait_for(incident_id, timeout)
            client.send_input(incident_id, payload, timeout, confirm=True)
            done = client.wait_for(incident_id, timeout, lambda x: x["revision"] > m["revision"])
    except ConsoleError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({k: done[k] for k in ("incident_id", "revision", "status", "level", "warning",
                                                    "projected")}, ensure_ascii=False))
    else:
        click.echo(f"{incident_id}: level {done['level']} warning {done['warning']} (revision {done['revision']})")


@command.command("node")
@_common
@click.argument("gateway")
@click.argument("dev")
@click.argument("cmd", type=click.Choice(["reset", "set_param", "status", "selftest"]))
@click.option("--param", type=int, default=None, help="set_param: parameter id (1-255)")
@click.option("--value", type=int, default=None, help="set_param: value in wire units (0-65535)")
@click.option("--mask", type=int, default=None, help="selftest: 1 valve, 2 sensor, 4 link (default 7)")
@click.option("--ttl", type=float, default=None, help="seconds the gateway keeps trying (default its own)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def node(gateway, dev, cmd, param, value, mask, ttl, as_json, **o):
    """Command a node through its gateway, signed as you (engineers: reset, set_param, selftest, status).

    A reset re-opens a latched valve: the node itself still refuses while gas is present. Exit 0 when the
    node acked ok, 1 when it refused, timed out, or the gateway refused the request (the reason is printed).

    \b
    Example:
      gasguard command node gw-1 00c0ffee reset --operator li.na --operator-key ~/li.key
    """
    import uuid

    from gasguard.command.console import ConsoleError
    try:
        dev_id = int(dev, 16)
    except ValueError:
        click.echo(f"error: device {dev!r}: 8 hex digits as on its label, e.g. 00c0ffee", err=True)
        sys.exit(2)
    req = {"request_id": f"{o['operator'] or 'cli'}-{uuid.uuid4().hex[:12]}", "cmd": cmd}
    for k, v in (("param", param), ("value", value), ("mask", mask), ("ttl_s", ttl)):
        if v is not None:
            req[k] = v
    try:
        with _client(o, sign=True) as client:
            res = client.node_command(gateway, dev_id, req, o["timeout"])
    except ConsoleError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(res, ensure_ascii=False))
    else:
        why = f" ({res.get('detail')})" if res.get("detail") else ""
        click.echo(f"{cmd} {dev_id:08x} via {gateway}: {res['result']}{why}")
    sys.exit(0 if res["result"] == "ok" else 1)


def _web_group():
    from gasguard.command.web.cli import web
    return web


command.add_command(_web_group(), "web")
