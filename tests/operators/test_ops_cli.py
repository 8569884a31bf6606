"""``lampwatch-ops`` against real servers: Mosquitto, the real gateway (SQLite store), Alertmanager and a
real edge agent. Acknowledge, shelve (an Alertmanager silence), maintenance, poles, ``cmd send``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from contract import topics
from contract.models import Alert, Status
from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from gateway.app import build_with_store
from gateway.settings import GatewaySettings
from ingest.sqlite import SqliteStore
from operators.cli import app
from testbed.servers import Mosquitto

WAIT_S = 30.0


def _wait(cond: Any, what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Peer:
    """A test MQTT client: publishes as a pole would and keeps the latest retained alert per topic."""

    def __init__(self, broker: Mosquitto) -> None:
        self.alerts: dict[str, Alert] = {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(topics.filter_for("alert"), qos=1)

    def _on(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        if m.payload:
            self.alerts[m.topic] = Alert.model_validate_json(m.payload)

    def pub(self, topic: str, payload: str, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def telemetry(self, district: str, pole: str, seq: int, **m: float) -> None:
        body = {"v": 1, "pole": pole, "boot": "b1", "samples": [{"seq": seq, "ts": int(time.time() * 1000), "m": m}]}
        self.pub(topics.telemetry(district, pole), json.dumps(body))

    def alert(self, district: str, pole: str, key: str) -> Alert | None:
        return self.alerts.get(topics.alert(district, pole, key))

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def city(mosquitto: Mosquitto, alertmanager: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = GatewaySettings(mqtt_host=mosquitto.host, mqtt_port=mosquitto.port, state_dir=str(tmp_path / "gw"),
                               client_id="ops-test-gw", alertmanager_url=alertmanager.url,
                               grafana_url="http://grafana.example", selfmetrics_interval_s=0.5, store="sqlite",
                               sqlite_path=str(tmp_path / "lw.sqlite"))
    store = SqliteStore(tmp_path / "lw.sqlite")
    gw = build_with_store(settings, store)
    gw.start()
    agent = EdgeAgent(EdgeConfig(pole="p-1", district="north", mqtt_port=mosquitto.port, backoff_min_s=0.1,
                                 backoff_max_s=0.5, outbox_path=tmp_path / "outbox.sqlite", report_interval_s=30.0))
    agent.start()
    peer = Peer(mosquitto)
    env = {"LAMPWATCH_OPS_MQTT_HOST": mosquitto.host, "LAMPWATCH_OPS_MQTT_PORT": str(mosquitto.port),
           "LAMPWATCH_OPS_OPERATOR": "alice", "LAMPWATCH_OPS_ALERTMANAGER_URL": alertmanager.url,
           "LAMPWATCH_OPS_STORE": "sqlite", "LAMPWATCH_OPS_SQLITE_PATH": str(tmp_path / "lw.sqlite"),
           "LAMPWATCH_OPS_RETAINED_WAIT_S": "1.0"}
    try:
        yield {"gw": gw, "peer": peer, "am": alertmanager, "env": env, "store": store}
    finally:
        peer.close()
        agent.stop()
        gw.stop()
        store.close()


def ops(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def test_cmd_send_round_trip_with_a_real_edge_agent(city: dict[str, Any]) -> None:
    env = city["env"]
    _wait(lambda: "p-1" in ops(env, "poles", "list").stdout, "the agent's retained birth")
    res = ops(env, "cmd", "send", "p-1", "ping", "--timeout", "10")
    assert res.exit_code == 0, res.output
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("cmd: pole=p-1 district=north cmd=ping ") and " ok=true " in line
    res = ops(env, "cmd", "send", "p-1", "set-interval", "--interval-s", "5")
    assert res.exit_code == 0 and "ok=true" in res.stdout, res.output
    res = ops(env, "cmd", "send", "p-1", "set-interval", "--interval-s", "0.01")  # the agent refuses it
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1, res.output  # refused before sending
    res = ops(env, "cmd", "send", "p-1", "reboot")
    assert res.exit_code == 2 and res.stderr.startswith("lampwatch-ops: error: unknown command 'reboot'")
    res = ops(env, "cmd", "send", "p-404", "ping", "--district", "north", "--timeout", "1")
    assert res.exit_code == 1 and len(res.stderr.splitlines()) == 1 and "no ack" in res.stderr


def test_ack_shelve_maintenance_and_poles(city: dict[str, Any]) -> None:
    env, peer, am = city["env"], city["peer"], city["am"]
    birth = Status(pole="p-2", district="south", state="birth", ts=int(time.time() * 1000), interval_s=60.0)
    peer.pub(topics.status("south", "p-2"), birth.model_dump_json(), retain=True)
    peer.telemetry("south", "p-2", 1, leakage_current_ma=41.0)
    leak = _wait(lambda: peer.alert("south", "p-2", "leakage"), "the leakage alarm")
    assert leak.severity == "critical" and leak.state == "raised"
    # the notification reached Alertmanager with the pole's labels
    am_alert = _wait(lambda: [a for a in am.alerts() if a["labels"].get("pole") == "p-2"], "alertmanager")[0]
    assert am_alert["labels"]["severity"] == "critical" and "p-2" in am_alert["annotations"]["dashboard"]

    res = ops(env, "alarms", "list")
    assert res.exit_code == 0, res.output
    row = next(line for line in res.stdout.splitlines() if " p-2 " in line)
    assert "leakage" in row and "critical" in row and row.split()[5] == "-"  # not acknowledged yet
    res = ops(env, "alarms", "ack", "p-2", "leakage", "--note", "crew sent")
    assert res.exit_code == 0, res.output
    assert "ack: pole=p-2 district=south key=leakage by=alice gateway=ops-test-gw ok=true" in res.stdout
    acked = _wait(lambda: (a := peer.alert("south", "p-2", "leakage")) and a.acked_by and a, "the retained ack")
    assert acked.acked_by == "alice" and acked.ack_note == "crew sent"
    _wait(lambda: any("acknowledged" in a["annotations"] for a in am.alerts() if a["labels"]["pole"] == "p-2"),
          "the acknowledgement in alertmanager")
    assert "alice" in next(line for line in ops(env, "alarms", "list").stdout.splitlines() if " p-2 " in line)
    # the alerts measurement holds it too
    _wait(lambda: any(r.get("acked_by") == "alice" for r in city["store"].select("alerts", {"pole": "p-2"})),
          "the acknowledged alerts point")

    res = ops(env, "alarms", "ack", "p-2", "flood")
    assert res.exit_code == 1 and "ok=false reason=no active alarm flood" in res.stdout

    res = ops(env, "alarms", "shelve", "p-2", "leakage", "--for", "1h", "--note", "known, ticket 812")
    assert res.exit_code == 0, res.output
    silences = [s for s in am.api("GET", "/silences") if s["status"]["state"] == "active"]
    assert len(silences) == 1 and silences[0]["createdBy"] == "alice"
    assert f"silence={silences[0]['id']}" in res.stdout
    _wait(lambda: any(a["status"]["silencedBy"] for a in am.alerts() if a["labels"]["pole"] == "p-2"),
          "the alert silenced")
    shelved = _wait(lambda: (a := peer.alert("south", "p-2", "leakage")) and a.shelved_until and a, "shelved")
    assert shelved.silence_id == silences[0]["id"]

    res = ops(env, "maintenance", "start", "p-2", "--for", "1h")
    assert res.exit_code == 0 and "ok=true" in res.stdout, res.output
    peer.telemetry("south", "p-2", 2, door_open=1.0)
    peer.telemetry("south", "p-2", 3, leakage_current_ma=2.0)  # a later message, to know the first was judged
    time.sleep(1.5)
    assert peer.alert("south", "p-2", "door_open") is None
    assert ops(env, "maintenance", "end", "p-2").exit_code == 0
    peer.telemetry("south", "p-2", 4, door_open=1.0)
    door = _wait(lambda: peer.alert("south", "p-2", "door_open"), "the door alarm after maintenance")
    assert door.state == "raised"

    res = ops(env, "poles", "list")
    assert res.exit_code == 0, res.output
    p2 = next(line.split() for line in res.stdout.splitlines() if " p-2 " in line)
    assert p2[2] == "birth" and p2[4] == "yes" and p2[5].endswith("s")  # online, last seen from the store
    assert res.stdout.strip().splitlines()[-1].startswith("poles: listed=2 online=2 offline=0")
    res = ops(env, "poles", "show", "p-2")
    assert res.exit_code == 0, res.output
    assert "alarm.leakage" in res.stdout and "acknowledged by alice" in res.stdout
    res = ops(env, "poles", "show", "p-9")
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1


def test_gateway_with_an_inventory_dead_letters_district_hopping(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Real broker and gateway: telemetry under another district is refused and dead-lettered with reason
    wrong_district; the pole's own district is stored; a device-declared baseline moves nothing."""
    inv = tmp_path / "inventory.csv"
    inv.write_text("pole,district,lat,lon,rated_power_w,nominal_voltage_v,tilt_baseline_deg,sensors\n"
                   "p-7,north,52.5,13.4,120,230,0,tilt_deg\n")
    settings = GatewaySettings(mqtt_host=mosquitto.host, mqtt_port=mosquitto.port, state_dir=str(tmp_path / "gw"),
                               client_id="inv-test-gw", inventory_path=str(inv), store="sqlite",
                               sqlite_path=str(tmp_path / "lw.sqlite"), selfmetrics_interval_s=0.5)
    store = SqliteStore(tmp_path / "lw.sqlite")
    gw = build_with_store(settings, store)
    dead: list[dict[str, Any]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, m: dead.append(json.loads(m.payload))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(f"{topics.DEADLETTER_PREFIX}/#", qos=1)
    sub.loop_start()
    gw.start()
    peer = Peer(mosquitto)
    try:
        peer.pub(topics.status("north", "p-7"), Status(pole="p-7", district="north", state="birth",
                                                      ts=int(time.time() * 1000), tilt_baseline_deg=40.0
                                                      ).model_dump_json(), retain=True)
        peer.telemetry("south", "p-7", 1, tilt_deg=42.0)
        peer.telemetry("north", "p-7", 2, tilt_deg=42.0)
        tilt = _wait(lambda: peer.alert("north", "p-7", "tilt"), "the tilt alarm")
        assert tilt.severity == "critical"  # judged against the inventory's 0, not the declared 40
        assert _wait(lambda: peer.alert("north", "p-7", "inventory_mismatch"), "the mismatch notice").state == "raised"
        got = _wait(lambda: [d for d in dead if d["reason"] == "wrong_district"], "the dead letter")
        assert got[0]["pole"] == "p-7" and "belongs to district north" in got[0]["detail"]
        _wait(lambda: gw.counters().get("rejects_wrong_district") == 1, "the reject counter")
        # the alarm is published by detection before the output thread writes the batch: wait for the store
        stored = _wait(lambda: store.select("telemetry", {"pole": "p-7"}), "the stored reading")
        assert [r["seq"] for r in stored] == [2]
    finally:
        peer.close()
        sub.loop_stop()
        sub.disconnect()
        gw.stop()
        store.close()


def test_no_gateway_means_one_line_and_exit_1(mosquitto: Mosquitto) -> None:
    env = {"LAMPWATCH_OPS_MQTT_HOST": mosquitto.host, "LAMPWATCH_OPS_MQTT_PORT": str(mosquitto.port)}
    res = ops(env, "alarms", "ack", "p-1", "leakage", "--district", "north", "--timeout", "0.5")
    assert res.exit_code == 1 and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("lampwatch-ops: error: no gateway answered request ops-")
    res = ops(env, "alarms", "shelve", "p-1", "leakage", "--district", "north", "--for", "2x")
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1 and "not a duration" in res.stderr
    res = ops({**env, "LAMPWATCH_OPS_OPERATOR": "bad name"}, "alarms", "list")
    assert res.exit_code == 2 and "operator 'bad name'" in res.stderr
    res = ops({**env, "LAMPWATCH_OPS_MQTT_PORT": "1"}, "alarms", "list")
    assert res.exit_code == 2 and "cannot reach broker" in res.stderr and len(res.stderr.splitlines()) == 1
