"""The `gasguard` command. Each group lives in the package it drives; this file only assembles them."""

import click

from gasguard import __version__
from gasguard.authority.cli import audit, authority
from gasguard.gateway.cli import gateway
from gasguard.command.serve_cli import serve
from gasguard.command.console_cli import command
from gasguard.provisioning.cli import device
from gasguard.tools.bench.cli import bench
from gasguard.tools.sim.cli import sim


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gasguard")
def cli():
    """GasGuard: gas-leak and pressure nodes, substation gateway, district alarm grading.

    \b
    Groups:
      device   technician CLI: keys, registry, flashing, configuration, calibration
      gateway  the substation daemon and its checks
      command  district command: the service (serve), console, incidents, acknowledgements, reports
      sim      virtual boards (real firmware in MicroPython) and the fleet simulator
      bench    benchmarks that print figures
      authority  district operators, their roles and keys; broker access
      audit    the tamper-evident record: verify, show
    """


cli.add_command(device)
cli.add_command(gateway)
command.add_command(serve)
cli.add_command(command)
cli.add_command(sim)
cli.add_command(bench)
cli.add_command(authority)
cli.add_command(audit)


def main():
    cli()


if __name__ == "__main__":
    main()
