"""Drill ``alert-delivery``: a fault travels from a pole to a person, through an Alertmanager outage.

Real Mosquitto, InfluxDB 1.6.7 and Alertmanager (running the repository's ``alertmanager.yml`` with its
receivers pointed at a local webhook and its timings shortened to seconds), the real gateway with its
notifier, and a tiny ``http.server`` webhook that records every notification. Poles publish a heartbeat
every ``beat_s``; faults cycle through leakage (critical), flood (critical) and offline (a critical
leakage and then the pole goes offline: its leakage must be inhibited by its ``pole_offline``):

1. wave 1 (half the faults) is injected and must reach the webhook;
2. Alertmanager is stopped for ``outage_s``; meanwhile wave 2 is injected and wave 1 cleared;
3. Alertmanager returns: wave 2 must be notified and wave 1 resolved (nothing lost in the outage);
4. wave 2 is cleared and must be resolved.

Ends with ``drill alert-delivery: faults=<n> notified=<n> resolved=<n> p99_notify_s=<x> lost=<n>
verdict=PASS|FAIL``. ``notified``: faults whose alert reached the webhook firing (an offline pole's
expected alert is its pole_offline); ``resolved``: faults whose alert reached it resolved;
``lost = faults - (faults both notified and resolved)``; ``p99_notify_s``: injection to first firing
notification, over all faults (the wave injected during the outage waits for it, by design).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics
from contract.models import Status
from gateway.app import build_with_store
from gateway.settings import GatewaySettings
from ingest.influx1 import Influx1Store
from testbed.servers import Alertmanager, InfluxDB1, Mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
KINDS = ("leakage", "flood", "offline")
Log = Callable[[str], None]
DIE_AFTER_S = 0.6
_NORMAL = {"leakage_current_ma": 2.0, "water_level_cm": 0.0, "tilt_deg": 0.5}
_FAULT = {"leakage": {"leakage_current_ma": 45.0}, "flood": {"water_level_cm": 25.0},
          "offline": {"leakage_current_ma": 45.0}}


def drill_config(webhook_url: str, smtp_port: int, shipped: str | None = None) -> str:
    """The shipped alertmanager.yml, receivers pointed at the drill's webhook (and a closed SMTP port),
    timings in seconds: routing, grouping and inhibition stay exactly what ships."""
    text = shipped if shipped is not None else (REPO / "alertmanager.yml").read_text()
    text = text.replace("http://lampwatch-webhook:8080/alerts", webhook_url)
    text = re.sub(r"smtp_smarthost: \S+", f"smtp_smarthost: 127.0.0.1:{smtp_port}", text)
    text = text.replace("smtp_require_tls: true", "smtp_require_tls: false")
    text = re.sub(r"group_wait: \S+", "group_wait: 2s", text)
    text = re.sub(r"group_interval: \S+", "group_interval: 2s", text)
    return re.sub(r"repeat_interval: \S+", "repeat_interval: 1h", text)


@dataclass
class AlertDrillResult:
    faults: int
    notified: int
    resolved: int
    p99_notify_s: float
    lost: int
    failed_checks: tuple[str, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.lost == 0 and not self.failed_checks

    def line(self) -> str:
        return (f"drill alert-delivery: faults={self.faults} notified={self.notified} resolved={self.resolved} "
                f"p99_notify_s={self.p99_notify_s:.2f} lost={self.lost} verdict={'PASS' if self.passed else 'FAIL'}")


class Webhook:
    """A local webhook receiver: every notification Alertmanager posts, with its arrival time."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(min(n, 10 << 20))
                with contextlib.suppress(ValueError), outer._lock:
                    outer.received.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, name="drill-webhook", daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[tuple[float, str, dict[str, str], str]]:
        """(arrival, status, labels, startsAt) of every alert in every notification."""
        with self._lock:
            got = list(self.received)
        return [(t, a["status"], a["labels"], a["startsAt"]) for t, msg in got for a in msg.get("alerts", [])]


@dataclass
class _Pole:
    pole: str
    district: str
    kind: str
    wave: int
    seq: int = 0
    faulty: bool = False
    silent: bool = False
    injected_at: float | None = None
    cleared_at: float | None = None

    @property
    def expected(self) -> str:
        """alertname of the notification this fault must cause."""
        return "pole_offline" if self.kind == "offline" else self.kind


class _City:
    """The drill's poles: birth, heartbeat, faults and clears, published as real telemetry."""

    def __init__(self, broker: Mosquitto, n: int) -> None:
        self.poles = [_Pole(f"p-{i:04d}", f"d{i % 3}", KINDS[i % 3], 1 if i < (n + 1) // 2 else 2) for i in range(n)]
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="drill-alert-city", protocol=mqtt.MQTTv5)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self._lock = threading.Lock()

    def _pub(self, topic: str, payload: str, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def status(self, p: _Pole, state: str, beat_s: float) -> None:
        st = Status(pole=p.pole, district=p.district, state=state, ts=int(time.time() * 1000),  # type: ignore[arg-type]
                    interval_s=beat_s, reason="will" if state == "offline" else None)
        self._pub(topics.status(p.district, p.pole), st.model_dump_json(), retain=True)

    def sample(self, p: _Pole, n: int = 1) -> None:
        values = {**_NORMAL, **(_FAULT[p.kind] if p.faulty else {})}
        now = int(time.time() * 1000)
        samples = []
        for k in range(n):
            p.seq += 1
            samples.append({"seq": p.seq, "ts": now - (n - 1 - k), "m": values})
        body = {"v": 1, "pole": p.pole, "boot": "drill", "samples": samples}
        self._pub(topics.telemetry(p.district, p.pole), json.dumps(body))

    def beat(self) -> None:
        with self._lock:
            for p in self.poles:
                if not p.silent:
                    self.sample(p)

    def inject(self, wave: list[_Pole], beat_s: float) -> None:
        """Every fault of a wave; an offline pole leaks, then dies: its Last Will follows ``DIE_AFTER_S``
        later (more than the gateway's batch age, so the leak is judged first; less than the drill's
        group_wait, so the leak is still waiting in its group when pole_offline inhibits it)."""
        with self._lock:
            for p in wave:
                p.faulty, p.injected_at = True, time.monotonic()
                self.sample(p)
                p.silent = p.kind == "offline"
        time.sleep(DIE_AFTER_S)
        with self._lock:
            for p in wave:
                if p.kind == "offline":
                    p.injected_at = time.monotonic()  # what must notify is the pole going offline
                    self.status(p, "offline", beat_s)

    def clear(self, p: _Pole, beat_s: float) -> None:
        with self._lock:
            p.faulty, p.cleared_at = False, time.monotonic()
            self.sample(p, n=4)  # a clear needs consecutive normal samples
            if p.kind == "offline":
                self.status(p, "birth", beat_s)
                p.silent = False

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait(cond: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def alert_delivery(poles: int = 12, outage_s: float = 60.0, *, beat_s: float = 2.0, settle_s: float = 90.0,
                   log: Log = print) -> AlertDrillResult:
    """Run the drill (``poles`` = faults injected, one per pole); see the module docstring."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lampwatch-alert-drill-")))
        broker = stack.enter_context(Mosquitto())
        influx = stack.enter_context(InfluxDB1())
        hook = stack.enter_context(Webhook())
        am = stack.enter_context(Alertmanager(config=drill_config(hook.url, free_port())))
        store = Influx1Store(influx.url, "drill")
        stack.callback(store.close)
        settings = GatewaySettings(mqtt_host=broker.host, mqtt_port=broker.port, state_dir=str(tmp / "gw"),
                                   client_id="drill-alert-gw", alertmanager_url=am.url,
                                   grafana_url="http://grafana.example:3000", notify_resend_s=2.0,
                                   selfmetrics_interval_s=1.0, store="influx1", influx_url=influx.url,
                                   influx_db="drill")
        gw = build_with_store(settings, store)
        gw.start()
        stack.callback(gw.stop)
        city = _City(broker, poles)
        stack.callback(city.close)
        for p in city.poles:
            city.status(p, "birth", beat_s)
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(beat_s):
                city.beat()

        beat = threading.Thread(target=heartbeat, name="drill-heartbeat", daemon=True)
        beat.start()
        stack.callback(beat.join, 10)
        stack.callback(stop.set)
        city.beat()
        wave1 = [p for p in city.poles if p.wave == 1]
        wave2 = [p for p in city.poles if p.wave == 2]

        def firing(p: _Pole) -> bool:
            return any(s == "firing" and lb.get("pole") == p.pole and lb.get("alertname") == p.expected
                       for _t, s, lb, _st in hook.events())

        def resolved(p: _Pole) -> bool:
            return any(s == "resolved" and lb.get("pole") == p.pole and lb.get("alertname") == p.expected
                       for _t, s, lb, _st in hook.events())

        log(f"{poles} poles in 3 districts, heartbeat every {beat_s:g} s; wave 1: {len(wave1)} faults")
        city.inject(wave1, beat_s)
        _wait(lambda: all(firing(p) for p in wave1), settle_s)
        inhibited_seen = sum(1 for a in am.alerts() if a["status"]["inhibitedBy"])
        log(f"wave 1 notified: {sum(firing(p) for p in wave1)}/{len(wave1)}; "
            f"alertmanager holds {inhibited_seen} inhibited alert(s)")
        log(f"alertmanager stopped for {outage_s:g} s; wave 2 ({len(wave2)} faults) injected, wave 1 cleared")
        am.stop()
        t_down = time.monotonic()
        city.inject(wave2, beat_s)
        for p in wave1:
            city.clear(p, beat_s)
        time.sleep(max(0.0, outage_s - (time.monotonic() - t_down)))
        failed_during = gw.counters().get("notify_failed", 0.0)
        queued_during = gw.counters().get("notify_queued", 0.0)
        am.start()
        log(f"alertmanager back; the gateway had {queued_during:.0f} notifications queued, "
            f"{failed_during:.0f} failed posts")
        _wait(lambda: all(firing(p) for p in wave2) and all(resolved(p) for p in wave1), settle_s)
        log(f"wave 2 notified: {sum(firing(p) for p in wave2)}/{len(wave2)}; "
            f"wave 1 resolved: {sum(resolved(p) for p in wave1)}/{len(wave1)}")
        for p in wave2:
            city.clear(p, beat_s)
        _wait(lambda: all(resolved(p) for p in city.poles), settle_s)
        events = hook.events()
        counters = gw.counters()
    checks: list[str] = []
    delays, notified, resolved_n, lost = [], 0, 0, 0
    for p in city.poles:
        fire = [t for t, s, lb, _st in events if s == "firing" and lb.get("pole") == p.pole
                and lb.get("alertname") == p.expected]
        res = [t for t, s, lb, _st in events if s == "resolved" and lb.get("pole") == p.pole
               and lb.get("alertname") == p.expected]
        starts = {st for _t, s, lb, st in events if lb.get("pole") == p.pole and lb.get("alertname") == p.expected}
        notified += bool(fire)
        resolved_n += bool(res)
        lost += not (fire and res)
        if fire and p.injected_at is not None:
            delays.append(min(fire) - p.injected_at)
        if len(starts) > 1:
            checks.append(f"{p.pole} {p.expected} reached the webhook as {len(starts)} different alerts")
        if p.kind == "offline":
            leaked = [t for t, s, lb, _st in events if s == "firing" and lb.get("pole") == p.pole
                      and lb.get("alertname") != "pole_offline" and (p.cleared_at is None or t < p.cleared_at)]
            if leaked:
                checks.append(f"{p.pole} is offline but its sensor alarms paged (not inhibited)")
    if counters.get("notify_dropped", 0.0):
        checks.append(f"the notifier dropped {counters['notify_dropped']:.0f} notifications")
    if not failed_during:
        checks.append("no notification failed during the outage: the outage was not exercised")
    p99 = float(np.percentile(delays, 99)) if delays else float("nan")
    return AlertDrillResult(len(city.poles), notified, resolved_n, p99, lost, tuple(checks),
                            {"webhook_alerts": float(len(events)), "notify_sent": counters.get("notify_sent", 0.0),
                             "notify_dropped": counters.get("notify_dropped", 0.0)})
