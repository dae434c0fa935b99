"""`gasguard gateway ...`: run and check the substation daemon."""

import click


@click.group()
def gateway():
    """The substation gateway daemon: ingest, verify, spool, publish."""
