"""`gasguard command ...`: the district command's console."""

import click


@click.group()
def command():
    """District console: watch incidents, acknowledge them, read draft reports."""
