"""`gasguard sim vboard`: start a virtual board (the real firmware in MicroPython) on a pty."""

import sys
from pathlib import Path

import click


@click.command("vboard")
@click.option("--flash", "flash", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the board's flash folder on the host (created if missing; flash it with mpremote or "
                   "`gasguard device ...`)")
@click.option("--ctl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="control socket path (default: a new temp dir; printed on stdout)")
@click.option("--virtual-clock", is_flag=True, help="time advances only through the control channel")
@click.option("--info", type=click.Path(dir_okay=False), default=None, help="also write the JSON info line here")
def vboard(flash, ctl, virtual_clock, info):
    """Run a virtual board until interrupted. Prints one JSON line: {"pty", "ctl", "flash", "pid"}.

    Open the pty like /dev/ttyUSB0 (pyserial, mpremote, the gateway); drive the analog front end, the power
    and the clock over the control socket (JSON lines; see firmware/README.md).
    """
    from gasguard.tools.sim import micropython
    from gasguard.tools.sim import vboard as vb

    why = micropython.available()
    if why:
        click.echo(f"error: {why}", err=True)
        sys.exit(1)
    args = ["--flash", str(flash)]
    if ctl:
        args += ["--ctl", str(ctl)]
    if virtual_clock:
        args.append("--virtual-clock")
    if info:
        args += ["--info", info]
    sys.exit(vb.main(args))
