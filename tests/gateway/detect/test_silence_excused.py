"""Silence is the pole's, not the gateway's: a gateway that was down (a deploy, a crash) or had lost its
broker heard nobody, and that time must neither raise offline alarms for the whole city nor clear the
offline alarms of poles that really are dead (an alarm that clears and re-raises pages a person twice).

Before the fix, a restart cleared every active pole_offline alarm and raised it again one silence limit
later, and a gateway that lost its broker for longer than the silence limit raised pole_offline for every
pole it knew.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from contract import topics
from contract.models import Sample, Telemetry
from contract.readings import Reading
from gateway.detect.rules import RuleParams
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome
from gateway.service import Gateway, GatewayConfig
from ingest.sqlite import SqliteStore
from simulator.publisher import Publisher
from testbed.servers import Mosquitto
from tests.gateway.helpers import wait_until

T0 = 1_800_000_000_000
MIN = 60_000


class _Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> float:
        return self.ms / 1000


def _stage(clock: _Clock, path: Path) -> DetectionStage:
    return DetectionStage(state_path=str(path), clock=clock, spatial=None, stream=False)


def _feed(stage: DetectionStage, clock: _Clock, poles: list[str], k: int) -> list[dict[str, Any]]:
    clock.ms = T0 + k * MIN
    rs = [Reading(p, "north", "b", k, clock.ms, {"ambient_temp_c": 12.0}) for p in poles]
    return alerts_of(stage(Outcome(readings=rs))) + alerts_of(stage.tick())


def test_a_restart_neither_clears_nor_raises_offline_alarms(tmp_path: Path) -> None:
    clock, path = _Clock(), tmp_path / "alarms.json"
    s = _stage(clock, path)
    for k in range(5):
        _feed(s, clock, ["p-dead", "p-live", "p-quiet"], k)
    events: list[dict[str, Any]] = []
    for k in range(5, 15):  # p-dead stops for good: offline raised once
        events += _feed(s, clock, ["p-live", "p-quiet"] if k < 14 else ["p-live"], k)
    assert [(a["pole"], a["state"]) for a in events if a["kind"] == "pole_offline"] == [("p-dead", "raised")]
    s.close()
    clock.ms += 30 * MIN  # the gateway is down for half an hour
    again = _stage(clock, path)
    assert [a.pole for a in again.active() if a.kind == "pole_offline"] == ["p-dead"]
    after = []
    for k in range(45, 47):  # p-quiet, silent for a minute before the stop, still has its time left
        after += _feed(again, clock, ["p-live"], k)
    assert [a for a in after if a["kind"] == "pole_offline"] == []  # no clear of p-dead, no raise of p-quiet
    later = []
    for k in range(47, 52):
        later += _feed(again, clock, ["p-live"], k)
    assert [(a["pole"], a["state"]) for a in later if a["kind"] == "pole_offline"] == [("p-quiet", "raised")]
    again.close()


def test_time_the_gateway_was_deaf_is_excused(tmp_path: Path) -> None:
    clock = _Clock()
    s = _stage(clock, tmp_path / "alarms.json")
    for k in range(5):
        _feed(s, clock, ["p-1", "p-2"], k)
    clock.ms = T0 + 40 * MIN  # 35 minutes without the broker, then connected again
    s.excuse(35 * MIN)
    assert alerts_of(s.tick()) == []
    clock.ms += 10 * MIN  # now the poles really are silent
    assert sorted(a["pole"] for a in alerts_of(s.tick()) if a["kind"] == "pole_offline") == ["p-1", "p-2"]
    s.close()


def test_a_gateway_that_lost_its_broker_calls_nobody_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Real Mosquitto: poles report every 0.5 s (offline after 3 s of silence); the broker goes away for
    6 s. The gateway must not call the poles offline for its own deafness, and must still call a pole
    offline that stays silent after the broker is back."""
    stage = DetectionStage(state_path=str(tmp_path / "alarms.json"), spatial=None, stream=False,
                           rule_params=RuleParams(min_silence_ms=3_000.0))
    store = SqliteStore(tmp_path / "lw.sqlite")
    gw = Gateway(GatewayConfig(host=mosquitto.host, port=mosquitto.port, client_id="deaf-gw",
                               spool_path=str(tmp_path / "spool.sqlite"), selfmetrics_interval_s=0.2,
                               batch_max_age_s=0.1), store, on_outcome=stage)
    gw.start()
    seq = {"p-a": 0, "p-b": 0}

    def report(poles: list[str], seconds: float) -> None:
        pub = Publisher(mosquitto.host, mosquitto.port, f"poles-{time.monotonic_ns()}").connect()
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for p in poles:
                    seq[p] += 1
                    msg = Telemetry(pole=p, boot="b1", samples=[Sample(seq=seq[p], ts=int(time.time() * 1000),
                                                                       m={"ambient_temp_c": 12.0})])
                    pub.publish(topics.telemetry("north", p), msg.model_dump_json().encode())
                time.sleep(0.5)
            pub.flush(timeout_s=10)
        finally:
            pub.close()

    try:
        wait_until(lambda: gw.connected, 20, "gateway connected")
        report(["p-a", "p-b"], 3.0)
        wait_until(lambda: stage.counters().get("readings", 0) >= 8 or store.count("telemetry") >= 8, 20,
                   "readings stored")
        mosquitto.stop()  # the broker goes away for twice the silence limit
        time.sleep(6.0)
        mosquitto.start()
        wait_until(lambda: gw.connected, 60, "gateway reconnected")
        assert [a.pole for a in stage.active() if a.kind == "pole_offline"] == []
        assert stage.counters()["excused_ms"] >= 3_000  # most of the 6 s (noticing the loss takes a moment)
        report(["p-a"], 5.0)  # p-b stays silent once the broker is back: that is a real silence
        wait_until(lambda: any(a.kind == "pole_offline" for a in stage.active()), 30, "p-b offline")
        assert [a.pole for a in stage.active() if a.kind == "pole_offline"] == ["p-b"]
    finally:
        gw.stop()
        store.close()
