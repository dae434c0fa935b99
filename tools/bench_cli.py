"""`gasguard bench ...`: benchmarks. They print figures; they are not timed tests."""

import click

from gasguard.protocol import airtime
from gasguard.protocol.const import UP
from gasguard.protocol import frame, framing
from gasguard.tools.bench_firmware import firmware_bench
from gasguard.tools.bench_fleet import fleet as fleet_bench
from gasguard.tools.bench_provisioning import provisioning_bench


@click.group()
def bench():
    """Benchmarks that print figures (see BENCHMARKS.md)."""


@bench.command("air")
def air():
    """Bytes on air per signed frame, and LoRa airtime at SF7/SF11/SF12 (125 kHz, CR 4/5)."""
    key = bytes(16)
    samples = {
        "household reading": {"type": "reading", "dev": 1, "fcnt": 1, "gas": 0, "pressure": 2000, "battery": 90,
                              "state": 0},
        "station reading (inlet)": {"type": "reading", "dev": 1, "fcnt": 1, "gas": 0, "pressure": 300000,
                                    "battery": None, "state": 0, "inlet": 1200000},
        "alarm": {"type": "alarm", "dev": 1, "fcnt": 1, "code": 2, "aseq": 1, "age": 0, "value": 260, "state": 5},
        "ack": {"type": "ack", "dev": 1, "fcnt": 1, "ref_type": 1, "ref": 1, "result": 0},
    }
    click.echo(f"{'frame':26} {'raw B':>5} {'framed B':>8} {'SF7 ms':>8} {'SF11 ms':>8} {'SF12 ms':>8}")
    for name, f in samples.items():
        raw = frame.seal(f, key, UP)
        framed = len(framing.wrap(raw)) - 1
        t = [airtime.airtime_us(len(raw), sf) / 1000 for sf in (7, 11, 12)]
        click.echo(f"{name:26} {len(raw):5d} {framed:8d} {t[0]:8.1f} {t[1]:8.1f} {t[2]:8.1f}")
    click.echo(f"largest payload under 1 s: SF11 {airtime.max_payload_under(1_000_000, 11)} B, "
               f"SF12 {airtime.max_payload_under(1_000_000, 12)} B")


bench.add_command(fleet_bench)
bench.add_command(firmware_bench)
bench.add_command(provisioning_bench)
