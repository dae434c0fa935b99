import pytest

from gasguard.tools.broker import Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    """A real mosquitto on a free loopback port, for one test."""
    with Mosquitto(workdir=tmp_path / "broker") as broker:
        yield broker

pytest_plugins = ["gasguard.testing.postgres"]
