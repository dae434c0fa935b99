"""`gasguard device ...`: the technicians' commands (thin: parse, validate, call the library, print)."""

import click


@click.group()
def device():
    """Technician CLI: device identities, keys, registry, flashing, configuration, calibration."""
