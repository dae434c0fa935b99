"""The one compiled module (everything else is in pyproject.toml): the reading lane in C, gateway/_lane.c (issue
17). Optional: where it cannot be built (no C compiler), the gateway runs the same lane in Python
(gateway/fastlane.py) and says so in its start log; the tests require it built (tests/test_lane_c.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gasguard.gateway._lane", ["gateway/_lane.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"])])
