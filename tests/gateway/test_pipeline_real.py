"""The spine, end to end on real servers: Mosquitto -> gateway -> InfluxDB 1.6.7 / VictoriaMetrics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics
from contract.models import DeadLetter
from gateway.deadletter import Quarantine
from gateway.mqttsock import BufferedSocket
from gateway.service import Gateway, GatewayConfig
from ingest.influx1 import Influx1Store
from ingest.influx2 import Influx2Store
from ingest.sqlite import SqliteStore
from testbed.servers import InfluxDB1, Mosquitto, VictoriaMetrics
from tests.gateway.helpers import make_messages, run_through_gateway, wait_until

POLES, SAMPLES = 100, 30


def test_3000_points_into_influxdb1_exactly(mosquitto: Mosquitto, influx_db: tuple[InfluxDB1, str],
                                            tmp_path: Path) -> None:
    server, db = influx_db
    msgs = make_messages(POLES, SAMPLES)
    store = Influx1Store(server.url, db)
    gw = run_through_gateway(mosquitto.host, mosquitto.port, store, tmp_path,
                             [(t, p) for t, p, _ in msgs], expected_handled=len(msgs))
    assert gw.counters()["samples_accepted"] == POLES * SAMPLES
    rows = store.rows("SELECT * FROM telemetry GROUP BY pole, district", epoch="ms")
    assert len(rows) == POLES * SAMPLES == store.count()
    got = {(r["pole"], r["time"]): r for r in rows}
    for _t, _p, msg in msgs:
        s = msg.samples[0]
        row = got[(msg.pole, s.ts)]
        assert row["district"] == "north" and row["seq"] == s.seq
        for name, value in s.m.items():
            assert row[name] == value, (msg.pole, name)
    store.close()


def test_same_run_through_influxdb_client_into_victoriametrics(mosquitto: Mosquitto,
                                                               victoria: VictoriaMetrics,
                                                               tmp_path: Path) -> None:
    district = "vmcheck"  # VictoriaMetrics is shared by the session: match only our series
    msgs = make_messages(POLES, SAMPLES, seed=7, district=district,
                         metrics=["leakage_current_ma", "tilt_deg", "supply_voltage_v"])
    store = Influx2Store(victoria.url, token="unused", org="lampwatch", bucket="lampwatch")
    run_through_gateway(mosquitto.host, mosquitto.port, store, tmp_path,
                        [(t, p) for t, p, _ in msgs], expected_handled=len(msgs))
    store.close()
    victoria.force_flush()
    series = victoria.export(f'{{__name__=~"telemetry_.*",district="{district}"}}')
    got: dict[tuple[str, str, int], float] = {}
    for s in series:
        name = s["metric"]["__name__"].removeprefix("telemetry_")
        for v, ts in zip(s["values"], s["timestamps"], strict=True):
            got[(s["metric"]["pole"], name, ts)] = v
    expected = {(m.pole, k, m.samples[0].ts): v for _t, _p, m in msgs for k, v in m.samples[0].m.items()}
    expected |= {(m.pole, "seq", m.samples[0].ts): m.samples[0].seq for _t, _p, m in msgs}
    assert got.keys() == expected.keys()
    for key, v in expected.items():
        assert abs(got[key] - v) <= 1e-9 * max(1.0, abs(v)), key


def test_malformed_and_out_of_range_are_dead_lettered_valid_ones_stored(mosquitto: Mosquitto,
                                                                         tmp_path: Path) -> None:
    msgs = make_messages(40, 10, seed=3, metrics=["leakage_current_ma", "tilt_deg"])
    clean = [(t, p) for t, p, _ in msgs]
    bad: list[tuple[str, bytes, str]] = [
        (topics.telemetry("north", "p-00001"), b"{not json", "bad_json"),
        (topics.telemetry("north", "p-00002"), b'{"v":1,"pole":"p-00002"}', "bad_schema"),
        (topics.telemetry("north", "p-00003"), b"\xff\xfe\x00garbage", "bad_utf8"),
        (topics.telemetry("north", "p-00004"), msgs[0][1], "pole_mismatch"),
        (topics.telemetry("north", "p-00000"),
         msgs[0][1].replace(b'"seq":0', b'"seq":999')
         .replace(b'"leakage_current_ma":', b'"leakage_current_ma":-50+'), "bad_json"),
        (topics.telemetry("north", "p-00000"),
         b'{"v":1,"pole":"p-00000","boot":"b1","samples":[{"seq":998,"ts":%d,"m":{"tilt_deg":95.0}}]}'
         % msgs[0][2].samples[0].ts, "no_valid_values"),
        (topics.telemetry("north", "p-00005"),
         b'{"v":1,"pole":"p-00005","boot":"b1","samples":[{"seq":1,"ts":1,"m":{"tilt_deg":1.0}}]}',
         "bad_schema"),
        (topics.telemetry("north", "p-00006"),
         b'{"v":1,"pole":"p-00006","boot":"b1","samples":[{"seq":1,"ts":1700000000000,"m":{"tilt_deg":"1"}}]}',
         "bad_schema"),
        (topics.telemetry("north", "p-00007"), b"[" * 5000, "bad_json"),
        (topics.telemetry("north", "p-00008"),
         b'{"v":1,"pole":"p-00008","boot":"b1","samples":[{"seq":1,"ts":1700000000000,"m":{"tilt_deg":NaN}}]}',
         "bad_schema"),
        (topics.telemetry("north", "p-00009"), b"x" * 300_000, "too_large"),
        (topics.telemetry("north", "p-00010"),
         b'{"v":1,"pole":"p-00010","boot":"b1","samples":[{"seq":1,"ts":4000000000000,"m":{"tilt_deg":1.0}}]}',
         "ts_future"),
        (topics.telemetry("north", "p-00011"),
         b'{"v":1,"pole":"p-00011","boot":"b1","samples":[{"seq":1,"ts":1700000000000,"m":{"tilt_deg":1.0}}],'
         b'"x":1}', "bad_schema"),
        (topics.telemetry("north", "p-00012"),
         b'{"v":1,"pole":"p-00012","boot":"b1","samples":[{"seq":1,"ts":1700000000000,"m":{"tilt_deg":1.0}}]}',
         "ts_past"),
        ("lampwatch/v1/north/p-00013/telemetry/extra", b"{}", "bad_topic"),
        ("lampwatch/v1/North/p-00014/telemetry", b"{}", "bad_topic"),
        (topics.telemetry("north", "p-00015"),
         b'{"v":2,"pole":"p-00015","boot":"b1","samples":[{"seq":1,"ts":1700000000000,"m":{"tilt_deg":1.0}}]}',
         "bad_schema"),
        (topics.telemetry("north", "p-00016"),
         b'{"v":1,"pole":"p-00016","boot":"b1","samples":[{"seq":1,"ts":1700000000000,"m":{"tilt_deg":1e400}}]}',
         "bad_schema"),
        (topics.telemetry("north", "p-00017"),
         b'{"v":1,"pole":"p-00017","boot":"b1","samples":[{"seq":1,"ts":1700000000000,"m":{"x,y=1 z":1.0}}]}',
         "bad_schema"),
        (topics.telemetry("north", "p-00018"), b"", "bad_json"),
    ]
    assert len(bad) >= 0.05 * len(clean)
    # the gateway subscribes to lampwatch/v1/+/+/telemetry: a topic with an extra level never reaches
    # it (the broker filters it out); every other one must produce exactly one dead letter. The sample
    # whose only value is out of range is refused twice over: the value (out_of_range) and the sample
    # (no_valid_values): one dead letter names both, the store gets one reject point per reason.
    reaching_msgs = [b for b in bad if not b[0].endswith("/extra")]
    reaching = [*reaching_msgs, (topics.telemetry("north", "p-00000"), b"", "out_of_range")]
    dead: list[DeadLetter] = []
    done = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dl-watch", protocol=mqtt.MQTTv5)

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        assert len(m.payload) < 8192  # bounded, whatever the input (one was 300 KB)
        dead.append(DeadLetter.model_validate_json(m.payload))
        if len(dead) >= len(reaching_msgs):
            done.set()

    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(topics.DEADLETTER_PREFIX + "/#", qos=1)
    sub.loop_start()
    interleaved: list[tuple[str, bytes]] = []
    step = len(clean) // len(bad)
    for i, (t, p, _r) in enumerate(bad):
        interleaved += [*clean[i * step:(i + 1) * step], (t, p)]
    interleaved += clean[len(bad) * step:]
    store = SqliteStore(tmp_path / "store.sqlite")
    gw = run_through_gateway(mosquitto.host, mosquitto.port, store, tmp_path, interleaved,
                             expected_handled=len(clean) + len(reaching) - 1)
    wait_until(done.is_set, 30, "dead letters")
    sub.loop_stop()
    sub.disconnect()
    assert store.count("telemetry") == len(clean)
    time.sleep(0.5)  # no extra dead letter arrives late
    got_reasons = sorted((d.topic.split("/")[3], r) for d in dead for r in d.rejects)
    want = sorted((t.split("/")[3], r) for t, _p, r in reaching)
    assert got_reasons == want and len(dead) == len(reaching_msgs)
    big = next(d for d in dead if d.reason == "too_large")
    assert big.size == 300_000 and big.truncated and len(big.excerpt) <= 512 and big.quarantine is not None
    q = Quarantine(tmp_path / "quarantine.sqlite")  # the whole payload, kept locally
    assert q.get(big.quarantine) == b"x" * 300_000
    q.close()
    assert all(d.detail for d in dead)
    rejects = store.select("rejects")
    assert sorted(r["reason"] for r in rejects) == sorted(r for _t, _p, r in reaching)
    utf8 = next(d for d in dead if d.reason == "bad_utf8")
    assert utf8.encoding == "base64"
    c = gw.counters()
    assert c["samples_accepted"] == len(clean)
    assert c["messages"] == len(clean) + len(reaching) - 1
    assert c["samples_rejected"] == len(reaching) - 1 and c["values_rejected"] == 1
    assert c["deadletters"] == len(reaching_msgs)
    json.dumps(c)  # counters are plain numbers
    store.close()


@pytest.mark.parametrize("mqtt_version", [5, 311])
def test_pubacks_released_together_reach_the_broker(mosquitto: Mosquitto, tmp_path: Path, mqtt_version: int) -> None:
    """A flush's PUBACKs go out as one buffer (gateway.mqttsock.BufferedClient.send_pubacks): the broker must take every
    one. A gateway with the same identity started afterwards gets nothing redelivered: a marker published
    after it subscribed is the first and only message it sees (the broker resends unacknowledged
    messages of a session before new ones)."""
    msgs = make_messages(50, 40)
    store = SqliteStore(tmp_path / "store.sqlite")
    first = run_through_gateway(mosquitto.host, mosquitto.port, store, tmp_path / "a",
                                [(t, p) for t, p, _ in msgs], expected_handled=len(msgs), mqtt_version=mqtt_version)
    assert first.counters()["messages"] == len(msgs) == store.count()
    marker = make_messages(1, 1, prefix="m")
    again = run_through_gateway(mosquitto.host, mosquitto.port, store, tmp_path / "b",
                                [(t, p) for t, p, _ in marker], expected_handled=1, mqtt_version=mqtt_version)
    assert again.counters()["messages"] == 1 and again.counters()["duplicates"] == 0
    store.close()


@pytest.mark.parametrize("version", [5, 311])
def test_the_gateway_reads_through_the_buffered_socket(mosquitto: Mosquitto, tmp_path: Path, version: int) -> None:
    """The gateway's connection really is the buffered one (gateway.mqttsock), and 2,000 messages in
    bursts through it arrive whole: every sample stored once, none refused, most of them cut out of the
    buffer by the PUBLISH splitter rather than paho's per-packet path, on MQTT 5 and 3.1.1 alike."""
    msgs = make_messages(100, 20)
    store = SqliteStore(tmp_path / "store.sqlite")
    gw = Gateway(GatewayConfig(host=mosquitto.host, port=mosquitto.port, spool_path=str(tmp_path / "spool.sqlite"),
                               mqtt_version=version), store)
    gw.start()
    try:
        assert isinstance(gw._client._sock, BufferedSocket)
    finally:
        gw.stop()
    gw = run_through_gateway(mosquitto.host, mosquitto.port, store, tmp_path, [(t, p) for t, p, _ in msgs],
                             expected_handled=len(msgs), mqtt_version=version)
    c = gw.counters()
    assert c["samples_accepted"] == len(msgs) == store.count() and sum(v for k, v in c.items()
                                                                       if k.startswith("rejects_")) == 0
    assert gw._client.split_taken > len(msgs) // 2, gw._client.split_taken
    store.close()


def test_a_telemetry_topic_under_the_ops_root_is_dead_lettered_not_taken_as_an_ops_request(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """``lampwatch/v1/_sys/<pole>/telemetry`` matches the telemetry subscription (``_sys`` in the district
    level; a pole's ACL allows any district there). The gateway handed every topic under ``_sys`` to the
    operators' listener, which ignored it: the message was acknowledged, never dead-lettered, and the
    demo's accounting came out one short (seen in a ten-minute demo: lost=1)."""
    from simulator.demo import embedded_gateway
    from simulator.publisher import Publisher

    (topic, body, _m), = make_messages(1, 1)
    hidden = topic.replace("/north/", "/_sys/")
    assert hidden.startswith(topics.SYS + "/") and mqtt.topic_matches_sub(topics.filter_for("telemetry"), hidden)
    with embedded_gateway(mosquitto.host, mosquitto.port, 5, tmp_path, sqlite_only=True) as egw:
        wait_until(lambda: egw.gw.connected, what="gateway subscribed")
        pub = Publisher(mosquitto.host, mosquitto.port, "test-ops-root").connect()
        try:
            pub.publish(hidden, body)
            pub.publish(topic, body)
            pub.flush()
            wait_until(lambda: egw.gw.counters().get("acked", 0) >= 2, what="gateway acks")
        finally:
            pub.close()
        c = egw.gw.counters()
    assert (c["samples_accepted"], c["samples_rejected"]) == (1, 1), c
    assert egw.gw.pipeline.rejects_by_reason["bad_topic"] == 1


def test_detection_gets_statuses_and_readings_in_arrival_order_a_run_of_statuses_in_one_call(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A pole's reading then its Last Will: the will wins (it came last). Births that arrive together
    reach detection in one call (40,000 of them after a power cut were 40,000 alarm steps)."""
    from contract.models import Sample, Telemetry
    from edge.wire import status_payload
    from gateway.detection import DetectionStage
    from gateway.pipeline import Outcome
    from ingest.sqlite import SqliteStore

    calls: list[tuple[int, int]] = []  # (statuses, readings) of each call detection got

    class Recording(DetectionStage):
        def __call__(self, outcome: Outcome) -> list:  # type: ignore[type-arg]
            calls.append((len(outcome.statuses) + (outcome.status is not None), len(outcome.readings)))
            return super().__call__(outcome)

    now = int(time.time() * 1000)

    def reading(pole: str, ts: int) -> tuple[str, bytes]:
        t = Telemetry(pole=pole, boot="b1", samples=[Sample(seq=ts - now + 5000, ts=ts, m={"leakage_current_ma": 1.0})])
        return topics.telemetry("north", pole), t.model_dump_json().encode()

    def status(pole: str, state: str, ts: int) -> tuple[str, bytes]:
        return topics.status("north", pole), status_payload(pole=pole, district="north", state=state, ts_ms=ts,
                                                            reason="will" if state == "offline" else None)

    msgs = [reading("p-1", now - 3000), status("p-1", "offline", now - 2000), status("p-2", "birth", now - 2000),
            status("p-3", "birth", now - 2000), reading("p-2", now - 1000), reading("p-3", now - 1000)]
    stage = Recording(spatial=None, stream=False)
    run_through_gateway(mosquitto.host, mosquitto.port, SqliteStore(str(tmp_path / "db.sqlite")), tmp_path, msgs,
                        len(msgs), on_outcome=stage, batch_max_age_s=2.0)
    assert calls == [(0, 1), (3, 0), (0, 2)]  # one batch: the reading, the three statuses, the two readings
    assert sorted((a.pole, a.key) for a in stage.active()) == [("p-1", "pole_offline")]


def test_an_unrated_lamp_is_judged_by_its_lit_draw_across_a_gateway_restart(mosquitto: Mosquitto,
                                                                           tmp_path: Path) -> None:
    """A pole born without rated_power_w (a device that does not declare it), its 60 W lamp lit: no
    lamp_failure (against the old 120 W default it alarmed at the third reading). After a restart of the
    gateway the lamp, now at 40 W, alarms: the rating it was seen lit at is saved and loaded again."""
    from contract.models import Sample, Telemetry
    from edge.wire import status_payload
    from gateway.detection import DetectionStage

    now = int(time.time() * 1000)
    store_path, state_path = str(tmp_path / "db.sqlite"), str(tmp_path / "state.json")

    def run(msgs: list[tuple[str, bytes]]) -> None:  # one gateway's life: start, take msgs, stop, save
        stage = DetectionStage(state_path=state_path, spatial=None, stream=False)
        try:
            run_through_gateway(mosquitto.host, mosquitto.port, SqliteStore(store_path), tmp_path, msgs, len(msgs),
                                on_outcome=stage, batch_max_age_s=0.2)
        finally:
            stage.close()

    def readings(first: int, watts: float) -> list[tuple[str, bytes]]:
        return [(topics.telemetry("north", "p-1"),
                 Telemetry(pole="p-1", boot="b1", samples=[Sample(seq=first + i, ts=now - 60_000 + (first + i) * 1000,
                                                                   m={"dimming_pct": 100.0, "lamp_power_w": watts})]
                           ).model_dump_json().encode()) for i in range(5)]

    def lamp_alerts() -> list[str]:
        store = SqliteStore(store_path)
        try:
            return [r["state"] for r in store.select("alerts", {"pole": "p-1"}) if r.get("key") == "lamp_failure"]
        finally:
            store.close()

    birth = (topics.status("north", "p-1"), status_payload(pole="p-1", district="north", state="birth",
                                                           ts_ms=now - 61_000, boot="b1"))
    run([birth, *readings(0, 60.0)])
    assert lamp_alerts() == []
    run(readings(5, 40.0))  # a restarted gateway: 40 / 60 = 67 % of the draw it was seen lit at
    assert lamp_alerts() == ["raised"]
