"""`gasguard sim ...`: virtual boards and the fleet simulator."""

import click

from gasguard.tools.district_cli import district
from gasguard.tools.fleet_cli import fleet
from gasguard.tools.vboard_cli import vboard


@click.group()
def sim():
    """Virtual boards (the real firmware in MicroPython) and the simulated district."""


@sim.command("demo")
@click.option("--nodes", default=5, show_default=True, help="simulated household nodes")
def demo(nodes):
    """The main demonstration (make demo)."""
    from gasguard.tools.protocol_demo import run_demo

    run_demo(nodes)


sim.add_command(district)
sim.add_command(fleet)
sim.add_command(vboard)
