"""Operators' requests to the gateway over MQTT: acknowledge / shelve an alarm, maintenance windows.

    lampwatch/v1/_sys/ops/ack           contract.models.AckRequest          (QoS 1)
    lampwatch/v1/_sys/ops/maintenance   contract.models.MaintenanceRequest  (QoS 1)
    lampwatch/v1/_sys/ops/result/<id>   contract.models.OpsResult           the gateway's answer

They arrive on the gateway's own connection and persistent session (a request sent while the gateway
restarts is delivered when it is back). Never a second connection: the broker makes every client id its
username (``use_username_as_clientid``), so a second login as the gateway's user would take the
gateway's session over — it did, and the ops connection swallowed telemetry. The pipeline thread hands
each request over with :meth:`OpsListener.offer` (``put_nowait`` into a bounded queue); a worker
thread applies it to the detection stage and publishes the answer through the gateway. A request for
a district this gateway does not own is left to the gateway that owns it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from contract import topics
from contract.models import AckRequest, MaintenanceRequest, OpsResult
from gateway import osthread
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
    """Applies ops requests handed over by the gateway to ``target`` (the detection stage); answers
    through ``publish`` (the gateway's connection)."""

    def __init__(self, cfg: GatewayConfig, target: OpsTarget, *, publish: Callable[[str, bytes], None],
                 clock: Callable[[], float] = time.time, queue_max: int = 1000) -> None:
        self.cfg, self.target, self.clock = cfg, target, clock
        self.gateway_id = cfg.client_id
        self._publish = publish
        self._q: queue.Queue[Request] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self.counts = {"ops_applied": 0, "ops_refused": 0, "ops_malformed": 0, "ops_dropped": 0}
        self._worker: threading.Thread | None = None

    #: the topics the gateway subscribes to for this listener
    TOPICS = (topics.OPS_ACK, topics.OPS_MAINTENANCE)

    def _owns(self, district: str) -> bool:
        return "+" in self.cfg.districts or district in self.cfg.districts

    def offer(self, topic: str, payload: bytes) -> None:
        """Validate and queue one request (never blocks)."""
        req = decode(topic, payload)
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
        self._worker = threading.Thread(target=self._run, name="gateway-ops", daemon=True)
        self._worker.start()
        return self

    def _run(self) -> None:
        osthread.name_this_thread(osthread.OPS)
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
            self._publish(topics.ops_result(req.id), res.model_dump_json().encode())

    def counters(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.counts.items()}

    def close(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(5.0)


class OperatorStage:
    """The detection stage plus the operators' side (notifier, ops listener), as one gateway ``Stage``:
    the gateway calls it exactly as it calls the detection stage; counters and close cover all three."""

    def __init__(self, stage: Any, notifier: Any = None, listener: OpsListener | None = None) -> None:
        self.stage, self.notifier, self.listener = stage, notifier, listener

    def __call__(self, outcome: Any) -> Any:
        return self.stage(outcome)

    def tick(self, now_ms: int | None = None) -> Any:
        return self.stage.tick(now_ms)

    def excuse(self, ms: int) -> None:
        self.stage.excuse(ms)

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
