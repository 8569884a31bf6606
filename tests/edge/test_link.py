"""MqttLink driven by hand through its public surface (socket / wants_write / read / write / step),
with no EdgeLoop: the state machine alone, against a real Mosquitto and a port nobody listens on."""

from __future__ import annotations

import json
import random
import selectors
import time
from collections.abc import Callable
from typing import Any

from edge.link import LinkSettings, MqttLink
from testbed.servers import Mosquitto, free_port
from tests.edge.edge_helpers import Recorder

WILL = ("lampwatch/v1/north/p-1/status", b'{"state":"offline"}')


class Handler:
    def __init__(self) -> None:
        self.connected: list[bool] = []
        self.acks: dict[int, int] = {}

    def will(self) -> tuple[str, bytes]:
        return WILL

    def on_connected(self, session_present: bool) -> None:
        self.connected.append(session_present)

    def on_disconnected(self, reason: str) -> None:
        pass

    def on_published(self, mid: int, reason_code: int, reason: str) -> None:
        self.acks[mid] = reason_code

    def on_message(self, topic: str, payload: bytes) -> None:
        pass


class Watch:
    """A SocketWatcher over one selector, as the loop keeps it."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.opened = 0

    def socket_opened(self, link: MqttLink, sock: Any) -> None:
        self.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        self.opened += 1

    def socket_closed(self, link: MqttLink, sock: Any) -> None:
        self.sel.unregister(sock)


def drive(link: MqttLink, watch: Watch, until: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """The smallest driver: select, read/write on readiness, step at the deadline. Bounded."""
    deadline = time.monotonic() + timeout_s
    nxt: float | None = 0.0
    while not until():
        now = time.monotonic()
        assert now < deadline, "the link did not get there in time"
        if nxt is None:
            return
        wait = max(0.0, min(0.2, nxt - now))
        for _key, mask in watch.sel.select(wait) if watch.sel.get_map() else []:
            if mask & selectors.EVENT_READ:
                link.read()
            if mask & selectors.EVENT_WRITE and link.wants_write():
                link.write()
        if not watch.sel.get_map():
            time.sleep(wait)
        nxt = link.step(time.monotonic())


def _settings(port: int, **kw: Any) -> LinkSettings:
    return LinkSettings(**{"host": "127.0.0.1", "port": port, "client_id": "p-1", "keepalive_s": 10,
                           "backoff_min_s": 0.05, "backoff_max_s": 0.2, **kw})


def test_a_refused_connection_backs_off_and_the_gate_holds_attempts() -> None:
    link = MqttLink(_settings(free_port()), Handler(), rng=random.Random(1))
    now = time.monotonic()
    assert link.step(now, lambda _t: False) == now + 0.02  # the driver's pacing said not yet: no attempt
    assert link.counts["connect_failures"] == 0
    retry_at = link.step(now)
    assert link.counts["connect_failures"] == 1 and link.socket() is None and not link.connected
    assert retry_at is not None and retry_at > now and "Refused" in link.last_error
    assert link.step(now) == retry_at and link.counts["connect_failures"] == 1  # not before the backoff ends
    link.request_close()
    assert link.step(now) is None and link.closed.is_set()


def test_connect_publish_ack_and_a_clean_close_with_the_final_status(
        mosquitto: Mosquitto, recorder_factory: Callable[..., Recorder]) -> None:
    rec = recorder_factory(mosquitto)
    handler, watch = Handler(), Watch()
    link = MqttLink(_settings(mosquitto.port), handler)
    link.watch(watch)
    drive(link, watch, lambda: link.connected)
    assert handler.connected == [False] and watch.opened == 1
    mid = link.publish("lampwatch/v1/north/p-1/telemetry", b"{}", qos=1)
    assert mid is not None
    drive(link, watch, lambda: mid in handler.acks)
    assert handler.acks[mid] == 0
    link.request_close(final=("lampwatch/v1/north/p-1/status", b'{"state":"offline","reason":"shutdown"}'))
    drive(link, watch, link.closed.is_set)
    assert link.socket() is None and not watch.sel.get_map()
    deadline = time.monotonic() + 30
    while not rec.of("/p-1/status") and time.monotonic() < deadline:
        time.sleep(0.02)
    statuses = [json.loads(p) for _t, p, _r, _ts in rec.of("/p-1/status")]
    assert statuses == [{"state": "offline", "reason": "shutdown"}]  # the final status, not the Last Will
