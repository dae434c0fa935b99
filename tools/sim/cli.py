"""`gasguard sim ...`: virtual boards and the fleet simulator."""

import click

from gasguard.tools.demo.cli import demo
from gasguard.tools.sim.district_cli import district
from gasguard.tools.sim.fleet_cli import fleet
from gasguard.tools.sim.vboard_cli import vboard


@click.group()
def sim():
    """Virtual boards (the real firmware in MicroPython) and the simulated district."""


sim.add_command(district)
sim.add_command(fleet)
sim.add_command(vboard)
sim.add_command(demo)
