"""A gateway without its broker does not pile up publishes in memory: paho queues every QoS 1 publish
made while disconnected, without bound, and sends them all on reconnect. The periodic status is the one
publish that does not depend on traffic, so before the fix a day-long outage at the default 5 s interval
queued 17,280 stale statuses (and a reconnect flooded them out). Now a disconnected gateway publishes no
status and the reconnect publishes one fresh one.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import topics
from gateway.service import Gateway, GatewayConfig
from ingest.sqlite import SqliteStore
from testbed.servers import Mosquitto
from tests.gateway.helpers import wait_until


def test_no_status_piles_up_while_the_broker_is_away(mosquitto: Mosquitto, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "lw.sqlite")
    gw = Gateway(GatewayConfig(host=mosquitto.host, port=mosquitto.port, client_id="away-gw",
                               spool_path=str(tmp_path / "spool.sqlite"), selfmetrics_interval_s=0.05),
                 store)
    gw.start()
    got: list[dict[str, object]] = []
    lock = threading.Lock()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="status-watch", protocol=mqtt.MQTTv5)

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        if not m.retain:
            with lock:
                got.append(json.loads(m.payload))

    sub.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600  # a persistent session: what the gateway sends on reconnect is kept
    sub.reconnect_delay_set(0.2, 1)
    try:
        sub.connect(mosquitto.host, mosquitto.port, clean_start=False, properties=props)
        sub.subscribe(topics.gateway_status("away-gw"), qos=1)
        sub.loop_start()
        wait_until(lambda: gw.connected, 20, "gateway connected")
        time.sleep(0.5)
        with lock:
            assert got, "the watcher sees the live statuses"
            got.clear()
        mosquitto.stop()
        wait_until(lambda: not gw.connected, 20, "gateway saw the broker go")
        deaf = time.time()  # from here on the gateway knows it is disconnected
        time.sleep(3.0)  # 60 status intervals without a broker
        up = time.time()
        mosquitto.start()
        wait_until(lambda: gw.connected, 60, "gateway reconnected")
        time.sleep(3.0)  # the watcher reconnects too and gets its session's queue
        with lock:
            stale = [s for s in got if deaf * 1000 < int(s.get("ts", 0)) < up * 1000]  # type: ignore[call-overload]
            fresh = [s for s in got if int(s.get("ts", 0)) >= up * 1000]  # type: ignore[call-overload]
        assert fresh, "statuses resume after the reconnect"
        # none made once the gateway knew it was disconnected (about 60 would be queued without the fix;
        # the old code flushed 50 from the whole outage); what it made before it noticed is paho's queue
        assert stale == [], f"{len(stale)} statuses made while disconnected were queued and flushed"
    finally:
        sub.loop_stop()
        gw.stop()
        store.close()
