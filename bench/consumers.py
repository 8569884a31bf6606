"""The bench's own consumers, each in a process of its own (``python -m bench.bench_gateway consume raw|naive``):
the bare paho counter and the tutorial pipeline."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

from ingest.influx1 import Influx1Store


def consume(kind: str, host: str, port: int, client_id: str, influx_url: str, db: str, probes: set[str]) -> None:
    """The raw counter or the naive pipeline: MQTT 5, QoS 1, persistent session, paho's automatic PUBACK
    (sent after the callback returns)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from contract import schema, topics
    from contract.models import Telemetry
    from contract.readings import Reading
    from gateway.mqttsock import BufferedClient

    lock = threading.Lock()
    state = {"n": 0}
    out = sys.stdout
    store = Influx1Store(influx_url, db) if kind == "naive" else None

    def on_message_raw(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        state["n"] += 1
        pole = m.topic.split("/")[3]
        if pole in probes:
            seq = json.loads(m.payload)["samples"][0]["seq"]
            with lock:
                out.write(f"p {pole} {seq} {time.time():.6f}\n")

    def on_message_naive(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        t = Telemetry.model_validate_json(m.payload)
        _, _, district, pole, _ = m.topic.split("/")
        assert store is not None
        store.write([schema.telemetry_point(Reading(pole, district, t.boot, s.seq, s.ts, dict(s.m)))
                     for s in t.samples])
        state["n"] += 1

    def on_subscribe(*_a: Any) -> None:
        with lock:
            out.write("ready\n")
            out.flush()

    cls = BufferedClient if kind == "raw-buffered" else mqtt.Client  # the gateway's socket (gateway.mqttsock)
    c = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_message = on_message_raw if kind.startswith("raw") else on_message_naive
    c.on_subscribe = on_subscribe
    c.on_connect = lambda cl, *_a: cl.subscribe(topics.filter_for("telemetry"), qos=1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    c.connect(host, port, 30, clean_start=False, properties=props)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c.loop_start()
    while not stop.wait(0.1):
        with lock:
            out.write(f"n {state['n']}\n")
            out.flush()
    c.disconnect()
    c.loop_stop()
