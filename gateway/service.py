"""The gateway process: MQTT in, validated points out to a sink, acknowledged only once durable.

One shape for delivery (Telegraf's input -> processor -> output, with a buffer and acknowledgements
released by a delivered-callback), three threads:

    paho network thread   whole PUBLISHes cut from the receive buffer (gateway.mqttsock), or paho's
                          on_message -> inbox.put (never blocks: keepalive keeps running). The
                          inbox cannot overflow: every message in it is unacknowledged, and the CONNECT's
                          Receive Maximum (= inbox_max) caps how many unacknowledged messages the
                          broker may send us (MQTT 3.1.1 has no such field: there the broker's own
                          max_inflight_messages is the cap).
    pipeline thread       decode / validate / dedup (gateway.pipeline, pure) -> one bounded dead letter
                          per refused message (its bytes to the local quarantine) -> Batcher (size/age)
                          -> detection over the batch -> Output.put (bounded: backpressure)
    output thread         gateway.output: store, or the fsynced disk spool, then ``delivered(ids)``
                          -> gateway.acks releases PUBACKs in arrival order, only for durable data

Guarantees (docs/delivery.md has the table and the drill that proves each):
* stopping never unsubscribes: the persistent session keeps collecting while the gateway is away
  (restart, deploy), and whatever was not acknowledged is redelivered;
* a message is acknowledged only after what it carried is in the store or the spool; any local disk
  error holds acknowledgements, turns the status not-ready and raises a gateway alarm, and delivery
  resumes by itself when the disk has room;
* a thread that meets an unexpected error says so, turns the status to ``failed`` and the process
  exits non-zero (``lampwatch-gateway run``) so the service manager restarts it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import schema, topics
from contract.models import GatewayStatus
from contract.readings import Point
from gateway import deadletter, osthread
from gateway.acks import AckTracker
from gateway.batcher import Batcher
from gateway.deadletter import Quarantine
from gateway.decode import Limits, Reject
from gateway.mqttsock import BufferedClient
from gateway.output import Batch, Output, QEntry
from gateway.pipeline import Outcome, Pipeline
from gateway.sink import Sink
from gateway.spool import Spool, SpoolWatch

log = logging.getLogger("lampwatch.gateway")

SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: another client connected with our client id
#: health keys that make the gateway not ready (it cannot make data durable or cannot receive)
NOT_READY = ("mqtt", "session", "disk", "spool", "output", "pipeline")
#: gateway alarms (retained on _sys/gateway/<id>/alert/<kind>), raised while the health key is set
ALARMS = {"disk": ("disk_error", "critical"), "session": ("session_taken_over", "critical"),
          "store": ("store_unavailable", "warning"), "spool": ("spool_full", "critical"),
          "output": ("gateway_failed", "critical"), "pipeline": ("gateway_failed", "critical"),
          # the alarm state cannot be saved: readings are still stored and acknowledged (they are durable
          # in the store or spool), but a crash now would forget which alarms are raised
          "state": ("state_save_failed", "critical")}


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
    mqtt_version: int = 5  # 5, or 311 for brokers that only speak MQTT 3.1.1 (amqtt, the demo broker, NATS)
    #: failover order (a cluster's nodes): a failed connect or a lost connection moves to the next; empty:
    #: just (host, port)
    brokers: tuple[tuple[str, int], ...] = ()
    districts: tuple[str, ...] = ("+",)  # the districts this gateway owns ("+" = all)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86_400
    batch_max_points: int = 5000
    batch_max_age_s: float = 0.2
    inbox_max: int = 20_000  # = the Receive Maximum we announce (at most 65,535)
    spool_path: str = ".lampwatch/gateway-spool.sqlite"
    spool_max_bytes: int = 1 << 30
    quarantine_path: str | None = None  # default: beside the spool
    quarantine_max_bytes: int = 256 << 20
    store_retry_s: float = 1.0
    selfmetrics_interval_s: float = 5.0
    deadletter_publish: bool = True
    limits: Limits = field(default_factory=Limits)


_Item = tuple[str, bytes, int, int]  # topic, payload, mid, qos
#: messages the worker takes from the inbox per turn after the first (one clock read, one batch check
#: for all): at most ~DRAIN x 100 us late for the batch age and the selfmetrics tick
DRAIN = 64
_Batched = tuple[list[Point], int, Outcome | None, QEntry | None]  # points, tracking id (-1: none), outcome, quarantine


class Stage(Protocol):
    """What the gateway calls with every batch's outcomes (the detection stage, gateway.detection)."""

    def __call__(self, outcome: Outcome) -> list[Point]: ...

    def tick(self, now_ms: int | None = None) -> list[Point]: ...

    def excuse(self, ms: int) -> None: ...

    def counters(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class Gateway:
    def __init__(self, cfg: GatewayConfig, sink: Sink, *, clock: Callable[[], float] = time.time,
                 on_outcome: Stage | None = None) -> None:
        self.cfg, self.sink, self.clock = cfg, sink, clock
        self.pipeline = Pipeline(cfg.limits)
        self.spool = Spool(cfg.spool_path, cfg.spool_max_bytes)
        self.spool_watch = SpoolWatch()
        sp = Path(cfg.spool_path)
        qpath = cfg.quarantine_path or sp.with_name(sp.name.replace("spool", "quarantine") if "spool" in sp.name
                                                    else f"quarantine-{sp.name}")
        self.quarantine = Quarantine(qpath, cfg.quarantine_max_bytes)
        self.on_outcome = on_outcome  # the detection stage: a batch's readings in, alert points out
        self._inbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._batcher: Batcher[_Batched] = Batcher(cfg.batch_max_points, cfg.batch_max_age_s)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._connected = threading.Event()
        #: since when the gateway has not been subscribed (None: it is): no pole can be heard meanwhile, so
        #: the stage is told to excuse that time on (re)connect instead of calling the whole city offline
        self._deaf_since: float | None = clock()
        self._health: dict[str, str] = {"mqtt": "not connected yet"}
        self._health_lock = threading.Lock()
        self._alarmed: dict[str, str] = {}  # alarm kind -> severity currently raised
        self.failed: str | None = None
        self._next_tick = 0.0  # when the pipeline thread next publishes status and self-metrics
        self._last_status = 0.0  # when the last status went out (from any thread)
        # operators' requests (gateway.opsbus): topics to subscribe to, and where to hand each message
        self.ops_handler: tuple[tuple[str, ...], Callable[[str, bytes], None]] | None = None
        self.stats: dict[str, float] = {"lag_ms": 0.0, "deadletters": 0.0, "session_lost": 0.0,
                                        "inbox_high": 0.0, "disconnects": 0.0}
        self._broker = 0  # index into addresses of the broker used or tried now
        self._client = self._make_client()
        self.acks = AckTracker(self._client.ack, send_many=self._client.send_pubacks)
        self.output = Output(sink, self.spool, delivered=self.acks.delivered, quarantine_put=self.quarantine.put_many,
                             on_store_rejected=self._store_rejected, set_health=self.set_health,
                             retry_s=cfg.store_retry_s, clock=clock)

    # --- MQTT adapter ------------------------------------------------------------------------------
    def _make_client(self) -> BufferedClient:
        v5 = self.cfg.mqtt_version == 5
        c = BufferedClient(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id,
                           protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, manual_ack=True,
                           clean_session=None if v5 else False)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self.cfg.password)
        if self.cfg.tls_ca:
            c.tls_set(ca_certs=self.cfg.tls_ca, certfile=self.cfg.tls_cert, keyfile=self.cfg.tls_key)
        c.max_inflight_messages_set(1000)  # our own QoS 1 publishes (dead letters, alerts)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.will_set(topics.gateway_status(self.cfg.client_id),
                   GatewayStatus(state="offline", gateway=self.cfg.client_id, reason="will")
                   .model_dump_json(exclude_none=True), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        # buffered PUBLISHes skip paho's per-packet path (gateway.mqttsock): the same (topic, payload, mid, qos)
        c.publish_sink = self._inbox.put
        c.on_subscribe = self._on_subscribe
        return c

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        osthread.name_this_thread(osthread.MQTT)  # paho's network thread runs this callback
        if rc.is_failure:
            self.set_health("mqtt", f"broker refused the gateway: {rc}")
            log.error("broker refused the gateway: %s", rc)
            return
        if not getattr(flags, "session_present", True):
            self.stats["session_lost"] += 1
            log.warning("the broker had no session for %s (first start, or the broker lost its state): "
                        "messages queued for this gateway before now are not coming", self.cfg.client_id)
        subs = []
        for d in self.cfg.districts:
            subs.append((topics.filter_for("telemetry", d), 1))
            subs.append((topics.filter_for("status", d), 1))
        if self.ops_handler is not None:
            subs += [(t, 1) for t in self.ops_handler[0]]
        client.subscribe(subs)  # idempotent: the persistent session may already hold them
        log.info("gateway %s connected to %s:%d, owning districts %s", self.cfg.client_id,
                 *self.addresses[self._broker], ",".join(self.cfg.districts))

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        failed = [rc for rc in rcs if getattr(rc, "is_failure", False)]
        if failed:
            self.set_health("mqtt", f"broker refused the gateway's subscriptions: {failed}")
            log.error("broker refused the gateway's subscriptions: %s", failed)
            return
        self._connected.set()  # "connected" means subscribed: nothing published from now on is missed
        deaf, self._deaf_since = self._deaf_since, None
        if deaf is not None and self.on_outcome is not None:  # the poles were not silent: we were deaf
            self.on_outcome.excuse(int((self.clock() - deaf) * 1000))
        self.set_health("mqtt", None)
        self.set_health("session", None)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._publish_status(self.clock())

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return self.cfg.brokers or ((self.cfg.host, self.cfg.port),)

    def _aim(self, index: int) -> None:
        """Point paho at broker ``index`` for its next (re)connect (paho's thread, or before start)."""
        self._broker = index % len(self.addresses)
        host, port = self.addresses[self._broker]
        if self.cfg.mqtt_version == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            props.ReceiveMaximum = max(1, min(65535, self.cfg.inbox_max))
            self._client.connect_async(host, port, self.cfg.keepalive_s, clean_start=False, properties=props)
        else:
            self._client.connect_async(host, port, self.cfg.keepalive_s)

    def _next_broker(self, why: str) -> None:
        if len(self.addresses) > 1 and not self._stop.is_set():
            old = "{}:{}".format(*self.addresses[self._broker])
            self._aim(self._broker + 1)
            log.warning("broker %s %s; trying %s:%d next", old, why, *self.addresses[self._broker])

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self.set_health("mqtt", "cannot reach broker {}:{}".format(*self.addresses[self._broker]))
        self._next_broker("unreachable")

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if self._deaf_since is None:
            self._deaf_since = self.clock()
        if self._stop.is_set():
            return
        self._next_broker(f"lost ({rc})")
        self.stats["disconnects"] += 1
        self.set_health("mqtt", f"disconnected: {rc}")
        if getattr(rc, "value", None) == SESSION_TAKEN_OVER:
            # another client logged in with our client id. Reconnecting at once would take it back and
            # start a ping-pong that loses messages on every swap: back off, alarm, let an operator look
            self.set_health("session", "another client took this gateway's MQTT session (same client id)")
            client.reconnect_delay_set(min_delay=30, max_delay=120)
            log.critical("another client connected with client id %s and took the session; reconnecting "
                         "in 30-120 s. Two gateways must never share an identity: a standby waits for the "
                         "lease (gateway.lease)", self.cfg.client_id)
        else:
            log.warning("gateway disconnected (%s); paho reconnects with backoff", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos))  # SimpleQueue: never blocks

    # --- health ------------------------------------------------------------------------------------------
    def set_health(self, key: str, problem: str | None) -> None:
        """Set (or clear, with None) one health problem; alarms and status follow the change."""
        with self._health_lock:
            old = self._health.get(key)
            if problem is None:
                self._health.pop(key, None)
            else:
                self._health[key] = problem[:300]
            changed = old != self._health.get(key)
        if changed and key in ALARMS:
            self._gateway_alarm(key, problem)
            if self._connected.is_set():
                self._publish_status(self.clock())

    def ready(self) -> tuple[bool, str]:
        """(ready, why not): connected and subscribed, and able to make data durable."""
        with self._health_lock:
            bad = {k: v for k, v in self._health.items() if k in NOT_READY}
        if self.failed:
            return False, self.failed
        return (not bad), "; ".join(f"{k}: {v}" for k, v in bad.items())

    def health(self) -> dict[str, str]:
        with self._health_lock:
            return dict(self._health)

    def _gateway_alarm(self, key: str, problem: str | None) -> None:
        kind, severity = ALARMS[key]
        raised = problem is not None
        if raised == (kind in self._alarmed):
            return
        if raised:
            self._alarmed[kind] = severity
        else:
            self._alarmed.pop(kind, None)
        log.log(logging.CRITICAL if raised and severity == "critical" else logging.WARNING if raised else logging.INFO,
                "gateway alarm %s %s: %s", kind, "raised" if raised else "cleared", problem or "ok")
        body = json.dumps({"kind": kind, "state": "raised" if raised else "cleared",
                           "severity": severity if raised else "cleared", "ts": int(self.clock() * 1000),
                           "gateway": self.cfg.client_id, "explain": (problem or "resolved")[:300]})
        self._client.publish(f"{topics.SYS}/gateway/{self.cfg.client_id}/alert/{kind}", body, qos=1, retain=True)

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self, wait_connected_s: float = 10.0) -> None:
        self._aim(0)
        self._client.loop_start()
        self.output.start()
        self._worker = threading.Thread(target=self._main, name="gateway-pipeline", daemon=True)
        self._worker.start()
        if wait_connected_s and not self._connected.wait(wait_connected_s):
            log.warning("gateway not connected after %.0f s; still trying", wait_connected_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Flush what was received, make it durable, acknowledge it, publish offline, disconnect.

        Never unsubscribes: the persistent session keeps collecting what poles send while the gateway
        is away, and a restarted gateway (same client id) gets all of it. Messages still in the inbox
        are simply not acknowledged; the broker redelivers them."""
        self._stop.set()
        if self._worker:
            self._worker.join(timeout_s)
        self.output.stop(timeout_s)
        if self._connected.is_set():
            info = self._publish_status(self.clock(), state="offline")
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self.spool.close()
        self.quarantine.close()
        if self.on_outcome is not None:
            self.on_outcome.close()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish at QoS 1 through the gateway's connection (alerts, commands)."""
        self._client.publish(topic, payload, qos=1, retain=retain)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def counters(self) -> dict[str, float]:
        """A snapshot of every counter (safe to call from any thread: every dict is pre-seeded)."""
        out: dict[str, float] = dict(self.pipeline.counts)
        out.update(self.stats)
        out.update(self.output.stats)
        out["acked"] = self.acks.acked
        out["unacked"] = self.acks.pending()
        out["spool_batches"] = self.spool.depth
        out["spool_points"] = self.spool.points
        out["spool_bytes"] = self.spool.nbytes
        out["spool_alarm_level"] = self.spool_watch.level
        out["quarantine_bytes"] = self.quarantine.nbytes
        out["quarantine_evicted"] = self.quarantine.evicted
        out["inbox"] = self._inbox.qsize()
        out["output_queued"] = self.output.queued()
        out["ready"] = float(self.ready()[0])
        out["gaps"] = self.pipeline.seq.total_missing()
        rejects: dict[str, float] = {k: float(v) for k, v in self.pipeline.rejects_by_reason.items()}
        rejects["store_rejected"] = rejects.get("store_rejected", 0.0) + self.output.stats["store_rejected_points"]
        out.update({f"rejects_{k}": v for k, v in rejects.items()})
        if self.on_outcome is not None:
            out.update(self.on_outcome.counters())
        return out

    # --- pipeline thread ---------------------------------------------------------------------------
    def _main(self) -> None:
        osthread.name_this_thread(osthread.PIPELINE)
        try:
            self._run()
        except BaseException as exc:  # no thread dies silently
            self.failed = f"pipeline thread died: {type(exc).__name__}: {exc}"
            self.set_health("pipeline", self.failed)
            log.critical("%s; no further message is acknowledged, exiting", self.failed, exc_info=True)

    def _run(self) -> None:
        self._next_tick = self.clock() + self.cfg.selfmetrics_interval_s
        while not self._stop.is_set():  # on stop, what is still in the inbox stays unacknowledged
            now = self.clock()
            deadline = self._batcher.next_deadline()
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - now))
            try:
                items = [self._inbox.get(timeout=timeout)]
            except queue.Empty:
                items = []
            else:  # and what else has arrived, up to DRAIN, without a wait or a clock read each
                get = self._inbox.get_nowait
                try:
                    for _ in range(DRAIN):
                        items.append(get())
                except queue.Empty:
                    pass
            if self.output.failed:
                raise RuntimeError(self.output.failed)
            now = self.clock()
            for item in items:
                tid = self.acks.track(item[2], item[3])
                pts, outcome, qentry = self._handle(item, now)
                batch = self._batcher.add((pts, tid, outcome, qentry), now, weight=max(1, len(pts)))
                if batch:
                    self._hand_over(batch)  # may wait on the output (backpressure): read the clock again
                    now = self.clock()
            batch = self._batcher.due(now)
            if batch:
                self._hand_over(batch)
            self._tick(now)
        rest = self._batcher.take()
        if rest:
            self._hand_over(rest)

    def _tick(self, now: float) -> None:
        if now < self._next_tick:
            return
        self._next_tick = now + self.cfg.selfmetrics_interval_s
        self.stats["inbox_high"] = max(self.stats["inbox_high"], float(self._inbox.qsize()))
        self._watch_spool(now)
        extra = [self._selfmetrics_point(now)]
        if self.on_outcome is not None:
            try:
                if self._connected.is_set():  # deaf, we cannot tell a silent pole from a lost broker
                    extra += self.on_outcome.tick(int(now * 1000))  # silence -> pole offline alarms
            except Exception:  # detection must never stop ingestion
                log.exception("detection tick failed")
            self.set_health("state", getattr(self.on_outcome, "state_error", None))
        b = self._batcher.add((extra, -1, None, None), now)
        if b:
            self._hand_over(b)
        if self._connected.is_set():  # disconnected, paho would queue every status without bound; the
            self._publish_status(now)  # reconnect publishes a fresh one (_on_subscribe)

    def _hand_over(self, batch: list[_Batched]) -> None:
        points = [p for pts, _t, _o, _q in batch for p in pts]
        try:
            points += self._detect(batch)
        except Exception:  # detection must never stop ingestion; the readings are still stored
            log.exception("detection stage failed on a batch of %d messages", len(batch))
        out = Batch(points, [t for _p, t, _o, _q in batch if t >= 0], [q for _p, _t, _o, q in batch if q])
        while not self.output.put(out, timeout=0.2):  # the output is busy or holding: backpressure
            if self.output.failed:
                raise RuntimeError(self.output.failed)
            if self._stop.is_set() and self.output.holding:
                log.error("stopping while the output holds: %d messages stay unacknowledged (redelivered "
                          "after the restart)", len(out.tids))
                return
            self._next_tick = min(self._next_tick, self.clock())
            self._tick_status_only(self.clock())

    def _tick_status_only(self, now: float) -> None:
        if self._connected.is_set() and now - self._last_status >= self.cfg.selfmetrics_interval_s:
            self._publish_status(now)

    def _handle(self, item: _Item, now: float) -> tuple[list[Point], Outcome | None, QEntry | None]:
        topic, payload, _mid, _qos = item
        now_ms = int(now * 1000)
        # an operator's request: exactly one of the ops topics. A prefix test took lampwatch/v1/_sys/<pole>/
        # telemetry (the telemetry filter's district level matches "_sys") to the ops listener, which ignored
        # it: acknowledged and never dead-lettered. Now it is refused as bad_topic like any other.
        if self.ops_handler is not None and topic in self.ops_handler[0]:
            self.ops_handler[1](topic, payload)  # validated and queued, never blocks; acked with the batch
            return [], None, None
        # the gateway subscribes to telemetry and status only; both handlers parse and check the topic
        # fully (a malformed one is dead-lettered there), so the suffix is enough to route
        handler = self.pipeline.status if topic.endswith("/status") else self.pipeline.telemetry
        out = handler(topic, payload, now_ms)
        if out.readings:
            self.stats["lag_ms"] = now_ms - max(r.ts_ms for r in out.readings)
        qentry = self._deadletter(out.rejects, now_ms) if out.rejects else None
        return out.points, (out if out.readings or out.status is not None or out.rejects else None), qentry

    def _deadletter(self, rejects: list[Reject], now_ms: int) -> QEntry:
        """One small dead letter per message, whatever it held; the whole payload to the quarantine."""
        qid = self.quarantine.reserve()
        dl = deadletter.build(rejects, now_ms, qid)
        self.stats["deadletters"] += 1
        if self.cfg.deadletter_publish:
            self._client.publish(topics.deadletter(dl.reason), dl.model_dump_json(), qos=1)
        first = rejects[0]
        return (qid, now_ms, first.topic, dl.reason, dl.sha256, first.payload)

    def _store_rejected(self, rejected: list[tuple[Point, str]]) -> None:
        """The store refused these points (called on the output thread): each becomes a dead letter with
        the store's reason (at most 100 per batch, then one summary), its content goes to the
        quarantine, and a reject point records it in the store. Counted in ``store_rejected_points``."""
        now_ms = int(self.clock() * 1000)
        log.error("store refused %d point(s) of a batch, first: %s", len(rejected), rejected[0][1][:300])
        entries: list[QEntry] = []
        marks: list[Point] = []
        for i, (p, why) in enumerate(rejected):
            body = json.dumps([p.measurement, dict(p.tags), dict(p.fields), p.ts_ns], default=str).encode()
            tags = dict(p.tags)
            pole = tags.get("pole")
            topic = f"store/{p.measurement}/{tags.get('district', '-')}/{pole or '-'}"
            if i < 100:
                qid = self.quarantine.reserve()
                r = Reject("store_rejected", why[:300], topic, body, pole=pole)
                dl = deadletter.build([r], now_ms, qid)
                entries.append((qid, now_ms, topic, "store_rejected", dl.sha256, body))
                if self.cfg.deadletter_publish:
                    self._client.publish(topics.deadletter("store_rejected"), dl.model_dump_json(), qos=1)
                marks.append(schema.reject_point("store_rejected", topic, why, now_ms * 1_000_000 + i, pole))
        if len(rejected) > 100:
            log.error("%d more refused points of that batch are counted, not dead-lettered one by one",
                      len(rejected) - 100)
        try:
            self.quarantine.put_many(entries)
            self.sink.write(marks)
        except Exception as exc:  # the data is already counted and dead-lettered; the marks are a bonus
            log.warning("could not record the store's refusals (%s: %s)", type(exc).__name__, exc)

    def _detect(self, batch: list[_Batched]) -> list[Point]:
        """Run detection over a batch in arrival order: consecutive readings in one call (cheap per
        reading), consecutive status messages in one call (each in turn, where it arrived: 40,000 births
        after a power cut were 40,000 alarm steps, ~235 us each). (Statuses used to go first, so a Last
        Will arriving just after a pole's last reading was undone by that older reading.)"""
        if self.on_outcome is None:
            return []
        out: list[Point] = []
        readings: list[Any] = []
        rejects: list[Any] = []  # refused samples still say a pole is alive (e.g. a clock-skewed one)
        statuses: list[Any] = []
        for _p, _t, o, _q in batch:
            if o is None:
                continue
            if o.status is not None:
                if readings or rejects:
                    out += self.on_outcome(Outcome(readings=readings, rejects=rejects))
                    readings, rejects = [], []
                statuses.append(o.status)
            if statuses and (o.readings or o.rejects):
                out += self.on_outcome(Outcome(statuses=statuses))
                statuses = []
            readings += o.readings
            rejects += o.rejects
        if statuses:
            out += self.on_outcome(Outcome(statuses=statuses))
        if readings or rejects:
            out += self.on_outcome(Outcome(readings=readings, rejects=rejects))
        return out

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
                           "gateway": self.cfg.client_id, "spool_bytes": self.spool.nbytes,
                           "explain": "the store is not taking writes: "
                           f"{self.spool.points} points wait in the gateway's disk spool"})
        self._client.publish(f"{topics.SYS}/gateway/{self.cfg.client_id}/alert/spool_backlog", body, qos=1,
                             retain=True)

    def _publish_status(self, now: float, state: str | None = None) -> mqtt.MQTTMessageInfo:
        """Presence, readiness and self-metrics, retained: `lampwatch-gateway status` reads them.

        ``state``: online (ready), degraded (connected but not able to make data durable: ``reasons``
        says why), failed (a thread died; the process is exiting), offline (clean stop, or the Will)."""
        self._last_status = now
        ok, _why = self.ready()
        if state is None:
            state = "failed" if self.failed else "online" if ok else "degraded"
        body = GatewayStatus(state=state, ready=ok and state == "online", ts=int(now * 1000),  # type: ignore[arg-type]
                             gateway=self.cfg.client_id, districts=list(self.cfg.districts), health=self.health(),
                             reason="shutdown" if state == "offline" else None, counters=self.counters())
        return self._client.publish(topics.gateway_status(self.cfg.client_id), body.model_dump_json(exclude_none=True),
                                    qos=1, retain=True)

    def _selfmetrics_point(self, now: float) -> Point:
        fields: dict[str, float | int | str | bool] = {k: float(v) for k, v in self.counters().items()}
        return Point(schema.GATEWAY, schema.tags(gateway=self.cfg.client_id), fields, int(now * 1e9))
