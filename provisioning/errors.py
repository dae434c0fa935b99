"""The two kinds of failure a technician command reports, with the exit code each maps to.

ESPHome's convention (shared/STYLE.md): 0 ok, 1 operational error (port, board, file), 2 bad input
(a value, a name, a missing device). Every message says what was wrong and what to do next.
"""


class ProvisioningError(Exception):
    """Something failed while doing the work (port, board, file system): exit code 1."""

    exit_code = 1


class BadInput(ProvisioningError):
    """The request itself is wrong (caught before any port is opened): exit code 2."""

    exit_code = 2
