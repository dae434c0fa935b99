"""The one writer of gateway configuration files for tests and benchmarks (the format of
gateway/gateway.example.toml)."""

from __future__ import annotations

from pathlib import Path


def write_config(path: Path, *, registry: Path, spool: Path, mqtt_port: int, serial: list[str] = (),
                 udp: str | None = None, extra: str = "", gateway_id: str = "gw1", district: str = "d1",
                 mqtt_extra: str = "", udp_extra: str = "") -> Path:
    """`mqtt_extra`: more [mqtt] keys (username, password, TLS files); `udp_extra`: more [udp] keys (rcvbuf_kb);
    `extra`: further tables."""
    lines = [f'[gateway]\nid = "{gateway_id}"\ndistrict = "{district}"\nregistry = "{registry}"\nspool = "{spool}"\n'
             'log_level = "INFO"\n']
    for p in serial:
        lines.append(f'[[serial]]\nport = "{p}"\n')
    if udp:
        lines.append(f'[udp]\nbind = "{udp}"\n{udp_extra}')
    lines.append(f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nreconnect_min = 1\nreconnect_max = 2\n{mqtt_extra}')
    lines.append(extra)
    path.write_text("\n".join(lines))
    return path
