"""Simulation: virtual boards (the real firmware in MicroPython), the fleet simulator, the district and its scenarios."""
