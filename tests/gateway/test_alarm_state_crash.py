"""Drill, on a real Mosquitto and the real gateway process: alarms raised after the last full state save
survive a kill -9 and are neither lost nor raised a second time (a second page for the same fault).

The gateway saves the whole state every ``detect_save_every_s`` and, within a second of an alarm change,
only the recent document (alarms, acknowledgements, offline marks): set to an hour here, so the full save
is the one at start, before any alarm, and what brings the alarms back is the recent document alone."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics
from contract.models import Status
from gateway.detection import read_state
from ingest.sqlite import SqliteStore
from testbed.gateway import GatewayProcess, wait_gateway_online
from testbed.servers import Mosquitto

NORMAL = {"leakage_current_ma": 2.0, "tilt_deg": 0.4, "water_level_cm": 0.0, "cabinet_temp_c": 25.0}


class Poles:
    def __init__(self, broker: Mosquitto) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crash-city", protocol=mqtt.MQTTv5)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.seq: dict[str, int] = {}

    def _pub(self, topic: str, payload: str, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def sample(self, pole: str, **over: float) -> None:
        self.seq[pole] = self.seq.get(pole, 0) + 1
        body = {"v": 1, "pole": pole, "boot": "crash", "samples": [
            {"seq": self.seq[pole], "ts": int(time.time() * 1000), "m": {**NORMAL, **over}}]}
        self._pub(topics.telemetry("d1", pole), json.dumps(body))

    def status(self, pole: str, state: str) -> None:
        st = Status(pole=pole, district="d1", state=state, ts=int(time.time() * 1000),  # type: ignore[arg-type]
                    interval_s=10.0, reason="will" if state == "offline" else None)
        self._pub(topics.status("d1", pole), st.model_dump_json(), retain=True)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _until(cond: object, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def _raised(log: str) -> list[tuple[str, str]]:
    """(pole, key) of every ``alarm raised`` log line."""
    return re.findall(r"alarm raised pole=(\S+) .*?key=(\S+)", log)


def _stored(db: Path) -> int:
    store = SqliteStore(db, readonly=True)
    try:
        return store.count()
    finally:
        store.close()


def test_alarms_raised_since_the_last_full_save_survive_a_kill_9(mosquitto: Mosquitto, tmp_path: Path) -> None:
    state = tmp_path / "state"
    gw = GatewayProcess(mosquitto, state, tmp_path / "gw.log", store="sqlite", sqlite_path=str(tmp_path / "lw.sqlite"),
                        client_id="crash-gw", detect_save_every_s=3600, detect_learned_save_every_s=3600)
    since = int(time.time() * 1000)
    gw.start()
    poles = Poles(mosquitto)
    try:
        wait_gateway_online(mosquitto, "crash-gw", since)
        for p in ("p-1", "p-2", "p-3"):
            poles.status(p, "birth")
            poles.sample(p)
        path = state / "alarms-crash-gw.json"
        _until(lambda: path.exists() and _stored(tmp_path / "lw.sqlite") == 3, 30,
               "the full save at start (at the first message), the three samples stored")
        poles.sample("p-1", leakage_current_ma=40.0)  # critical at once
        poles.status("p-2", "offline")  # its Last Will
        _until(lambda: {(a["entity"], a["key"]) for a in read_state(path)["alarms"]}
               == {("p-1", "leakage"), ("p-2", "pole_offline")}, 30, "both alarms in the recent document")
        assert {(a["entity"], a["key"]) for a in json.loads(path.read_bytes())["alarms"]} == set(), \
            "the full save was rewritten: this drill would not test the recent document"
        before = _raised(gw.log_text())
        assert sorted(before) == [("p-1", "leakage"), ("p-2", "pole_offline")]

        _until(lambda: _stored(tmp_path / "lw.sqlite") == 4, 30, "the samples before the crash stored")
        gw.kill()  # kill -9: no close(), no final save
        since = int(time.time() * 1000)
        gw.start()
        wait_gateway_online(mosquitto, "crash-gw", since)
        mark = len(gw.log_text())
        db = tmp_path / "lw.sqlite"
        for _ in range(3):  # the leak goes on, p-2 stays dead (its retained Last Will is read again)
            poles.sample("p-1", leakage_current_ma=40.0)
            poles.sample("p-3")
            time.sleep(1.0)
        # stored means judged first (detection runs before the output); then a tick for silence
        _until(lambda: _stored(db) == 4 + 6, 30, "the samples after the restart stored")
        time.sleep(2.0)
        after = gw.log_text()[mark:]
        assert _raised(after) == [], f"raised again after the restart: {_raised(after)}"
        assert "alarm cleared" not in after, "an alarm active before the crash was cleared by the restart"
        assert {(a["entity"], a["key"]) for a in read_state(path)["alarms"]} == {("p-1", "leakage"),
                                                                                ("p-2", "pole_offline")}
    finally:
        poles.close()
        gw.stop()
