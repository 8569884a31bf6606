"""Sensor faults injected by the simulator, through the gateway's pure pipeline, into the stage."""

from __future__ import annotations

from contract.catalog import BY_NAME
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome, Pipeline
from simulator.city import City, CityConfig
from simulator.faults import DROPOUT_FAULT_METRICS, Fault, random_faults
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream, birth_messages

T0 = 1_705_334_400_000
STEP = 300_000


def _run(faults: list[Fault], city: City, ticks: int) -> tuple[list[dict[str, object]], int]:
    stream = TelemetryStream(city, SignalModel(city, 3), faults, T0, STEP, 3)
    now = [T0]
    stage = DetectionStage(clock=lambda: now[0] / 1000, stream=False)
    pipe = Pipeline()
    out: list[dict[str, object]] = []
    refused = 0
    for topic, payload in birth_messages(stream, T0 - STEP):
        stage(pipe.status(topic, payload, T0 - STEP))
    for _ in range(ticks):
        now[0] = stream.now_ms + 500
        batch = Outcome()
        for topic, payload in stream.tick():
            o = pipe.telemetry(topic, payload, now[0])
            batch.readings.extend(o.readings)
            refused += sum(r.reason == "out_of_range" for r in o.rejects)
        out += [{**a, "t": stream.now_ms - STEP} for a in alerts_of(stage(batch))]
    return out, refused


def test_a_simulated_sensor_dropout_is_refused_by_the_decoder_and_named_by_the_stage() -> None:
    city = City(CityConfig(seed=3, poles=8))
    pole = next(p for p in city.poles if p.has("leakage_current_ma"))
    f = Fault.make("sensor_dropout", pole.pole_id, T0 + 40 * STEP, T0 + 60 * STEP, metric="leakage_current_ma")
    alerts, refused = _run([f], city, 70)
    assert refused == 20  # the dead sensor's error value, one per sample of the fault, nothing else
    raised = [(a["pole"], a["key"]) for a in alerts if a["state"] == "raised" and a["kind"] == "sensor_dropout"]
    assert raised == [(pole.pole_id, "sensor_dropout.leakage_current_ma")]
    (r,) = [a for a in alerts if a["kind"] == "sensor_dropout" and a["state"] == "raised"]
    assert f.start_ms < int(str(r["t"])) <= f.start_ms + 4 * STEP
    assert any(a["kind"] == "sensor_dropout" and a["state"] == "cleared" for a in alerts)


def test_random_faults_put_sensor_dropouts_on_safety_sensors_only() -> None:
    city = City(CityConfig(seed=4, poles=60))
    fs = [f for f in random_faults(city, 4, T0, T0 + 5 * 86_400_000, rate=1.0) if f.kind == "sensor_dropout"]
    assert fs and {f.metric for f in fs} <= set(DROPOUT_FAULT_METRICS)
    assert all(BY_NAME[str(f.metric)].group == "safety" for f in fs)
