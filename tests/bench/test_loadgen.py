"""The bench's load generator (bench.loadgen) offers a city as its agents would: each pole's birth
first, then telemetry; the births are never counted as the load the consumers are measured on."""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import hotpath, loadgen
from contract.models import Status
from gateway.detection import DetectionStage
from gateway.pipeline import Outcome, Pipeline
from testbed.servers import Mosquitto


def _lamp_failures(births: list[tuple[str, bytes]], msgs: list[tuple[str, bytes]]) -> set[str]:
    """Poles raised as lamp_failure by a gateway pipeline + detection given ``births`` then ``msgs``."""
    pipe, stage = Pipeline(), DetectionStage()
    now_ms = max(json.loads(p)["samples"][0]["ts"] for _t, p in msgs) + 1_000
    for topic, payload in births:
        o = pipe.status(topic, payload, now_ms)
        assert o.status is not None, o.rejects
        stage(Outcome(status=o.status))
    raised: set[str] = set()
    for i in range(0, len(msgs), 100):
        outs = [pipe.telemetry(t, p, now_ms) for t, p in msgs[i:i + 100]]
        assert all(not o.rejects for o in outs)
        for point in stage(Outcome(readings=[r for o in outs for r in o.readings])):
            tags = dict(point.tags)
            if point.measurement == "alerts" and tags.get("kind") == "lamp_failure":
                raised.add(tags["pole"])
    return raised


def test_with_births_the_gateway_judges_each_lamp_by_its_own_rating() -> None:
    born, msgs = hotpath.city(400, 3)
    assert len(born) == 400 and all(t.endswith("/status") for t, _p in born)
    rated = {Status.model_validate_json(p).rated_power_w for _t, p in born}
    assert len(rated) > 1  # a city of several lamp ratings, so the default one cannot fit them all
    assert _lamp_failures(born, msgs) == set()
    # without them each lamp is judged by the draw it is seen lit at (docs/detection.md): no alarm storm
    # either. Against the catalog's 120 W default, as before that, over a quarter of this city alarmed
    assert _lamp_failures([], msgs) == set()


class _Sub:
    def __init__(self, broker: Mosquitto) -> None:
        self.msgs: list[str] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-loadgen-sub", protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self._add(m.topic)
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.subscribe("lampwatch/v1/#", qos=1)
        self.c.loop_start()
        assert ready.wait(10)

    def _add(self, topic: str) -> None:
        with self._lock:
            self.msgs.append(topic)

    def topics(self) -> list[str]:
        with self._lock:
            return list(self.msgs)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_the_load_generator_sends_births_first_and_counts_only_telemetry(mosquitto: Mosquitto) -> None:
    poles, rate, seconds = 60, 600, 0.5
    sub = _Sub(mosquitto)
    try:
        res: Any = loadgen.run(mosquitto.host, mosquitto.port, rate, seconds, poles=poles, warm_ticks=1,
                               births=True, probe_every=20)
        want = poles + poles + int(rate * seconds)  # births, the warm tick, the measured load
        deadline = threading.Event()
        for _ in range(100):
            if len(sub.topics()) >= want:
                break
            deadline.wait(0.1)
        got = sub.topics()
    finally:
        sub.close()
    assert len(got) == want
    assert all(t.endswith("/status") for t in got[:poles])  # every birth before any telemetry
    assert all(t.endswith("/telemetry") for t in got[poles:])
    assert res.warm_published == poles and res.published == res.acked == int(rate * seconds)
    assert all(not pole.endswith("status") for pole, _seq, _t in res.probes)
