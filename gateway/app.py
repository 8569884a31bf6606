"""The gateway's one composition root: settings in, a wired gateway out.

Used by ``lampwatch-gateway run``, the simulator's demo and drills and the bench, so all of them run
the same wiring: store (``ingest.stores``), detection stage, gateway, and the lease that makes a second
process with the same identity a hot standby instead of a session thief (:mod:`gateway.lease`).

    app = build(settings)            # validates settings, opens the store; does not connect yet
    gw = app.acquire(stop_event)     # blocks while another process holds this identity's lease
    if gw is not None:
        gw.start()
        ...
    app.close()                      # stop (flush, ack, offline), close the store, release the lease
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.detection import DetectionStage
from gateway.inventory import load as load_inventory
from gateway.lease import Lease
from gateway.notify import AlertNotifier, NotifyConfig
from gateway.opsbus import OperatorStage, OpsListener
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from ingest.stores import StoreConfig, open_store

log = logging.getLogger("lampwatch.gateway")


@dataclass
class App:
    settings: GatewaySettings
    store: Any
    lease: Lease
    gateway: Gateway | None = None  # built once the lease is held

    def acquire(self, stop: threading.Event | None = None, poll_s: float = 0.2) -> Gateway | None:
        """Take this identity's lease, waiting as a hot standby while another process holds it, then
        build the gateway (its spool, quarantine and alarm state are files the lease holder owns
        alone). Returns None when ``stop`` was set first."""
        if not self.lease.try_acquire():
            log.warning("standby: gateway %s is active in process %s (lease %s); waiting to take over",
                        self.settings.client_id, self.lease.holder(), self.lease.path)
            stop = stop or threading.Event()
            while not self.lease.try_acquire():
                if stop.wait(poll_s):
                    return None
            log.warning("standby: lease taken, becoming the active gateway %s", self.settings.client_id)
        if self.gateway is None:
            self.gateway = build_with_store(self.settings, self.store)
        return self.gateway

    def ready(self) -> tuple[bool, str]:
        """Readiness for /readyz: a standby waiting for the lease is alive but not ready."""
        if self.gateway is None:
            return False, "standby: waiting for the lease" if not self.lease.held else "starting"
        return self.gateway.ready()

    def metrics(self) -> dict[str, float]:
        return self.gateway.counters() if self.gateway is not None else {}

    def close(self) -> None:
        try:
            if self.gateway is not None:
                self.gateway.stop()
        finally:
            self.store.close()
            self.lease.release()


def lease_path(settings: GatewaySettings) -> Path:
    return Path(settings.state_dir) / f"gateway-{settings.client_id}.lock"


def build(settings: GatewaySettings, store: Any | None = None) -> App:
    """Validate the settings and open the store; the gateway itself is built by :meth:`App.acquire`."""
    settings.gateway_config()  # raises ConfigError before anything is opened
    store = store if store is not None else open_store(StoreConfig(**settings.store_fields()))
    return App(settings, store, Lease(lease_path(settings)))


def build_with_store(settings: GatewaySettings, store: Any) -> Gateway:
    """A wired gateway on an open store, without a lease (embedded uses: the demo, tests)."""
    cfg = settings.gateway_config()
    stage = DetectionStage(state_path=str(Path(settings.state_dir) / f"alarms-{cfg.client_id}.json"),
                           save_every_s=settings.detect_save_every_s,
                           learned_save_every_s=settings.detect_learned_save_every_s)
    gw = Gateway(cfg, store)
    stage.publish = gw.publish  # alerts and ops answers go out through the gateway's one connection
    ops = _operators(settings, cfg, stage, publish=gw.publish)
    gw.on_outcome = ops
    if ops.listener is not None:  # ops requests come in on the gateway's own connection
        gw.ops_handler = (OpsListener.TOPICS, ops.listener.offer)
    if stage.inventory is not None:
        gw.pipeline.inventory = stage.inventory  # wrong_district / unregistered are refused at decode
    return gw


def _operators(settings: GatewaySettings, cfg: Any, stage: DetectionStage, *,
               publish: Callable[[str, bytes], None]) -> OperatorStage:
    """The operators' side around the detection stage: inventory, Alertmanager notifier, ops listener
    (docs/operators.md)."""
    if settings.inventory_path:
        stage.set_inventory(load_inventory(settings.inventory_path, unknown=settings.inventory_unknown))
    notifier = None
    if settings.alertmanager_url:
        notifier = AlertNotifier(NotifyConfig(
            url=settings.alertmanager_url, grafana_url=settings.grafana_url, resend_s=settings.notify_resend_s,
            ends_after_s=5 * settings.notify_resend_s,
            spool_path=str(Path(settings.state_dir) / f"notify-{cfg.client_id}.sqlite")))
        stage.on_alert = notifier.offer
        notifier.resync(stage.active())
        notifier.start()
    listener = OpsListener(cfg, stage, publish=publish).start() if settings.ops_listen else None
    return OperatorStage(stage, notifier, listener)
