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


@pytest.fixture
def nats_cluster(tmp_path):
    """A real 3-node NATS cluster (JetStream, MQTT listener on each node, everything replicated 3 times) on
    loopback, for one test; skipped where nats-server is not installed (.ci/run installs it)."""
    from gasguard.testing.nats import NatsCluster, find_nats
    if find_nats() is None:
        pytest.skip("nats-server is not installed: apt-get install nats-server (.ci/run does it)")
    with NatsCluster(tmp_path / "nats") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def chromium():
    """A real headless Chromium (selenium + Debian's chromium-driver), shared by the tests of one module:
    starting a browser costs about a second; tests call `reset()` to drop cookies."""
    from gasguard.testing.chromium import Chromium
    with Chromium() as browser:
        yield browser


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL per test process (xdist worker); each test gets its own database."""
    from gasguard.testing.postgres import Postgres
    with Postgres() as pg:
        yield pg


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the throwaway PostgreSQL, for one test."""
    import os
    import re
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50] + f"_{os.getpid()}"
    return postgres_server.create_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The command store's URL, once per backend: the same test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'command.db'}"
    return request.getfixturevalue("postgres_url")
