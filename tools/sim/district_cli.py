"""`gasguard sim district`: write a registry shaped like the district (tools/sim/district.py)."""

import json
import time

import click

from gasguard.registry import Registry


@click.command("district")
@click.option("--registry", "path", required=True, type=click.Path(dir_okay=False), help="registry file to fill")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.001, 10),
              help="fraction of the district: stations, households served and users scale with it")
@click.option("--seed", default=1, show_default=True, help="same seed, same district")
@click.option("--households", default=2000, show_default=True, type=click.IntRange(0),
              help="household-meter nodes to create (up to the households served, 330,000 at scale 1)")
@click.option("--sim-keys", is_flag=True,
              help="derive keys from the seed so a simulator can hold them without the registry. "
                   "SIMULATION ONLY: real devices never derive keys")
@click.option("--replace", is_flag=True, help="allow writing into a registry that already holds devices")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def district(path, scale, seed, households, sim_keys, replace, as_json):
    """Generate the district's registry: 1,326 regulator stations feeding ~330,000 households (plan 1.5).

    \b
    Example:
      gasguard sim district --registry /tmp/district.db --households 5000 --sim-keys
    """
    from gasguard.tools.sim import district as gen

    with Registry(path) as reg:
        existing = reg.count()
    if existing and not replace:
        click.echo(f"error: {path} already holds {existing} devices; writing the district would replace devices "
                   "with the same ids (and their keys). Use a new file, or --replace if this is a simulation "
                   "registry.", err=True)
        raise SystemExit(2)
    t0 = time.monotonic()
    try:
        summary = gen.write(path, seed=seed, scale=scale, households=households, sim_keys=sim_keys)
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    took = time.monotonic() - t0
    d = summary.as_dict()
    if as_json:
        click.echo(json.dumps(dict(d, seconds=round(took, 2)), indent=2))
        return
    click.echo(f"{path}: {d['stations']} regulator stations ({d['feeders']} feeders, {d['linked']} fed by another "
               f"station) serving {d['households_served']:,} households; {d['household_nodes']:,} household-meter "
               f"nodes; users {', '.join(f'{k} {v:,}' for k, v in sorted(d['users'].items()))}; "
               f"{d['key_areas']} key-area devices; inlet classes "
               f"{', '.join(f'{k} {v}' for k, v in sorted(d['pressure_classes'].items()))} ({took:.1f} s)")
    if sim_keys:
        click.secho("keys are DERIVED FROM THE SEED (simulation only): never use this registry with real devices",
                    fg="yellow", err=True)
