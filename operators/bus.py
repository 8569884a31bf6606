"""The operator CLI's MQTT side: retained state, requests and their answers (paho, bounded waits)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.errors import BrokerError


class Bus:
    """One short-lived MQTT connection with a random client id (never steals another session)."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 mqtt_version: int = 5, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, connect_timeout_s: float = 10.0) -> None:
        self.client_id = f"lampwatch-ops-{secrets.token_hex(4)}"
        v5 = mqtt_version == 5
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                              protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if username:
            self._c.username_pw_set(username, password)
        if tls_ca:
            self._c.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key)
        self._lock = threading.Lock()
        self._sub_lock = threading.Lock()
        self._handlers: list[tuple[str, Callable[[str, bytes], None]]] = []
        self._connected = threading.Event()
        self._refused: str | None = None
        self._subacks: dict[int, threading.Event] = {}
        self._c.on_connect = self._on_connect
        self._c.on_message = self._on_message
        self._c.on_subscribe = self._on_subscribe
        self.host, self.port, self.connect_timeout_s = host, port, connect_timeout_s

    def __enter__(self) -> Bus:
        try:
            self._c.connect(self.host, self.port)
        except OSError as exc:
            raise BrokerError(f"cannot reach broker {self.host}:{self.port}: {exc}") from exc
        self._c.loop_start()
        if not self._connected.wait(self.connect_timeout_s):
            self.close()
            raise BrokerError(self._refused or f"broker {self.host}:{self.port} did not answer the CONNECT")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._refused = f"broker refused the operator's login: {rc}"
            return
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _p: Any) -> None:
        with self._sub_lock:
            ev = self._subacks.get(mid)
        if any(getattr(rc, "is_failure", False) for rc in rcs):
            self._refused = f"broker refused a subscription: {rcs}"
        if ev is not None:
            ev.set()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for flt, fn in handlers:
            if mqtt.topic_matches_sub(flt, m.topic):
                fn(m.topic, bytes(m.payload))

    def subscribe(self, topic_filter: str, fn: Callable[[str, bytes], None], timeout_s: float = 5.0) -> None:
        """Subscribe and wait for the SUBACK (so nothing published after this returns is missed)."""
        with self._lock:
            self._handlers.append((topic_filter, fn))
        ev = threading.Event()
        with self._sub_lock:  # the SUBACK handler waits for this lock: the event is registered first
            rc, mid = self._c.subscribe(topic_filter, qos=1)
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                raise BrokerError(f"cannot subscribe to {topic_filter}: rc={rc}")
            self._subacks[mid] = ev
        if not ev.wait(timeout_s) or self._refused:
            raise BrokerError(self._refused or f"no SUBACK for {topic_filter} within {timeout_s:g} s")

    def retained(self, topic_filter: str, wait_s: float) -> dict[str, bytes]:
        """Every retained message under ``topic_filter`` (collected for ``wait_s``, ends early once quiet)."""
        got: dict[str, bytes] = {}
        last = [time.monotonic()]

        def on(topic: str, payload: bytes) -> None:
            got[topic] = payload
            last[0] = time.monotonic()

        t0 = time.monotonic()
        self.subscribe(topic_filter, on)
        while time.monotonic() - t0 < wait_s:
            if got and time.monotonic() - last[0] > 0.3:
                break
            time.sleep(0.05)
        return {t: p for t, p in got.items() if p}

    def publish(self, topic: str, payload: bytes | str, timeout_s: float = 5.0) -> None:
        info = self._c.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"cannot publish to {topic}: rc={info.rc}")
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise BrokerError(f"broker did not acknowledge the publish to {topic} within {timeout_s:g} s")

    def request(self, topic: str, payload: bytes | str, answer_filter: str,
                accept: Callable[[str, bytes], Any], timeout_s: float) -> Any:
        """Subscribe to the answer first, publish, wait for the first answer ``accept`` maps to non-None."""
        done = threading.Event()
        box: list[Any] = []

        def on(t: str, p: bytes) -> None:
            if done.is_set():
                return
            v = accept(t, p)
            if v is not None:
                box.append(v)
                done.set()

        self.subscribe(answer_filter, on)
        self.publish(topic, payload)
        done.wait(timeout_s)
        return box[0] if box else None
