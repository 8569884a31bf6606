"""The 3-node NATS test cluster: replication across nodes, kill -9 and restart on the same ports and store,
and the per-session budget of QoS 1 subscriptions that max_ack_pending sets (measured, not assumed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulator.nats_cluster import PACKET_IDS, NatsCluster, ack_pending_for, mqtt_connect_ok

WAIT_S = 60.0


def _client(cid: str, addr: tuple[str, int], *, clean: bool = False, into: list[bytes] | None = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=clean)
    if into is not None:  # before connecting: a resumed session delivers at once
        c.on_message = lambda _c, _u, m: into.append(bytes(m.payload))
    c.connect(*addr, keepalive=10)
    c.loop_start()
    return c


def _suback(c: mqtt.Client, filters: list[tuple[str, int]]) -> list[Any]:
    got: list[Any] = []
    done = threading.Event()

    def on_sub(_c: Any, _u: Any, _m: int, rcs: Any, _p: Any) -> None:
        got.extend(rcs)
        done.set()

    c.on_subscribe = on_sub
    c.subscribe(filters)
    assert done.wait(WAIT_S), "no SUBACK"
    return got


def _stop(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def test_ack_pending_budget() -> None:
    assert ack_pending_for(1) == 20_000  # never more than the gateway's Receive Maximum on Mosquitto
    assert ack_pending_for(10) == PACKET_IDS // 10
    assert ack_pending_for(10) * 10 <= PACKET_IDS < ack_pending_for(10) * 11


def test_streams_are_replicated_and_a_message_crosses_nodes_and_survives_a_node_kill(
        nats_cluster: NatsCluster) -> None:
    assert {s["name"]: s["replicas"] for s in nats_cluster.stream_info()} == {
        "$MQTT_sess": 3, "$MQTT_msgs": 3, "$MQTT_rmsgs": 3}
    n1, n2, n3 = nats_cluster.nodes
    got: list[bytes] = []
    sub = _client("t-sub", n2.address, into=got)
    assert [rc.value for rc in _suback(sub, [("t/x", 1)])] == [1]
    _stop(sub)  # offline persistent session: what follows must be kept for it in JetStream
    pub = _client("t-pub", n1.address, clean=True)
    pub.publish("t/x", b"kept", qos=1).wait_for_publish(WAIT_S)
    _stop(pub)
    ports, store = (n2.port, n2.cluster_port, n2.mqtt_port), n2.store_dir
    n2.kill()  # the node the subscriber's session lives on, killed -9
    n2.start()
    assert (n2.port, n2.cluster_port, n2.mqtt_port) == ports and n2.store_dir == store and any(store.iterdir())
    nats_cluster.wait_ready()
    sub = _client("t-sub", n3.address, into=got)  # the session resumes on another node
    deadline = time.monotonic() + WAIT_S
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    _stop(sub)
    assert got == [b"kept"]


def test_a_subscription_beyond_the_packet_id_budget_is_refused() -> None:
    with NatsCluster(3, replicas=1, max_ack_pending=ack_pending_for(4)) as cluster:
        c = _client("t-budget", cluster.addresses[0], clean=True)
        rcs = _suback(c, [(f"b/{i}", 1) for i in range(5)])
        _stop(c)
        assert [rc.is_failure for rc in rcs] == [False, False, False, False, True]
        assert mqtt_connect_ok(*cluster.addresses[0], "t-probe")
