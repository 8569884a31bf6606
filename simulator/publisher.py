"""The multiplexed publisher: a few MQTT connections publishing for many poles at QoS 1.

Counts what the broker acknowledged (PUBACK), so a run knows exactly what it delivered. paho keeps
at most ``max_inflight`` unacknowledged publishes on the wire (0 = no limit: paho walks its in-flight
list on every PUBACK, which cost a third of the publisher's CPU at 1,000; callers pace themselves
with :meth:`wait_below` instead) and queues the rest in memory; beyond
65,535 outstanding publishes ``publish()`` returns MQTT_ERR_QUEUE_SIZE without raising, so every
return code is checked and the caller is paced by :meth:`wait_below`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.errors import BrokerError


class Publisher:
    def __init__(self, host: str, port: int, client_id: str, *, mqtt_version: int = 5,
                 max_inflight: int = 0, username: str | None = None, password: str | None = None) -> None:
        self.host, self.port = host, port
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                              protocol=mqtt.MQTTv5 if mqtt_version == 5 else mqtt.MQTTv311)
        if username:
            self._c.username_pw_set(username, password)
        self._c.max_inflight_messages_set(max_inflight)
        self._c.max_queued_messages_set(0)
        self._c.on_publish = self._on_publish
        self._c.on_connect = self._on_connect
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.sent = 0
        self.acked = 0
        self.refused = 0  # MQTT 5 PUBACK with a failure reason (e.g. 135 not authorised)

    def _on_connect(self, *_a: Any) -> None:
        self._connected.set()

    def _on_publish(self, _c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        with self._lock:
            self.acked += 1
            if getattr(rc, "is_failure", False):
                self.refused += 1

    def connect(self, timeout_s: float = 10.0) -> Publisher:
        try:
            self._c.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise BrokerError(f"cannot reach broker {self.host}:{self.port}: {exc}") from exc
        self._c.loop_start()
        if not self._connected.wait(timeout_s):
            raise BrokerError(f"broker {self.host}:{self.port} did not accept the connection")
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self._c.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise BrokerError(f"publish refused locally: {mqtt.error_string(info.rc)}")
        with self._lock:
            self.sent += 1
            if qos == 0:
                self.acked += 1

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self.sent - self.acked

    def wait_below(self, n: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.outstanding > n:
            if time.monotonic() > deadline:
                raise BrokerError(f"{self.outstanding} publishes still unacknowledged after {timeout_s} s")
            time.sleep(0.002)

    def flush(self, timeout_s: float = 60.0) -> None:
        self.wait_below(0, timeout_s)

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()
