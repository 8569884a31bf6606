"""Operators' requests to the gateway over MQTT: acknowledge / shelve an alarm, maintenance windows.

    lampwatch/v1/_sys/ops/ack           contract.models.AckRequest          (QoS 1)
    lampwatch/v1/_sys/ops/maintenance   contract.models.MaintenanceRequest  (QoS 1)
    lampwatch/v1/_sys/ops/result/<id>   contract.models.OpsResult           the gateway's answer

Its own MQTT connection (client id ``<gateway client id>-ops``, a persistent session, so a request
sent while the gateway restarts is delivered when it is back), kept apart from the ingestion session
on purpose: ingestion acknowledges only what is durable, while these are small, validated, applied and
answered here. The network callback only validates and hands over (``put_nowait`` into a bounded
queue); a worker thread applies the request to the detection stage and publishes the answer. A
request for a district this gateway does not own is left to the gateway that owns it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from contract import topics
from contract.models import AckRequest, MaintenanceRequest, OpsResult
from gateway.service import GatewayConfig

log = logging.getLogger("lampwatch.ops")
Request = AckRequest | MaintenanceRequest


class OpsTarget(Protocol):
    def acknowledge(self, req: AckRequest) -> str | None: ...

    def maintenance(self, req: MaintenanceRequest) -> str | None: ...


def decode(topic: str, payload: bytes) -> Request | str:
    """A request, or why it is not one (pure)."""
    try:
        if topic == topics.OPS_ACK:
            return AckRequest.model_validate_json(payload)
        if topic == topics.OPS_MAINTENANCE:
            return MaintenanceRequest.model_validate_json(payload)
    except ValidationError as exc:
        e = exc.errors(include_url=False, include_input=False)[0]
        return f"malformed request: {'.'.join(map(str, e['loc']))}: {e['msg']}"[:300]
    return f"not an ops request topic: {topic[:100]}"


def apply(target: OpsTarget, req: Request) -> str | None:
    return target.acknowledge(req) if isinstance(req, AckRequest) else target.maintenance(req)


class OpsListener:
    """Subscribes to the ops request topics and applies them to ``target`` (the detection stage)."""

    def __init__(self, cfg: GatewayConfig, target: OpsTarget, *, clock: Callable[[], float] = time.time,
                 queue_max: int = 1000) -> None:
        self.cfg, self.target, self.clock = cfg, target, clock
        self.gateway_id = cfg.client_id
        self._q: queue.Queue[Request] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self.counts = {"ops_applied": 0, "ops_refused": 0, "ops_malformed": 0, "ops_dropped": 0}
        v5 = cfg.mqtt_version == 5
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{cfg.client_id}-ops",
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else False)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password)
        if cfg.tls_ca:
            c.tls_set(ca_certs=cfg.tls_ca, certfile=cfg.tls_cert, keyfile=cfg.tls_key)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self._client = c
        self._worker: threading.Thread | None = None

    def _owns(self, district: str) -> bool:
        return "+" in self.cfg.districts or district in self.cfg.districts

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the gateway's ops connection: %s", rc)
            return
        client.subscribe([(topics.OPS_ACK, 1), (topics.OPS_MAINTENANCE, 1)])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        req = decode(msg.topic, bytes(msg.payload))
        if isinstance(req, str):
            self.counts["ops_malformed"] += 1
            log.warning("ops request refused: %s", req)
            return
        if not self._owns(req.district):
            return
        try:
            self._q.put_nowait(req)
        except queue.Full:
            self.counts["ops_dropped"] += 1
            log.error("ops request queue full: dropped %s", req.id)

    def start(self) -> OpsListener:
        if self.cfg.mqtt_version == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=False,
                                       properties=props)
        else:
            self._client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self._client.loop_start()
        self._worker = threading.Thread(target=self._run, name="gateway-ops", daemon=True)
        self._worker.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                req = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                why = apply(self.target, req)
            except Exception as exc:  # a request must never kill the ops thread
                log.exception("ops request %s failed", req.id)
                why = f"gateway error: {type(exc).__name__}"
            self.counts["ops_applied" if why is None else "ops_refused"] += 1
            if why is not None:
                log.warning("ops request %s (%s %s/%s by %s) refused: %s", req.id, req.action, req.district,
                            req.pole, req.by, why)
            res = OpsResult(id=req.id, ok=why is None, gateway=self.gateway_id, ts=int(self.clock() * 1000),
                            reason=why)
            self._client.publish(topics.ops_result(req.id), res.model_dump_json(), qos=1)

    def counters(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.counts.items()}

    def close(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(5.0)
        self._client.disconnect()
        self._client.loop_stop()


class OperatorStage:
    """The detection stage plus the operators' side (notifier, ops listener), as one gateway ``Stage``:
    the gateway calls it exactly as it calls the detection stage; counters and close cover all three."""

    def __init__(self, stage: Any, notifier: Any = None, listener: OpsListener | None = None) -> None:
        self.stage, self.notifier, self.listener = stage, notifier, listener

    def __call__(self, outcome: Any) -> Any:
        return self.stage(outcome)

    def tick(self, now_ms: int | None = None) -> Any:
        return self.stage.tick(now_ms)

    @property
    def state_error(self) -> str | None:
        """Why the alarm state cannot be saved, or None (the gateway raises ``state_save_failed``)."""
        return getattr(self.stage, "state_error", None)

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.stage.counters())
        if self.notifier is not None:
            out.update(self.notifier.counters())
        if self.listener is not None:
            out.update(self.listener.counters())
        return out

    def close(self) -> None:
        try:
            if self.listener is not None:
                self.listener.close()
        finally:
            self.stage.close()
            if self.notifier is not None:
                self.notifier.close()
