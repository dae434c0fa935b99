"""Transports only move bytes: they hand raw frames (plus receive metadata) to the daemon and send
downlink frames back. Framing/CRC for a UART lives in protocol.framing; verification in gateway.verify."""
