"""Root fixtures: real servers from testbed.servers.

A missing server binary skips the test with the apt-get line to install it, except under CI=true,
where it fails: CI must never go green by skipping the real-server tests.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import pytest

from testbed.nats import NatsCluster
from testbed.servers import InfluxDB1, Mosquitto, ServerMissing, VictoriaMetrics
from tests.servers import missing

S = TypeVar("S", bound=AbstractContextManager[Any])

# every gateway process a test starts would bind the health server's default port 9464; two at once
# (a standby, a drill) log "port in use". Off unless a test asks for it with a free port.
os.environ.setdefault("LAMPWATCH_GATEWAY_HEALTH_PORT", "0")


def _running(server_cls: Callable[[], S]) -> Iterator[S]:
    """Start a harness server for a fixture, stop it after; a missing binary fails (CI) or skips."""
    try:
        server = server_cls()
    except ServerMissing as exc:
        missing(exc)
    with server:
        yield server


@pytest.fixture
def mosquitto_factory() -> Iterator[Callable[..., Mosquitto]]:
    """Call with Mosquitto(**kwargs) arguments (password_file=..., acl_file=..., extra_conf=...);
    returns a started broker; every broker made is closed at teardown."""
    made: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        try:
            broker = Mosquitto(**kwargs)
        except ServerMissing as exc:
            missing(exc)
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A fresh, started broker for this test (anonymous, persistent, no queue limits)."""
    return mosquitto_factory()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A started 3-node NATS cluster (JetStream R3, MQTT 3.1.1 listeners); see testbed.nats."""
    yield from _running(NatsCluster)


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxDB1]:
    """One InfluxDB 1.x server for the session; use `influx_db` for an isolated database.
    Never stop it from a test: use `fresh_influxdb` for that."""
    yield from _running(InfluxDB1)


@pytest.fixture
def fresh_influxdb() -> Iterator[InfluxDB1]:
    """A private InfluxDB server for this test only: stop()/kill()/start() it freely (outage drills)."""
    yield from _running(InfluxDB1)


_db_numbers = itertools.count()


@pytest.fixture
def influx_db(influxdb: InfluxDB1) -> Iterator[tuple[InfluxDB1, str]]:
    """(server, name of a fresh database created for this test, dropped afterwards)."""
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    influxdb.create_database(name)
    yield influxdb, name
    influxdb.drop_database(name)


@pytest.fixture(scope="session")
def victoria() -> Iterator[VictoriaMetrics]:
    """One VictoriaMetrics server for the session (series persist across tests: match narrowly)."""
    yield from _running(VictoriaMetrics)


@pytest.fixture
def alertmanager() -> Iterator[Any]:
    """A fresh Alertmanager (v2 API, minimal config) for this test; stop()/start() it freely."""
    from testbed.servers import Alertmanager

    yield from _running(Alertmanager)
