"""`gasguard command serve`: run the district command service (one copy; run two for a hot standby).

Thin: load and check the configuration (exit 2 naming the file and the fix), open the store (exit 2 when it
cannot be opened), run until SIGTERM/SIGINT (exit 0).
"""

import logging
import signal
import sys
import time

import click


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="command TOML ([command], [command.mqtt], [grading], [notify]); see command/README.md")
@click.option("--store", default=None, help="override [command] store: sqlite:///path or postgresql://...")
@click.option("--registry", default=None, help="override [command] registry (the district registry file)")
@click.option("--instance", default=None, help="this copy's name in the leader lease (default host:pid)")
@click.option("--mqtt", "mqtt_addr", default=None, help="override the broker as host:port")
@click.option("--metrics", "metrics_bind", default=None, help="serve Prometheus metrics on host:port")
@click.option("--clock", "clock_spec", default="real", show_default=True, metavar="real|speed=N|virtual",
              help="real time, or a drill clock as the gateway's (speed=60: the 20-minute deadline in 20 s); "
                   "a drill clock marks every message the service publishes")
@click.option("--t0", type=float, default=None, metavar="EPOCH", help="with a drill clock: the wall time it starts "
              "from, to share one clock with the gateways")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-json", is_flag=True, help="JSON lines instead of logfmt (gasguard/logs.py)")
def serve(config_path, store, registry, instance, mqtt_addr, metrics_bind, clock_spec, t0, log_level, log_json):
    """The district command service: grades every gateway's alarms district-wide into the store, publishes
    incidents to the console and the city, escalates and notifies. Two copies = leader + hot standby."""
    from . import config as cconfig
    from .service import CommandService
    from .store import StoreError

    from gasguard import logs
    over = {k: v for k, v in (("store", store), ("registry", registry), ("instance", instance),
                              ("metrics_bind", metrics_bind)) if v}
    if mqtt_addr:
        host, _, port = mqtt_addr.rpartition(":")
        if not port.isdigit():
            click.echo(f"error: --mqtt {mqtt_addr!r}: write host:port, e.g. 127.0.0.1:1883", err=True)
            sys.exit(2)
        over.update(mqtt_host=host or "127.0.0.1", mqtt_port=int(port))
    from gasguard.gateway.clock import ClockError, parse
    try:
        clock = parse(clock_spec, t0)
        cfg = cconfig.load(config_path, **over)
        svc = CommandService(cfg, clock=clock, drill=None if clock.mode == "real" else clock.mode)
    except (cconfig.ConfigError, StoreError, ClockError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    logs.setup(log_level.upper(), log_json, instance=cfg.instance)
    # The stop signals are blocked before any thread starts (threads inherit the mask) and taken with sigwait:
    # the kernel would otherwise hand them to whichever thread runs, and the main thread would see a Python
    # handler only when its next wait times out (up to a second late, more on a loaded machine).
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    svc.start()
    log = logging.getLogger("gasguard.command")
    log.info("command service %s started (store %s, broker %s:%d)", cfg.instance, svc.store.dialect,
             cfg.mqtt_host, cfg.mqtt_port)
    sig = signal.sigwait(stop_signals)
    t0 = time.monotonic()
    svc.stop()
    log.info("command service %s stopped on %s in %.2f s", cfg.instance, signal.Signals(sig).name,
             time.monotonic() - t0)
    sys.exit(0)
