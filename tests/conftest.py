"""Fixtures shared by the tests of gasguard/brokers.py (a module's own fixture of the same name wins)."""

import paho.mqtt
import pytest

from gasguard import brokers
from gasguard.testing.mosquitto import Mosquitto


@pytest.fixture(params=[True, False], ids=["lean", "plain"])
def lean(request, monkeypatch):
    """With paho 2.2.0's cuts (gasguard.brokers.LEAN_PAHO) and without them, as any other paho version runs."""
    if request.param and not brokers.LEAN_PAHO:
        pytest.skip(f"paho {paho.mqtt.__version__} is not 2.2.0: the cuts are off")
    monkeypatch.setattr(brokers, "LEAN_PAHO", request.param)
    return request.param


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(workdir=tmp_path / "broker") as b:
        yield b
