# Hardware-in-the-loop suite (pytest-embedded). Fixtures arrive with the HIL issue.
