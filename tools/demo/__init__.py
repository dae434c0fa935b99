"""The demo (`make demo`): the simulated district with a broker, gateways, a fleet and the console view."""
