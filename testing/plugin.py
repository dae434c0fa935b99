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
