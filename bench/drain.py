"""paho's own cost per message, plain against buffered socket against the gateway's PUBLISH splitter:
``python -m bench.drain [--n N] [--rounds R]``.

A real Mosquitto (testbed.servers) holds ``n`` QoS 1 lampwatch telemetry messages for a persistent
session that is offline while they are published; then a subscriber connects, counts them as they
arrive (automatic PUBACK) and stops at ``n``. The publisher is done before the clock starts, so the
subscriber's process CPU (``time.process_time``) is paho's alone: one line per variant and round,
``drain: client=<plain|buffered|split> us_per_msg=<cpu> msgs_s=<n / wall>``, alternating the variants.
``split`` is the gateway's client: buffered, manual acknowledgement, whole PUBLISHes cut out of the buffer
(``gateway.mqttsock.split_publishes``) and acknowledged 100 at a time in one buffer, as the gateway does.
"""

from __future__ import annotations

import argparse
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.hotpath import render
from contract import topics
from gateway.mqttsock import BufferedClient
from simulator.publisher import Publisher
from testbed.servers import Mosquitto


def _client(kind: str, cid: str) -> mqtt.Client:
    cls = mqtt.Client if kind == "plain" else BufferedClient
    return cls(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=kind == "split")


def drain(broker: Mosquitto, kind: str, msgs: list[tuple[str, bytes]], tag: str) -> tuple[float, float]:
    """(CPU us per message, msgs/s) of one subscriber taking ``msgs`` from its persistent session."""
    cid = f"drain-{kind}-{tag}"
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = 65535
    sub = _client(kind, cid)
    done = threading.Event()
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(broker.host, broker.port, 30, clean_start=True, properties=props)
    sub.loop_start()
    sub.subscribe(topics.filter_for("telemetry"), qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK")
    sub.disconnect()
    sub.loop_stop()
    pub = Publisher(broker.host, broker.port, f"drain-pub-{tag}", max_inflight=0).connect()
    for topic, payload in msgs:
        pub.publish(topic, payload)
        pub.wait_below(20_000)
    pub.flush(timeout_s=120)
    pub.close()
    n = {"got": 0}

    def on_message(*_a: object) -> None:
        n["got"] += 1
        if n["got"] >= len(msgs):
            done.set()

    sub = _client(kind, cid)
    sub.on_message = on_message
    if isinstance(sub, BufferedClient) and kind == "split":
        mids: list[int] = []

        def sink(item: tuple[str, bytes, int, int]) -> None:
            mids.append(item[2])
            if len(mids) >= 100 or n["got"] + len(mids) >= len(msgs):
                sub.send_pubacks(mids)  # as the gateway does
                n["got"] += len(mids)
                mids.clear()
                if n["got"] >= len(msgs):
                    done.set()

        sub.publish_sink = sink
        sub.on_message = lambda _c, _u, m: (sub.ack(m.mid, m.qos), on_message())  # paho's path: the odd packet
    c0, w0 = time.process_time(), time.monotonic()
    sub.connect(broker.host, broker.port, 30, clean_start=False, properties=props)
    sub.loop_start()
    ok = done.wait(120)
    c1, w1 = time.process_time(), time.monotonic()
    sub.disconnect()
    sub.loop_stop()
    if not ok:
        raise RuntimeError(f"{kind}: only {n['got']} of {len(msgs)} arrived")
    return (c1 - c0) * 1e6 / len(msgs), len(msgs) / (w1 - w0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    msgs = render(a.n, 1)
    with Mosquitto() as broker:
        for r in range(a.rounds):
            for kind in ("plain", "buffered", "split"):
                us, rate = drain(broker, kind, msgs, f"{r}")
                print(f"drain: client={kind} us_per_msg={us:.1f} msgs_s={rate:.0f}", flush=True)


if __name__ == "__main__":
    main()
