"""GasGuard: gas-leak and pressure nodes, a substation gateway, and district alarm grading.

The top-level folders of the repository are subpackages of this namespace:
protocol/ -> gasguard.protocol, firmware/ -> gasguard.firmware, registry/ -> gasguard.registry,
gateway/ -> gasguard.gateway, grading/ -> gasguard.grading, command/ -> gasguard.command,
provisioning/ -> gasguard.provisioning, testing/ -> gasguard.testing, tools/ -> gasguard.tools (README.md).

Kept free of CPython-only imports: the same package name exists on the device (MicroPython),
where this file is installed as-is so that `gasguard.protocol` imports the same way on both.
"""

__version__ = "0.1.0"
