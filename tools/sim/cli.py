"""`gasguard sim ...`: virtual boards and the fleet simulator."""

import click

from gasguard.tools.demo_cli import demo
from gasguard.tools.district_cli import district
from gasguard.tools.fleet_cli import fleet
from gasguard.tools.vboard_cli import vboard


@click.group()
def sim():
    """Virtual boards (the real firmware in MicroPython) and the simulated district."""


sim.add_command(district)
sim.add_command(fleet)
sim.add_command(vboard)
sim.add_command(demo)
