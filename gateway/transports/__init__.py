"""Transports only move bytes: they hand raw frames (plus receive metadata) to ingest and send downlink
frames back. Framing/CRC for a UART lives in protocol.framing, the Semtech UDP format in protocol.semtech;
verification in gateway.verify. The interface every transport keeps is declared here."""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol, Union, runtime_checkable


@runtime_checkable
class Transport(Protocol):
    """A link to devices (a serial port, a LoRa modem on a UART, a Semtech packet-forwarder listener)."""

    name: str          # for logs and metrics: the port's name, "udp"

    def send(self, frame: bytes, rx: dict | None = None) -> bool:
        """Send one downlink frame toward the device whose uplink arrived with `rx` (the forwarder it was
        heard through, its frequency); False when there is no way to it right now. Never blocks."""
        ...


# What a transport hands ingest, per received unit: (raw frame or None for noise, rx metadata, route). The
# route is the transport itself (downlinks to that device go back through it), or, with raw None, the
# reason the bytes were noise ("crc", "base64", ...: counted as rejections).
Route = Union[Transport, str]
Deliver = Callable[[Union[bytes, None], dict, Route], Awaitable[None]]      # one unit, with back-pressure
DeliverMany = Callable[[list], Awaitable[None]]     # stream transports: a read's units [(raw, rx, route)], in order
DeliverNowait = Callable[[Union[bytes, None], dict, Route], None]           # datagram transports: counted when full
