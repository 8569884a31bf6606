"""The 3-node NATS test cluster: replication across nodes, kill -9 and restart on the same ports and store,
and the per-session budget of QoS 1 subscriptions that max_ack_pending sets (measured, not assumed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from gateway.service import Gateway, GatewayConfig
from ingest.sqlite import SqliteStore
from simulator.run import plan_city, run_per_device
from testbed.nats import PACKET_IDS, NatsCluster, ack_pending_for, mqtt_connect_ok

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
    nats_cluster.wait_ready(health=False)  # /healthz lags far behind serving MQTT after a restart under load
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


def test_the_per_device_fleet_spreads_over_the_nodes_and_is_stored(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    addrs = nats_cluster.addresses
    store = SqliteStore(tmp_path / "store.sqlite")
    gw = Gateway(GatewayConfig(brokers=tuple(addrs), mqtt_version=311, client_id="gw-fleet",
                               spool_path=str(tmp_path / "spool.sqlite")), store)
    gw.start(wait_connected_s=60)
    plan = plan_city(poles=6, seed=1, step_ms=10_000, fault_rate=0, sim_span_ms=None,
                     now_ms=int(time.time() * 1000), scenario=None, signal_only=True, back_ms=0)
    seen: dict[str, set[str]] = {n.name: set() for n in nats_cluster.nodes}
    done = threading.Event()

    def watch() -> None:  # which pole is connected to which node (the nodes' own /connz)
        while not done.is_set():
            for n in nats_cluster.nodes:
                for c in n.monitor("/connz?limit=1000").get("connections") or []:
                    if str(c.get("mqtt_client", "")).startswith("p-"):
                        seen[n.name].add(c["mqtt_client"])
            time.sleep(0.3)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        with open(tmp_path / "progress.txt", "w") as out:
            st = run_per_device(*addrs[0], plan, workdir=tmp_path / "agents", speed=20.0, duration_s=5,
                                console=Console(file=out), brokers=addrs, mqtt_version=311)
        deadline = time.monotonic() + 60
        while store.count("telemetry") < st.published and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        done.set()
        t.join(5)
        gw.stop()
    assert st.published > 0
    assert store.count("telemetry") == st.published
    assert all(len(poles) >= 2 for poles in seen.values()), seen  # 6 poles: 2 have each node first
    store.close()
