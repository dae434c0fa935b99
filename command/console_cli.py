"""`gasguard command ...`: the district command's console.

Thin: parse, call command/console.py, print. Exit 0 ok, 1 operational error (broker, timeout, unknown
incident), 2 bad usage.
"""

import getpass
import json
import sys

import click

_OPTS = [
    click.option("--host", default="127.0.0.1", show_default=True, help="MQTT broker host"),
    click.option("--port", default=1883, show_default=True, type=int, help="MQTT broker port"),
    click.option("--district", default="lixia", show_default=True, help="district topic segment"),
    click.option("--timeout", default=10.0, show_default=True, type=float, help="seconds to wait for answers"),
    click.option("--city", is_flag=True, help="the city's view: incidents routed to the city topic (level III+)"),
]


def _common(f):
    for opt in reversed(_OPTS):
        f = opt(f)
    return f


def _client(host, port, district, timeout, city=False):
    from gasguard.command.console import CommandClient
    return CommandClient(host, port, district, city=city).connect(timeout)


def _fail(e) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(1)


@click.group()
def command():
    """District console: watch incidents, acknowledge them, read draft reports."""


@command.command()
@_common
@click.option("--by", default=None, help="name recorded with acknowledgements (default: login name)")
@click.option("--refresh", default=1.0, show_default=True, type=float, help="seconds between redraws")
def watch(host, port, district, timeout, city, by, refresh):
    """Live view of open incidents (? help, j/k select, a acknowledge, i input, r report, q quit)."""
    from gasguard.command.console import ConsoleError
    from gasguard.command.watch import WatchApp
    try:
        with _client(host, port, district, timeout, city) as client:
            WatchApp(client, by=by or getpass.getuser(), refresh=refresh, confirm_timeout=timeout).run()
    except ConsoleError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


@command.command("list")
@_common
@click.option("--wait", default=2.0, show_default=True, type=float, help="seconds to collect incidents")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_(host, port, district, timeout, city, wait, as_json):
    """Incidents the gateway holds now (asks it to re-publish them)."""
    import time

    from rich.console import Console

    from gasguard.command.console import ConsoleError, render_board
    try:
        with _client(host, port, district, timeout, city) as client:
            time.sleep(wait)
            rows = client.board.rows(time.time())
            if as_json:
                click.echo(json.dumps([{k: m[k] for k in ("incident_id", "revision", "status", "level", "warning",
                                                         "projected", "households", "acked", "escalation",
                                                         "deadlines", "title")} for m in rows], ensure_ascii=False))
            else:
                Console().print(render_board(client.board, time.time(), district=district))
    except ConsoleError as e:
        _fail(e)


@command.command()
@_common
@click.argument("incident_id")
@click.option("--json", "as_json", is_flag=True, help="the full JSON publication instead of the Chinese text")
def report(host, port, district, timeout, city, incident_id, as_json):
    """Print the draft report (plan 4.1.3) of one incident."""
    from gasguard.command.console import ConsoleError
    try:
        with _client(host, port, district, timeout, city) as client:
            m = client.wait_for(incident_id, timeout)
    except ConsoleError as e:
        _fail(e)
    click.echo(json.dumps(m, ensure_ascii=False, indent=2) if as_json else m["text_zh"])


@command.command()
@_common
@click.argument("incident_id")
@click.option("--by", default=None, help="name recorded with the acknowledgement (default: login name)")
@click.option("--json", "as_json", is_flag=True, help="print the acknowledged incident as JSON")
def ack(host, port, district, timeout, city, incident_id, by, as_json):
    """Acknowledge an incident (stops its escalation); waits until the gateway confirms it."""
    from gasguard.command.console import ConsoleError
    try:
        with _client(host, port, district, timeout, city) as client:
            m = client.wait_for(incident_id, timeout)
            client.ack(incident_id, by or getpass.getuser(), m["revision"], timeout)
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
@click.option("--by", default=None, help="who reports it (default: login name)")
@click.option("--json", "as_json", is_flag=True, help="print the re-graded incident as JSON")
def input_(host, port, district, timeout, city, incident_id, fields, by, as_json):
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
    payload["by"] = by or getpass.getuser()
    problems = R.validate_operator_input(payload)
    if problems:
        click.echo("error: " + "; ".join(problems), err=True)
        sys.exit(2)
    try:
        with _client(host, port, district, timeout, city) as client:
            m = client.wait_for(incident_id, timeout)
            client.send_input(incident_id, payload, timeout)
            done = client.wait_for(incident_id, timeout, lambda x: x["revision"] > m["revision"])
    except ConsoleError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({k: done[k] for k in ("incident_id", "revision", "status", "level", "warning",
                                                    "projected")}, ensure_ascii=False))
    else:
        click.echo(f"{incident_id}: level {done['level']} warning {done['warning']} (revision {done['revision']})")


def _web_group():
    from gasguard.command.web.cli import web
    return web


command.add_command(_web_group(), "web")
