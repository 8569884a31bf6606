"""The gateway's health and metrics over HTTP: a small stdlib server in a daemon thread.

    GET /healthz   200 {"status":"alive"} while the process runs (liveness: restart me if this fails)
    GET /readyz    200 {"ready":true,"reason":...} or 503 {"ready":false,"reason":...}   (one JSON line)
    GET /metrics   the gateway's counters in the Prometheus text format (prometheus-client)

It knows nothing about the gateway: it is given two callables, ``ready() -> (bool, reason)`` and
``metrics() -> {name: value}``, called on each request (from the server's thread, so they must be
thread-safe and quick; ``Gateway.counters()`` is). Every metric is exported as
``lampwatch_gateway_<name>``; whether it is a counter (``..._total``) or a gauge comes from
:data:`KINDS`: a name it does not list is a gauge, so a new counter shows up at once and is typed
explicitly when it is added to the table. A callable that raises makes ``/readyz`` answer 503 with the
error as the reason and ``/metrics`` answer 500: a broken probe never looks healthy.

Bound to 127.0.0.1 by default; bind 0.0.0.0 only inside a container whose port is published on purpose.

    ready = all_ready(lambda: (gw.connected, "subscribed"), writable(settings.state_dir))
    server = HealthServer(ready=ready, metrics=gw.counters, port=9464)
    server.start(); ...; server.close()
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contract.cli import one_line
from contract.errors import LampwatchError

log = logging.getLogger("lampwatch.gateway.health")
PREFIX = "lampwatch_gateway_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Kind = Literal["counter", "gauge"]

#: How each gateway counter is exported. Counters only ever grow while the process lives; gauges go up
#: and down. A ``rejects_<reason>`` counter is a counter whatever the reason (see :func:`kind_of`).
KINDS: Mapping[str, Kind] = {
    # counters: events since the process started
    "messages": "counter", "status": "counter", "samples_accepted": "counter", "samples_rejected": "counter",
    "values_accepted": "counter", "values_rejected": "counter", "duplicates": "counter",
    "stored_points": "counter", "stored_batches": "counter", "spooled_batches": "counter",
    "store_errors": "counter", "store_rejected_points": "counter", "acked": "counter", "gaps": "counter",
    "evicted": "counter", "alerts_raised": "counter", "alerts_cleared": "counter",
    # the delivery core's (docs/delivery.md)
    "conflicts": "counter", "deadletters": "counter", "stored_samples": "counter", "spooled_points": "counter",
    "replayed_batches": "counter", "store_auth_errors": "counter", "store_bisect_writes": "counter",
    "disk_errors": "counter", "session_lost": "counter", "disconnects": "counter",
    "device_evictions_reported": "counter", "quarantine_evicted": "counter",
    # gauges: levels right now
    "spool_batches": "gauge", "spool_points": "gauge", "spool_bytes": "gauge", "spool_alarm_level": "gauge",
    "inbox": "gauge", "lag_ms": "gauge", "last_write_ms": "gauge", "ready": "gauge", "unacked": "gauge",
    "output_queued": "gauge", "quarantine_bytes": "gauge", "inbox_high": "gauge",
}
_BAD = re.compile(r"[^a-zA-Z0-9_]")


Check = Callable[[], tuple[bool, str]]


def all_ready(*checks: Check) -> Check:
    """One readiness check from several: ready when every one is; the reason of the first that is not."""

    def ready() -> tuple[bool, str]:
        reasons = []
        for check in checks:
            ok, reason = _safe_ready(check)
            if not ok:
                return False, reason
            reasons.append(reason)
        return True, "; ".join(r for r in reasons if r)

    return ready


def writable(directory: str | Path, what: str = "spool") -> Check:
    """A readiness check that the disk under ``directory`` takes a write: it appends a few bytes to
    ``<directory>/.ready-probe`` and fsyncs them (a full, read-only or failed disk fails it)."""
    probe = Path(directory) / ".ready-probe"

    def ready() -> tuple[bool, str]:
        try:
            with open(probe, "ab", buffering=0) as f:
                f.write(b"ok\n")
                os.fsync(f.fileno())
            if probe.is_file() and probe.stat().st_size > 4096:
                probe.write_bytes(b"")
        except OSError as exc:
            return False, f"{what} disk not writable ({directory}): {exc.strerror or exc}"
        return True, f"{what} writable"

    return ready


class HealthError(LampwatchError):
    """The health server could not start (port in use, bad address)."""


def kind_of(name: str) -> Kind:
    if name in KINDS:
        return KINDS[name]
    return "counter" if name.startswith("rejects_") else "gauge"


def metric_name(name: str) -> str:
    """``lampwatch_gateway_<name>`` with anything Prometheus does not allow replaced by ``_``."""
    return PREFIX + _BAD.sub("_", name)


class _GatewayCollector(Collector):
    def __init__(self, metrics: Callable[[], Mapping[str, float]], ready: Callable[[], tuple[bool, str]]) -> None:
        self._metrics = metrics
        self._ready = ready

    def collect(self) -> Iterator[Metric]:
        values = dict(self._metrics())
        values["ready"] = 1.0 if _safe_ready(self._ready)[0] else 0.0
        for name in sorted(values):
            value = float(values[name])
            full = metric_name(name)
            if kind_of(name) == "counter":  # the exposition adds _total
                yield CounterMetricFamily(full, f"gateway counter {name}", value=value)
            else:
                yield GaugeMetricFamily(full, f"gateway gauge {name}", value=value)


def _safe_ready(ready: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    try:
        ok, reason = ready()
        return bool(ok), one_line(reason)
    except Exception as exc:  # a broken probe is "not ready", never a crash of the server thread
        return False, one_line(f"readiness check failed: {type(exc).__name__}: {exc}")


class HealthServer:
    def __init__(self, *, ready: Callable[[], tuple[bool, str]], metrics: Callable[[], Mapping[str, float]],
                 host: str = "127.0.0.1", port: int = 9464) -> None:
        if not 0 <= port <= 65535:
            raise HealthError(f"health port must be 0..65535, not {port}")
        self.host, self._port = host, port
        self.ready, self.metrics = ready, metrics
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GatewayCollector(metrics, ready))
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        return self._httpd.server_address[1] if self._httpd is not None else self._port  # type: ignore[return-value]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HealthServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass  # probes every few seconds would flood the log

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b'{"status":"alive"}\n', "application/json")
                elif path == "/readyz":
                    ok, reason = _safe_ready(server.ready)
                    doc = json.dumps({"ready": ok, "reason": reason}, separators=(",", ":")) + "\n"
                    self._send(200 if ok else 503, doc.encode(), "application/json")
                elif path == "/metrics":
                    try:
                        text = generate_latest(server.registry)
                    except Exception as exc:
                        log.error("metrics collection failed: %s", exc)
                        self._send(500, f"metrics failed: {one_line(exc)}\n".encode(), "text/plain")
                        return
                    self._send(200, text, CONTENT_TYPE)
                else:
                    self._send(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        try:
            self._httpd = ThreadingHTTPServer((self.host, self._port), Handler)
        except OSError as exc:
            raise HealthError(f"health server cannot listen on {self.host}:{self._port}: "
                              f"{exc.strerror or exc}") from exc
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="gateway-health", daemon=True)
        self._thread.start()
        log.info("health server on %s (/healthz, /readyz, /metrics)", self.url)
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
