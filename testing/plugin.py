"""The test kit's pytest plugin (loaded by `-p gasguard.testing.plugin` in pyproject.toml's addopts): the
fixtures every suite shares. Add a fixture for a real service here (PostgreSQL, NATS, Chromium), next to
the mosquitto one, so tests/ and hil_tests/ use one definition."""

from __future__ import annotations

import pytest

from gasguard.testing.mosquitto import Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    """A real mosquitto on a free loopback port, for one test."""
    with Mosquitto(workdir=tmp_path / "broker") as broker:
        yield broker


@pytest.fixture(scope="module")
def chromium():
    """A real headless Chromium (selenium + Debian's chromium-driver), shared by the tests of one module:
    starting a browser costs about a second; tests call `reset()` to drop cookies."""
    from gasguard.testing.chromium import Chromium
    with Chromium() as browser:
        yield browser
