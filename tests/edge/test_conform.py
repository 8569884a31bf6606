"""lampwatch-edge conform: the real edge agent passes every requirement (through a kill -9 and a
restart); deliberately broken devices, made here with paho, each fail exactly the requirement their
defect breaks. All against a real Mosquitto."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics
from edge.conform import REQUIREMENTS, Broker, Seen, Verdict, conform, judge, summary
from testbed.servers import Mosquitto
from tests.edge.edge_helpers import AgentProcess, Recorder, wait_until, write_config

BIN = Path(sys.executable).parent
DISTRICT = "north"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Defects:
    will: bool = True
    birth_retained: bool = True
    qos: int = 1
    seq_restart: bool = False
    reuse_boot: bool = False
    ts_offset_ms: int = 0
    ts_seconds: bool = False
    bad_payload: bool = False
    ack: bool = True


@dataclass
class Device:
    """A hand-made device speaking the contract through paho, with the defects it is given."""

    broker: Mosquitto
    pole: str
    d: Defects
    seq: int = 100
    boot: str = field(default_factory=lambda: uuid.uuid4().hex)
    client: mqtt.Client | None = None

    @property
    def t_status(self) -> str:
        return topics.status(DISTRICT, self.pole)

    def _status(self, state: str, reason: str | None = None) -> bytes:
        doc: dict[str, Any] = {"v": 1, "pole": self.pole, "district": DISTRICT, "state": state, "ts": _now_ms(),
                               "boot": self.boot}
        if reason:
            doc["reason"] = reason
        return json.dumps(doc).encode()

    def connect(self) -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.pole, protocol=mqtt.MQTTv5)
        if self.d.will:
            c.will_set(self.t_status, self._status("offline", "will"), qos=1, retain=True)
        subscribed = threading.Event()

        def on_message(cl: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            cmd = json.loads(m.payload)
            if self.d.ack:
                ack = {"v": 1, "id": cmd["id"], "pole": self.pole, "ok": True, "ts": _now_ms(),
                       "result": {"uptime_s": 1.0}}
                cl.publish(topics.cmd_ack(DISTRICT, self.pole), json.dumps(ack), qos=1)

        c.on_message = on_message
        c.on_subscribe = lambda *_a: subscribed.set()
        c.connect(self.broker.host, self.broker.port, keepalive=30)
        c.loop_start()
        c.subscribe(topics.cmd(DISTRICT, self.pole), qos=1)
        assert subscribed.wait(10)
        self.client = c

    def birth(self) -> None:
        assert self.client is not None
        info = self.client.publish(self.t_status, self._status("birth"), qos=1, retain=self.d.birth_retained)
        info.wait_for_publish(10)

    def telemetry(self, n: int) -> None:
        assert self.client is not None
        for _ in range(n):
            ts = _now_ms() + self.d.ts_offset_ms
            sample = {"seq": self.seq, "ts": ts // 1000 if self.d.ts_seconds else ts,
                      "m": {"tilt_deg": 0.5, "leakage_current_ma": 2.0}}
            self.seq += 1
            body = {"v": 1, "pole": self.pole, "boot": self.boot, "samples": [sample]}
            info = self.client.publish(topics.telemetry(DISTRICT, self.pole), json.dumps(body), qos=self.d.qos)
            if self.d.qos:
                info.wait_for_publish(10)
            time.sleep(0.1)
        if self.d.bad_payload:  # one extra message that breaks the schema (its seq is not consumed)
            bad = {"v": 1, "pole": self.pole, "district": DISTRICT, "boot": self.boot,
                   "samples": [{"seq": self.seq, "ts": _now_ms(), "m": {"tilt_deg": 0.5}}]}
            self.client.publish(topics.telemetry(DISTRICT, self.pole), json.dumps(bad), qos=1).wait_for_publish(10)

    def drop(self) -> None:
        """Power cut: the TCP connection dies without DISCONNECT (the broker then sends the will)."""
        assert self.client is not None
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()
        self.client = None

    def reboot(self) -> None:
        self.drop()
        time.sleep(0.3)
        if not self.d.reuse_boot:
            self.boot = uuid.uuid4().hex
        if self.d.seq_restart:
            self.seq = 0
        self.connect()
        self.birth()

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


def run_against(broker: Mosquitto, d: Defects, duration_s: float = 4.0) -> list[Verdict]:
    pole = f"p-conf-{uuid.uuid4().hex[:6]}"
    dev = Device(broker, pole, d)
    dev.connect()
    watching = threading.Event()
    out: list[list[Verdict]] = []
    t = threading.Thread(target=lambda: out.append(conform(Broker(broker.host, broker.port), pole, DISTRICT,
                                                           duration_s, on_watching=watching.set)))
    t.start()
    try:
        assert watching.wait(15)
        dev.birth()
        dev.telemetry(5)
        dev.reboot()
        dev.telemetry(5)
    finally:
        t.join(60)
        dev.close()
    assert out, "the checker did not finish"
    return out[0]


def failing(verdicts: list[Verdict]) -> set[str]:
    return {v.requirement for v in verdicts if v.outcome == "fail"}


def test_a_correct_hand_made_device_passes_everything(mosquitto: Mosquitto) -> None:
    verdicts = run_against(mosquitto, Defects())
    assert [v.requirement for v in verdicts] == list(REQUIREMENTS)
    assert all(v.outcome == "pass" for v in verdicts), [v.line() for v in verdicts]
    assert "1 reboot(s) with new boot id and seq continuing" in verdicts[3].detail


@pytest.mark.parametrize(("defect", "expected"), [
    (Defects(birth_retained=False), {"birth-retained"}),
    (Defects(will=False), {"last-will"}),
    (Defects(qos=0), {"telemetry-qos1"}),
    (Defects(seq_restart=True), {"seq-continuity"}),
    (Defects(reuse_boot=True), {"seq-continuity"}),
    (Defects(ts_offset_ms=3_600_000), {"timestamps"}),
    (Defects(ts_seconds=True), {"timestamps", "payloads-valid"}),
    (Defects(bad_payload=True), {"payloads-valid"}),
    (Defects(ack=False), {"commands-acked"}),
], ids=["birth-not-retained", "no-will", "qos0", "seq-restart", "boot-reused", "clock-ahead", "ts-seconds",
        "bad-payload", "no-ack"])
def test_each_defect_is_named(mosquitto: Mosquitto, defect: Defects, expected: set[str]) -> None:
    verdicts = run_against(mosquitto, defect)
    assert failing(verdicts) == expected, [v.line() for v in verdicts]
    for v in verdicts:
        if v.outcome == "fail":
            assert v.detail and "\n" not in v.detail


def test_nothing_seen_is_not_a_pass() -> None:
    verdicts = judge("p-1", DISTRICT, [], ping_id=None)
    assert {v.outcome for v in verdicts} == {"not-seen"}
    assert summary("p-1", verdicts) == "conform p-1: pass=0 fail=0 not-seen=7"
    ping_only = judge("p-1", DISTRICT, [], ping_id="x")
    assert failing(ping_only) == {"commands-acked"}


def test_a_gap_is_allowed_only_when_reported_as_evicted() -> None:
    def tel(seq: int, evicted: int) -> Seen:
        body = {"pole": "p-1", "boot": "b", "samples": [{"seq": seq, "ts": _now_ms(), "m": {"tilt_deg": 1}}],
                "evicted": evicted}
        return Seen(_now_ms(), topics.telemetry(DISTRICT, "p-1"), json.dumps(body).encode(), 1, False)

    assert "seq-continuity" in failing(judge("p-1", DISTRICT, [tel(1, 0), tel(5, 0)], None))
    assert "seq-continuity" not in failing(judge("p-1", DISTRICT, [tel(1, 0), tel(5, 3)], None))
    assert "seq-continuity" not in failing(judge("p-1", DISTRICT, [tel(1, 0), tel(2, 0), tel(2, 0)], None))


def test_the_real_edge_agent_passes_through_kill_and_restart(mosquitto: Mosquitto, tmp_path: Path,
                                                               recorder_factory: Callable[..., Recorder],
                                                               agent_process: Callable[[Path, Path], AgentProcess],
                                                               ) -> None:
    pole = "p-conform-1"
    cfg = write_config(tmp_path / "pole.toml", pole=pole, district=DISTRICT, mqtt_host=mosquitto.host,
                       mqtt_port=mosquitto.port, report_interval_s=0.5, outbox_path=str(tmp_path / "outbox.sqlite"),
                       mqtt_keepalive_s=5)
    rec = recorder_factory(mosquitto, topic=f"lampwatch/v1/{DISTRICT}/{pole}/#")
    env = {**os.environ, "COLUMNS": "200"}
    checker = subprocess.Popen([str(BIN / "lampwatch-edge"), "conform", "--pole", pole, "--district", DISTRICT,
                                "--duration", "25", "--host", mosquitto.host, "--port", str(mosquitto.port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.5)  # the checker subscribes (a python start) before the agent's birth
        agent = agent_process(cfg, tmp_path / "agent1.log").start()
        wait_until(lambda: len(rec.of("/telemetry")) >= 3, what="telemetry from the first boot")
        agent.kill9()
        wait_until(lambda: any(b'"reason":"will"' in p for _t, p, _r, _ts in rec.of("/status")), what="the will")
        agent_process(cfg, tmp_path / "agent2.log").start()
        wait_until(lambda: sum(b'"birth"' in p for _t, p, _r, _ts in rec.of("/status")) >= 2, what="rebirth")
        n = len(rec.of("/telemetry"))
        wait_until(lambda: len(rec.of("/telemetry")) >= n + 3, what="telemetry after the reboot")
        out, err = checker.communicate(timeout=60)
    finally:
        if checker.poll() is None:
            checker.kill()
            checker.wait(10)
    lines = out.splitlines()
    assert checker.returncode == 0, (out, err)
    assert lines[-1] == f"conform {pole}: pass=7 fail=0 not-seen=0", out
    assert len(lines) == 8 and all(line.startswith("pass ") for line in lines[:-1]), out
    assert "reboot(s) with new boot id and seq continuing" in out


def test_conform_against_no_broker_is_one_line() -> None:
    from testbed.servers import free_port

    res = subprocess.run([str(BIN / "lampwatch-edge"), "conform", "--pole", "p-1", "--district", "north",
                          "--duration", "1", "--port", str(free_port())], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("lampwatch-edge: error: cannot reach broker")


def test_a_will_set_long_ago_is_not_a_clock_fault() -> None:
    hour_ago = _now_ms() - 3_600_000
    will = {"pole": "p-1", "district": DISTRICT, "state": "offline", "ts": hour_ago, "boot": "b", "reason": "will"}
    birth = {**will, "state": "birth", "ts": hour_ago, "reason": None}
    t = topics.status(DISTRICT, "p-1")
    assert failing(judge("p-1", DISTRICT, [Seen(_now_ms(), t, json.dumps(will).encode(), 1, True)], None)) == set()
    assert failing(judge("p-1", DISTRICT, [Seen(_now_ms(), t, json.dumps(birth).encode(), 1, True)], None)) \
        == {"timestamps"}
