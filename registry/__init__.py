"""The device registry: the model of every node (identity, key, profile, place, lifecycle state), shared by
the gateway (verification), provisioning (the technician's writes) and the district command side.

`gasguard.registry.model` holds it; the public names are re-exported here so callers write
`from gasguard.registry import Registry`."""

from gasguard.registry.model import *  # noqa: F401,F403 - the public names, listed in model.__all__
from gasguard.registry.model import __all__  # noqa: F401
