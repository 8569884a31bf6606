"""The gateway process: MQTT in, validated points out to a sink, acknowledged only once durable.

Threads (one process):

    paho network thread --on_message--> inbox (bounded queue: backpressure to the broker)
    worker thread: decode/validate/dedup (Pipeline) -> Batcher (size/age) -> sink.write
                   | store down -> Spool (fsync) ; spool replayed oldest first when the store returns
                   -> PUBACK every message of the batch, in order, only after the write or the spool
                      append returned (paho manual acks)

A gateway killed with kill -9 therefore loses nothing: what it had not acknowledged, the broker
(persistent MQTT 5 session) redelivers to it or to its successor with the same client id.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import schema, topics
from contract.errors import SpoolFull, StoreRejected
from contract.models import DeadLetter
from contract.readings import Point
from gateway.batcher import Batcher
from gateway.decode import Limits, Reject
from gateway.pipeline import Outcome, Pipeline
from gateway.sink import Sink
from gateway.spool import Spool, SpoolWatch

log = logging.getLogger("lampwatch.gateway")


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "lampwatch-gateway-0"
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    mqtt_version: int = 5  # 5, or 311 for brokers that only speak MQTT 3.1.1 (amqtt, the demo broker)
    districts: tuple[str, ...] = ("+",)  # the districts this gateway owns ("+" = all)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86_400
    batch_max_points: int = 5000
    batch_max_age_s: float = 0.2
    inbox_max: int = 20_000
    spool_path: str = ".lampwatch/gateway-spool.sqlite"
    spool_max_bytes: int = 1 << 30
    store_retry_s: float = 1.0
    selfmetrics_interval_s: float = 5.0
    deadletter_publish: bool = True
    limits: Limits = field(default_factory=Limits)


_Item = tuple[str, bytes, int, int]  # topic, payload, mid, qos
_Batched = tuple[list[Point], int, int, Outcome | None]  # points, mid (-1: none), qos, outcome for detection


class Stage(Protocol):
    """What the gateway calls with every batch's outcomes (the detection stage, gateway.detection)."""

    def __call__(self, outcome: Outcome) -> list[Point]: ...

    def tick(self, now_ms: int | None = None) -> list[Point]: ...

    def counters(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class Gateway:
    def __init__(self, cfg: GatewayConfig, sink: Sink, *, clock: Callable[[], float] = time.time,
                 on_outcome: Stage | None = None) -> None:
        self.cfg, self.sink, self.clock = cfg, sink, clock
        self.pipeline = Pipeline(cfg.limits)
        self.spool = Spool(cfg.spool_path, cfg.spool_max_bytes)
        self.spool_watch = SpoolWatch()
        self.on_outcome = on_outcome  # the detection stage: a batch's readings in, alert points out
        self._inbox: queue.Queue[_Item] = queue.Queue(maxsize=cfg.inbox_max)
        self._batcher: Batcher[_Batched] = Batcher(cfg.batch_max_points, cfg.batch_max_age_s)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._connected = threading.Event()
        self._store_down_until = 0.0
        self.stats: dict[str, float] = {"stored_points": 0, "stored_batches": 0, "spooled_batches": 0,
                                        "store_errors": 0, "acked": 0, "last_write_ms": 0.0,
                                        "lag_ms": 0.0, "store_rejected_points": 0}
        self._client = self._make_client()

    # --- MQTT adapter ------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        v5 = self.cfg.mqtt_version == 5
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id,
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, manual_ack=True,
                        clean_session=None if v5 else False)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self.cfg.password)
        if self.cfg.tls_ca:
            c.tls_set(ca_certs=self.cfg.tls_ca, certfile=self.cfg.tls_cert, keyfile=self.cfg.tls_key)
        c.max_inflight_messages_set(1000)  # our own QoS 1 publishes (dead letters, alerts)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.will_set(topics.gateway_status(self.cfg.client_id), b'{"state":"offline"}', qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the gateway: %s", rc)
            return
        subs = []
        for d in self.cfg.districts:
            subs.append((topics.filter_for("telemetry", d), 1))
            subs.append((topics.filter_for("status", d), 1))
        client.subscribe(subs)
        log.info("gateway %s connected, owning districts %s", self.cfg.client_id,
                 ",".join(self.cfg.districts))

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        failed = [rc for rc in rcs if getattr(rc, "is_failure", False)]
        if failed:
            log.error("broker refused the gateway's subscriptions: %s", failed)
            return
        self._connected.set()  # "connected" means subscribed: nothing published from now on is missed
        self._publish_status("online", self.clock())

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("gateway disconnected (%s); paho reconnects with backoff", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # blocks when the inbox is full: the broker then holds the rest (backpressure, not loss)
        self._inbox.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self, wait_connected_s: float = 10.0) -> None:
        if self.cfg.mqtt_version == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            props.ReceiveMaximum = 65535
            self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
                                       clean_start=False, properties=props)
        else:
            self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self._client.loop_start()
        self._worker = threading.Thread(target=self._run, name="gateway-worker", daemon=True)
        self._worker.start()
        if wait_connected_s and not self._connected.wait(wait_connected_s):
            log.warning("gateway not connected after %.0f s; still trying", wait_connected_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what was received, acknowledge it, publish offline, disconnect."""
        self._client.unsubscribe([topics.filter_for("telemetry", d) for d in self.cfg.districts]
                                 + [topics.filter_for("status", d) for d in self.cfg.districts])
        self._stop.set()
        if self._worker:
            self._worker.join(timeout_s)
        if self._connected.is_set():
            info = self._publish_status("offline", self.clock())
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self.spool.close()
        if self.on_outcome is not None:
            self.on_outcome.close()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish at QoS 1 through the gateway's connection (alerts, commands)."""
        self._client.publish(topic, payload, qos=1, retain=retain)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def counters(self) -> dict[str, float]:
        """A snapshot of every counter (safe to call from any thread)."""
        for _ in range(10):
            try:
                return self._counters()
            except RuntimeError:  # a counter dict grew under us (worker thread); take it again
                continue
        return self._counters()

    def _counters(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.pipeline.counts)
        out.update(self.stats)
        out["spool_batches"] = self.spool.depth
        out["spool_points"] = self.spool.points
        out["spool_bytes"] = self.spool.nbytes
        out["spool_alarm_level"] = self.spool_watch.level
        out["inbox"] = self._inbox.qsize()
        out["gaps"] = self.pipeline.seq.total_missing()
        out.update({f"rejects_{k}": v for k, v in self.pipeline.rejects_by_reason.items()})
        if self.on_outcome is not None:
            out.update(self.on_outcome.counters())
        return out

    # --- worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_self = self.clock() + self.cfg.selfmetrics_interval_s
        while True:
            now = self.clock()
            deadline = self._batcher.next_deadline()
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - now))
            try:
                item: _Item | None = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
                if self._stop.is_set():
                    break
            now = self.clock()
            batch = None
            if item is not None:
                pts, outcome = self._handle(item, now)
                batch = self._batcher.add((pts, item[2], item[3], outcome), now, weight=max(1, len(pts)))
            batch = batch or self._batcher.due(now)
            if batch:
                self._flush(batch)
            if self.spool.depth and now >= self._store_down_until:
                self._replay_one(now)
            if now >= next_self:
                next_self = now + self.cfg.selfmetrics_interval_s
                self._watch_spool(now)
                extra = [self._selfmetrics_point(now)]
                if self.on_outcome is not None:
                    extra += self.on_outcome.tick(int(now * 1000))  # silence -> pole offline alarms
                self._batcher.add((extra, -1, 0, None), now)
                self._publish_status("online", now)
        rest = self._batcher.take()
        if rest:
            self._flush(rest)

    def _handle(self, item: _Item, now: float) -> tuple[list[Point], Outcome | None]:
        topic, payload, _mid, _qos = item
        now_ms = int(now * 1000)
        # the gateway subscribes to telemetry and status only; both handlers parse and check the topic
        # fully (a malformed one is dead-lettered there), so the suffix is enough to route
        handler = self.pipeline.status if topic.endswith("/status") else self.pipeline.telemetry
        out = handler(topic, payload, now_ms)
        if out.readings:
            self.stats["lag_ms"] = now_ms - max(r.ts_ms for r in out.readings)
        for r in out.rejects:
            self._deadletter(r, now_ms)
        return out.points, (out if out.readings or out.status is not None else None)

    def _deadletter(self, r: Reject, now_ms: int) -> None:
        if not self.cfg.deadletter_publish:
            return
        try:
            text, enc = r.payload.decode("utf-8"), "utf8"
        except UnicodeDecodeError:
            import base64

            text, enc = base64.b64encode(r.payload).decode(), "base64"
        dl = DeadLetter(topic=r.topic, reason=r.reason, detail=r.detail, payload=text,
                        encoding=enc, received_at=now_ms, pole=r.pole, seq=r.seq)  # type: ignore[arg-type]
        self._client.publish(topics.deadletter(r.reason), dl.model_dump_json(), qos=1)

    def _detect(self, batch: list[_Batched]) -> list[Point]:
        """Run detection once per batch (cheap per reading), statuses first so births set attributes."""
        if self.on_outcome is None:
            return []
        out: list[Point] = []
        readings = []
        for _p, _m, _q, o in batch:
            if o is None:
                continue
            if o.status is not None:
                out += self.on_outcome(Outcome(status=o.status))
            readings += o.readings
        if readings:
            out += self.on_outcome(Outcome(readings=readings))
        return out

    def _flush(self, batch: list[_Batched]) -> None:
        points = [p for pts, _m, _q, _o in batch for p in pts]
        try:
            points += self._detect(batch)
        except Exception:  # detection must never stop ingestion; the readings are still stored
            log.exception("detection stage failed on a batch of %d messages", len(batch))
        if points:
            self._write_or_spool(points)
        for _pts, mid, qos, _o in batch:
            if mid >= 0 and qos > 0:
                self._client.ack(mid, qos)
                self.stats["acked"] += 1

    def _write_or_spool(self, points: list[Point]) -> None:
        now = self.clock()
        if not self.spool.depth and now >= self._store_down_until:
            try:
                t0 = time.perf_counter()
                self.sink.write(points)
                self.stats["last_write_ms"] = (time.perf_counter() - t0) * 1000
                self.stats["stored_points"] += len(points)
                self.stats["stored_batches"] += 1
                return
            except StoreRejected as exc:
                self._store_rejected(points, exc)
                return
            except Exception as exc:  # StoreError, or a sink bug: either way the data goes to disk
                self.stats["store_errors"] += 1
                self._store_down_until = now + self.cfg.store_retry_s
                log.warning("store unavailable (%s: %s): spooling", type(exc).__name__, exc)
        while True:  # spool; if the spool is full, stop acking until there is room
            try:
                self.spool.append(points)
                self.stats["spooled_batches"] += 1
                return
            except SpoolFull as exc:
                log.error("%s: holding acknowledgements until the store drains it", exc)
                self._replay_one(self.clock(), force=True)
                time.sleep(self.cfg.store_retry_s)

    def _replay_one(self, now: float, force: bool = False) -> None:
        head = self.spool.peek()
        if head is None:
            return
        batch_id, points = head
        try:
            self.sink.write(points)
        except StoreRejected as exc:
            self._store_rejected(points, exc)
        except Exception:
            self.stats["store_errors"] += 1
            self._store_down_until = now + self.cfg.store_retry_s
            return
        else:
            self.stats["stored_points"] += len(points)
            self.stats["stored_batches"] += 1
        self.spool.pop(batch_id)

    def _store_rejected(self, points: list[Point], exc: StoreRejected) -> None:
        """The store refused the data itself: keep it findable as rejects, never silently drop it."""
        log.error("store rejected a batch of %d points: %s", len(points), exc)
        self.stats["store_rejected_points"] += len(points)
        self.pipeline.rejects_by_reason["store_rejected"] += len(points)

    def _watch_spool(self, now: float) -> None:
        """Spool depth is an alarm, not just a number: retained on the gateway's alert topic."""
        level = self.spool_watch.update(now, self.spool.points, self.spool.nbytes, self.spool.max_bytes)
        if level is None:
            return
        sev = {0: "cleared", 2: "warning", 3: "critical"}[level]
        log.log(logging.WARNING if level else logging.INFO, "spool alarm %s: %d points, %d bytes", sev,
                self.spool.points, self.spool.nbytes)
        body = json.dumps({"kind": "spool_backlog", "state": "cleared" if level == 0 else "raised",
                           "severity": sev, "ts": int(now * 1000), "spool_points": self.spool.points,
                           "spool_bytes": self.spool.nbytes, "explain": "the store is not taking writes: "
                           f"{self.spool.points} points wait in the gateway's disk spool"})
        self._client.publish(f"{topics.SYS}/gateway/{self.cfg.client_id}/alert", body, qos=1, retain=True)

    def _publish_status(self, state: str, now: float) -> mqtt.MQTTMessageInfo:
        """Presence and self-metrics, retained: `lampwatch-gateway status` reads them from the broker."""
        body = json.dumps({"state": state, "ts": int(now * 1000), "gateway": self.cfg.client_id,
                           "districts": list(self.cfg.districts), "counters": self.counters()})
        return self._client.publish(topics.gateway_status(self.cfg.client_id), body, qos=1, retain=True)

    def _selfmetrics_point(self, now: float) -> Point:
        fields: dict[str, float | int | str | bool] = {k: float(v) for k, v in self.counters().items()}
        return Point(schema.GATEWAY, schema.tags(gateway=self.cfg.client_id), fields, int(now * 1e9))
