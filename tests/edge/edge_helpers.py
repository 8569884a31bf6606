"""Edge test helpers: a recording MQTT peer, config files, an agent subprocess runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from testbed.servers import Mosquitto

WAIT_S = 60.0  # generous upper bound for waits: a stuck test fails instead of hanging, not a speed check
ROOT = Path(__file__).resolve().parents[2]


def wait_until(pred: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


class Recorder:
    """A persistent-session MQTT 5 subscriber that records every message (survives broker restarts)."""

    def __init__(self, broker: Mosquitto, topic: str = "lampwatch/#", client_id: str = "test-recorder",
                 username: str | None = None, password: str | None = None) -> None:
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, what="recorder subscription")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, options=mqtt.SubscribeOptions(qos=1))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def of(self, suffix: str) -> list[tuple[str, bytes, bool, float]]:
        with self.lock:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def samples(self, pole: str | None = None) -> list[dict[str, Any]]:
        """Every telemetry sample received, in arrival order (resends included), with boot added."""
        out = []
        for _topic, payload, _r, _t in self.of("/telemetry"):
            doc = json.loads(payload)
            if pole is None or doc["pole"] == pole:
                out += [{**s, "boot": doc["boot"], "evicted": doc["evicted"]} for s in doc["samples"]]
        return out

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()



def write_config(path: Path, **fields: Any) -> Path:
    """A TOML config file from keyword fields (strings, numbers, bools, flat tables)."""
    lines = []
    tables = []
    for k, v in fields.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    for name, table in tables:
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """``python -m edge run --config FILE`` as a real subprocess (its own process group)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPWATCH_EDGE_")}
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(self.config)],
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

