"""The harness starts real servers that behave as the rest of the suite relies on."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from testbed.servers import (
    HarnessError,
    InfluxDB1,
    Mosquitto,
    QueryError,
    ServerMissing,
    ServerStartError,
    VictoriaMetrics,
    free_port,
    require,
)

WAIT_S = 60.0  # generous upper bound so a stuck test fails instead of hanging; not a speed assertion
SENTINEL = b"end"


class Peer:
    """A paho 2.x MQTT v5 client that records what it receives."""

    def __init__(self, broker: Mosquitto, client_id: str = "", session_expiry: int | None = None) -> None:
        self.client_id = client_id
        self.client = self._new_client()
        self.broker = broker
        self.session_expiry = session_expiry
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.connect_reason: int | None = None
        self.received: list[mqtt.MQTTMessage] = []
        self.received_enough = threading.Event()
        self.expect = 0
        self.sentinel_seen = threading.Event()
        self.puback_failures: list[int] = []

    def _new_client(self) -> mqtt.Client:
        # A fresh paho Client per connection: paho 2.2's loop_start() opens a socketpair that
        # loop_stop() leaves open, so a second loop_start() on the same Client leaks it
        # (ResourceWarning). The session lives on the broker under client_id, not in this object.
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.session_present = flags.session_present
        self.connect_reason = reason_code.value
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self.subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.payload == SENTINEL:
            self.sentinel_seen.set()
            return
        self.received.append(msg)
        if len(self.received) >= self.expect:
            self.received_enough.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self.puback_failures.append(reason_code.value)

    @contextmanager
    def connected_session(self, expect: int = 0) -> Iterator[Peer]:
        self.expect = expect
        self.received_enough.clear()
        self.connected.clear()
        self.client = self._new_client()
        props = None
        if self.session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
        self.client.connect(
            self.broker.host, self.broker.port, clean_start=self.session_expiry is None, properties=props
        )
        self.client.loop_start()
        try:
            assert self.connected.wait(WAIT_S), "no CONNACK"
            assert self.connect_reason == 0
            yield self
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def publish_all(self, topic: str, count: int) -> None:
        infos = [self.client.publish(topic, f"{i}".encode(), qos=1) for i in range(count)]
        assert all(info.rc == mqtt.MQTT_ERR_SUCCESS for info in infos)
        for info in infos:
            info.wait_for_publish(timeout=WAIT_S)
            assert info.is_published()
        assert self.puback_failures == []

    def payloads(self) -> list[int]:
        return sorted(int(m.payload) for m in self.received)


def _queue_offline(broker: Mosquitto, count: int, between: Callable[[], None] = lambda: None) -> list[int]:
    """Subscribe a persistent session, go offline, publish `count` QoS 1 messages, run `between`,
    reconnect; return the payloads the session received."""
    topic = f"lampwatch/test/{uuid.uuid4().hex}"
    subscriber = Peer(broker, client_id=f"sub-{uuid.uuid4().hex[:8]}", session_expiry=3600)
    with subscriber.connected_session():
        assert subscriber.session_present is False
        subscriber.subscribe(topic)
    with Peer(broker).connected_session() as publisher:
        publisher.publish_all(topic, count)
    between()
    with subscriber.connected_session():
        assert subscriber.session_present is True
        # QoS 1 on one topic is delivered in order, so once a message published after the
        # reconnect arrives, every queued message the broker still held has arrived before it.
        with Peer(broker).connected_session() as publisher:
            publisher.client.publish(topic, SENTINEL, qos=1).wait_for_publish(WAIT_S)
        assert subscriber.sentinel_seen.wait(WAIT_S), "sentinel never arrived"
    return subscriber.payloads()


def test_mqtt5_round_trip(mosquitto: Mosquitto) -> None:
    with Peer(mosquitto).connected_session(expect=1) as peer:
        peer.subscribe("lampwatch/test/+/state")
        peer.client.publish("lampwatch/test/pole-7/state", b'{"on":true}', qos=1)
        assert peer.received_enough.wait(WAIT_S)
    [msg] = peer.received
    assert (msg.topic, msg.payload, msg.qos) == ("lampwatch/test/pole-7/state", b'{"on":true}', 1)


def test_offline_persistent_session_gets_all_5000_queued_qos1(mosquitto: Mosquitto) -> None:
    assert _queue_offline(mosquitto, 5000) == list(range(5000))
    assert "dropped" not in mosquitto.log_text()


def test_queue_limit_would_drop_without_harness_config(
    mosquitto_factory: Callable[..., Mosquitto],
) -> None:
    """Negative control: with a mosquitto-like finite limit the same drill loses messages,
    so the test above can fail."""
    broker = mosquitto_factory(extra_conf="max_queued_messages 100")
    got = _queue_offline(broker, 300)
    assert len(got) < 300
    assert "dropped" in broker.log_text()


def test_restart_keeps_persistent_session_and_queued_messages(mosquitto: Mosquitto) -> None:
    port, workdir = mosquitto.port, mosquitto.workdir
    pids: list[int | None] = [mosquitto.pid]

    def restart() -> None:
        mosquitto.restart()
        pids.append(mosquitto.pid)

    assert _queue_offline(mosquitto, 500, between=restart) == list(range(500))
    assert pids[0] != pids[1]
    assert (mosquitto.port, mosquitto.workdir) == (port, workdir)
    assert mosquitto.log_text().count("mosquitto version 2") >= 2  # log survives the restart


def test_kill_then_start_again(mosquitto: Mosquitto) -> None:
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    with Peer(mosquitto).connected_session() as peer:
        assert peer.connect_reason == 0


def test_close_removes_workdir_and_refuses_restart(mosquitto: Mosquitto) -> None:
    assert mosquitto.workdir.is_dir()
    mosquitto.close()
    assert not mosquitto.workdir.exists()
    assert not mosquitto.running
    with pytest.raises(HarnessError, match="closed"):
        mosquitto.start()


def test_bad_config_fails_fast_with_log(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    with pytest.raises(ServerStartError, match="no_such_option"):
        mosquitto_factory(extra_conf="no_such_option 1")


def test_require_names_the_debian_package() -> None:
    with pytest.raises(ServerMissing, match="apt-get install"):
        require("lampwatch-no-such-binary")
    assert isinstance(ServerMissing("x"), RuntimeError)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_influxdb_write_then_query(influx_db: tuple[InfluxDB1, str]) -> None:
    server, db = influx_db
    body = b"lamp,pole=p-1 watts=41.5,on=true 1700000000000000000\nlamp,pole=p-2 watts=0 1700000000000000001"
    request = urllib.request.Request(f"{server.url}/write?db={db}", data=body, method="POST")
    with urllib.request.urlopen(request) as response:
        assert response.status == 204
    result = server.query('SELECT "watts", "pole" FROM "lamp" ORDER BY time', db=db)
    [series] = result["results"][0]["series"]
    assert series["columns"] == ["time", "watts", "pole"]
    assert series["values"] == [[1700000000000000000, 41.5, "p-1"], [1700000000000000001, 0, "p-2"]]


def test_influxdb_query_errors_raise(influx_db: tuple[InfluxDB1, str]) -> None:
    server, db = influx_db
    with pytest.raises(QueryError, match=r"error parsing query"):
        server.query("SELECT FROM", db=db)
    with pytest.raises(QueryError, match="database not found"):
        server.query("SELECT * FROM lamp", db="no_such_db_here")


def test_influxdb_stop_start_keeps_data(fresh_influxdb: InfluxDB1) -> None:
    server = fresh_influxdb
    server.create_database("drill")
    server.write_lines("drill", "lamp,pole=p-9 watts=7 1700000000000000000")
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/ping", timeout=2).close()
    server.start()
    result = server.query("SELECT watts FROM lamp", db="drill")
    assert result["results"][0]["series"][0]["values"] == [[1700000000000000000, 7]]


def test_victoria_metrics_accepts_v2_line_protocol(victoria: VictoriaMetrics) -> None:
    measurement = f"lamp{uuid.uuid4().hex[:8]}"
    ts_ms = int(time.time()) * 1000
    body = f"{measurement},pole=p-3 watts=12.5 {ts_ms * 1_000_000}".encode()
    request = urllib.request.Request(f"{victoria.url}/api/v2/write", data=body, method="POST")
    with urllib.request.urlopen(request) as response:
        assert response.status == 204
    series = victoria.wait_for_samples(1, match=f'{{__name__="{measurement}_watts"}}')
    metric = {"__name__": f"{measurement}_watts", "pole": "p-3"}
    assert series == [{"metric": metric, "values": [12.5], "timestamps": [ts_ms]}]
