"""`gasguard sim ...`: virtual boards and the fleet simulator."""

import click


@click.group()
def sim():
    """Virtual boards (the real firmware in MicroPython) and the simulated district."""


@sim.command("demo")
@click.option("--nodes", default=5, show_default=True, help="simulated household nodes")
def demo(nodes):
    """The main demonstration (make demo)."""
    from gasguard.tools.protocol_demo import run_demo

    run_demo(nodes)

from gasguard.tools.vboard_cli import vboard; sim.add_command(vboard)  # noqa: E402,E702
