"""`gasguard sim demo` (what `make demo` runs): thin, over tools/demo/run.py. Exit 0 when the story's checks
all passed, 1 when one failed or something could not start, 2 bad options, 128 + the signal when stopped by
Ctrl-C, SIGTERM or SIGHUP (a closed terminal): everything is stopped first."""

import signal
import sys

import click


@click.command("demo")
@click.option("--speed", type=click.FloatRange(min=1), default=None,
              help="demo seconds per wall second [default: 30, --fast 120]")
@click.option("--duration", type=click.FloatRange(min=60), default=3600.0, show_default=True,
              help="demo seconds at most: the story stops where it is after this")
@click.option("--fast", is_flag=True, help="CI: faster clock, fewer nodes, no pauses; the same story and checks")
@click.option("--no-tui", is_flag=True, help="plain log lines instead of the live console (the default when "
                                             "stdout is not a terminal)")
@click.option("--keep", is_flag=True, help="keep the working folder (registry, spool, gateway and broker logs)")
@click.option("--households", type=click.IntRange(1, 50_000), default=None,
              help="simulated household-meter nodes [default: 2,000, --fast 200]")
@click.option("--boards", type=click.IntRange(1, 4), default=2, show_default=True,
              help="virtual boards running the real firmware (board 1 leaks, board 2 sits under the trip)")
@click.option("--broker", metavar="HOST:PORT", default=None,
              help="use this running MQTT broker instead of starting mosquitto (or amqtt)")
@click.option("--hold", is_flag=True, help="after the story keep everything running (the web console to look "
                                           "around in) until Ctrl-C; the checks are then printed as usual")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="working folder (default: a new temporary one, removed at exit unless --keep)")
def demo(speed, duration, fast, no_tui, keep, households, boards, broker, hold, workdir):
    """The simulated district end to end: a leak, a station trip, escalation, acknowledgement (tools/demo/README.md)."""
    from pathlib import Path

    from gasguard.tools.demo.run import Demo, DemoError, DemoOptions
    from gasguard.tools.demo.view import LogView, TuiView

    kw = {k: v for k, v in dict(speed=speed, households=households).items() if v is not None}
    kw.update(duration=duration, boards=boards, broker=broker, keep=keep, hold=hold,
              workdir=Path(workdir) if workdir else None)
    opts = DemoOptions.fast(**kw) if fast else DemoOptions(**kw)
    if broker and ":" not in broker:
        raise click.BadParameter("write HOST:PORT, e.g. 127.0.0.1:1883", param_hint="--broker")
    view = LogView() if no_tui or not sys.stdout.isatty() else TuiView()
    stopped = {}

    with view:
        d = Demo(opts, view)

        def on_signal(sig, _frame):
            stopped["sig"] = sig
            d.stop()
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # SIGHUP: the terminal closed
            signal.signal(s, on_signal)
        try:
            checks = d.run()
        except DemoError as e:
            checks, error = None, str(e)
    if checks is None:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if "sig" in stopped and not d.story_done:
        click.echo(f"stopped by {signal.Signals(stopped['sig']).name}: broker, gateway, boards and fleet are down",
                   err=True)
        sys.exit(128 + stopped["sig"])
    click.echo("story checks:")
    for c in checks.values():
        click.echo(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    # valve, leak, trip, board 2's UPSO (with 2 boards), an escalation and an ack for each incident, the web console
    expected = 3 + (opts.boards > 1) + 2 * 2 + 1
    if len(checks) < expected or not all(c.ok for c in checks.values()):
        click.echo(f"the story did not complete ({sum(c.ok for c in checks.values())} of {expected} checks passed); "
                   f"rerun with --keep and read the gateway log in the working folder", err=True)
        sys.exit(1)
    if keep:
        click.echo(f"working folder kept: {d.dir}")
