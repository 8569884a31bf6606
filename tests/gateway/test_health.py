"""gateway/health.py: /healthz, /readyz, /metrics, read by prometheus-client's own parser, scraped by
a real Prometheus (Debian `prometheus`, on a free loopback port), and ready tied to a real gateway
on a real Mosquitto."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.health import HealthError, HealthServer, kind_of, metric_name
from gateway.service import Gateway, GatewayConfig
from ingest.sqlite import SqliteStore
from testbed import servers as harness
from testbed.servers import Mosquitto, ServerMissing, free_port
from tests.gateway.helpers import wait_until
from tests.servers import missing


def get(url: str) -> tuple[int, str, str]:
    status, body = harness._http("GET", url, timeout=10)
    return status, body.decode(), ""


class Counters:
    """Thread-safe counters that change while being scraped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = {"messages": 0, "acked": 0, "spool_points": 7, "rejects_bad_json": 2,
                                         "lag_ms": 12.5, "brand_new": 3}
        self.ready = (True, "connected and subscribed; spool writable")

    def bump(self, n: int) -> None:
        with self.lock:
            self.values["messages"] += n
            self.values["acked"] += n

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return dict(self.values)


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, Counters]]:
    c = Counters()
    with HealthServer(ready=lambda: c.ready, metrics=c.snapshot, port=0) as server:
        yield server, c


def test_kinds_table() -> None:
    assert kind_of("messages") == "counter" and kind_of("rejects_whatever") == "counter"
    assert kind_of("spool_points") == "gauge" and kind_of("never_heard_of") == "gauge"
    assert metric_name("a-b.c") == "lampwatch_gateway_a_b_c"


def test_endpoints_and_the_text_format(served: tuple[HealthServer, Counters]) -> None:
    server, c = served
    assert server.host == "127.0.0.1" and server.port > 0
    assert get(server.url + "/healthz")[:2] == (200, '{"status":"alive"}\n')
    status, body, _ = get(server.url + "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "reason": c.ready[1]}
    c.ready = (False, "broker connection lost\n(reconnecting)")
    status, body, _ = get(server.url + "/readyz")
    assert status == 503 and body.count("\n") == 1
    assert json.loads(body) == {"ready": False, "reason": "broker connection lost (reconnecting)"}
    c.bump(41)
    status, text, _ = get(server.url + "/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["lampwatch_gateway_messages"].type == "counter"
    assert fams["lampwatch_gateway_messages"].samples[0].name == "lampwatch_gateway_messages_total"
    assert fams["lampwatch_gateway_messages"].samples[0].value == 41
    assert fams["lampwatch_gateway_rejects_bad_json"].type == "counter"
    assert fams["lampwatch_gateway_spool_points"].type == "gauge"
    assert fams["lampwatch_gateway_spool_points"].samples[0].value == 7
    assert fams["lampwatch_gateway_lag_ms"].samples[0].value == 12.5
    assert fams["lampwatch_gateway_brand_new"].type == "gauge"
    assert fams["lampwatch_gateway_ready"].samples[0].value == 0  # not ready (set above)
    assert all(name.startswith("lampwatch_gateway_") for name in fams)
    assert get(server.url + "/nope")[0] == 404


def test_a_failing_probe_is_not_ready_and_failing_metrics_are_500() -> None:
    def broken() -> Any:
        raise OSError("spool disk: read-only file system")

    with HealthServer(ready=broken, metrics=broken, port=0) as server:
        status, body, _ = get(server.url + "/readyz")
        assert status == 503 and "read-only file system" in json.loads(body)["reason"]
        assert get(server.url + "/metrics")[0] == 500
        assert get(server.url + "/healthz")[0] == 200  # alive all the same


def test_a_port_in_use_is_a_clear_error(served: tuple[HealthServer, Counters]) -> None:
    server, _ = served
    with pytest.raises(HealthError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        HealthServer(ready=lambda: (True, ""), metrics=dict, port=server.port).start()
    with pytest.raises(HealthError):
        HealthServer(ready=lambda: (True, ""), metrics=dict, port=70000)


class Prometheus(harness._Server):
    """A real Prometheus 2.x scraping one target every second, TSDB in the workdir."""

    binary = "prometheus"
    ready_timeout_s = 30.0  # TSDB and WAL set up first: slower than the others under load

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.conf = self.workdir / "prometheus.yml"

    def _prepare(self) -> None:
        self.conf.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                             "scrape_configs:\n  - job_name: lampwatch-gateway\n"
                             f"    static_configs:\n      - targets: ['{self.target}']\n")

    def _command(self) -> list[str]:
        return [self.executable, f"--config.file={self.conf}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}", "--log.level=warn"]

    def _ready(self) -> bool:
        try:
            return harness._http("GET", f"http://{self.host}:{self.port}/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def query(self, q: str) -> list[dict[str, Any]]:
        status, body = harness._http("GET", f"http://{self.host}:{self.port}/api/v1/query?"
                                     + urllib.parse.urlencode({"query": q}), timeout=10)
        assert status == 200, body
        return json.loads(body)["data"]["result"]  # type: ignore[no-any-return]


def _value(prom: Prometheus, q: str) -> float | None:
    result = prom.query(q)
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_scrapes_counters_and_gauges(served: tuple[HealthServer, Counters]) -> None:
    server, c = served
    try:
        prom = Prometheus(f"{server.host}:{server.port}")
    except ServerMissing as exc:
        missing(exc)
    with prom:
        c.bump(5)
        wait_until(lambda: _value(prom, 'up{job="lampwatch-gateway"}') == 1.0, 30, "target up")
        wait_until(lambda: _value(prom, "lampwatch_gateway_messages_total") == 5.0, 30, "first scrape")
        c.bump(10)
        wait_until(lambda: _value(prom, "lampwatch_gateway_acked_total") == 15.0, 30, "a later scrape")
        assert _value(prom, "lampwatch_gateway_spool_points") == 7.0
        assert _value(prom, "lampwatch_gateway_ready") == 1.0
        # the types Prometheus itself recorded from the scrape
        base = f"http://{prom.host}:{prom.port}/api/v1/targets/metadata?metric="
        for name, kind in (("lampwatch_gateway_messages_total", "counter"),
                           ("lampwatch_gateway_spool_points", "gauge")):
            meta = json.loads(harness._http("GET", base + name, timeout=10)[1])["data"]
            assert {m["type"] for m in meta} == {kind}, (name, meta)


def test_readyz_follows_a_real_gateway_losing_its_broker(mosquitto: Mosquitto, tmp_path: Path) -> None:
    gw = Gateway(GatewayConfig(host=mosquitto.host, port=mosquitto.port, spool_path=str(tmp_path / "spool.sqlite")),
                 SqliteStore(str(tmp_path / "lw.sqlite")))

    def ready() -> tuple[bool, str]:
        return (True, "subscribed") if gw.connected else (False, "not connected to the broker")

    gw.start()
    try:
        with HealthServer(ready=ready, metrics=gw.counters, port=free_port()) as server:
            wait_until(lambda: get(server.url + "/readyz")[0] == 200, 20, "ready")
            mosquitto.kill()
            wait_until(lambda: get(server.url + "/readyz")[0] == 503, 30, "not ready once the broker is gone")
            assert json.loads(get(server.url + "/readyz")[1])["reason"] == "not connected to the broker"
            mosquitto.start()
            wait_until(lambda: get(server.url + "/readyz")[0] == 200, 60, "ready again")
            fams = {f.name for f in text_string_to_metric_families(get(server.url + "/metrics")[1])}
            assert {"lampwatch_gateway_acked", "lampwatch_gateway_spool_points"} <= fams
    finally:
        gw.stop()



def test_the_compose_healthcheck_passes_when_ready_and_fails_when_not(served: tuple[HealthServer, Counters]) -> None:
    import subprocess
    import sys

    import yaml  # type: ignore[import-untyped]

    server, c = served
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    test = compose["services"]["gateway"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "/readyz" in test[3]
    code = test[3].replace("127.0.0.1:9464", f"127.0.0.1:{server.port}")

    def run() -> int:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False).returncode

    assert run() == 0
    c.ready = (False, "spool disk full")
    assert run() != 0


def test_readiness_follows_the_spool_disk(tmp_path: Path) -> None:
    from gateway.health import all_ready, writable

    state = tmp_path / "state"
    state.mkdir()
    broker = {"up": True}
    ready = all_ready(lambda: (broker["up"], "subscribed" if broker["up"] else "broker gone"), writable(state))
    with HealthServer(ready=ready, metrics=dict, port=0) as server:
        status, body, _ = get(server.url + "/readyz")
        assert status == 200 and json.loads(body)["reason"] == "subscribed; spool writable"
        (state / ".ready-probe").unlink()
        (state / ".ready-probe").symlink_to("/dev/full")  # every write: ENOSPC, as on a full disk
        status, body, _ = get(server.url + "/readyz")
        assert status == 503 and "spool disk not writable" in json.loads(body)["reason"]
        assert "No space left on device" in json.loads(body)["reason"]
        (state / ".ready-probe").unlink()
        assert get(server.url + "/readyz")[0] == 200
        broker["up"] = False
        assert json.loads(get(server.url + "/readyz")[1]) == {"ready": False, "reason": "broker gone"}


def test_lampwatch_gateway_run_serves_readyz_and_metrics(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The CLI wiring: `lampwatch-gateway run` starts the health server on its configured port."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from testbed.servers import free_port

    port = free_port()
    env = {**os.environ, "LAMPWATCH_GATEWAY_MQTT_HOST": mosquitto.host,
           "LAMPWATCH_GATEWAY_MQTT_PORT": str(mosquitto.port), "LAMPWATCH_GATEWAY_STATE_DIR": str(tmp_path / "st"),
           "LAMPWATCH_GATEWAY_SQLITE_PATH": str(tmp_path / "lw.sqlite"), "LAMPWATCH_GATEWAY_HEALTH_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--duration", "20"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert ready is not None and ready["ready"] is True, ready
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
        assert "lampwatch_gateway_acked_total" in text and "lampwatch_gateway_ready 1.0" in text
    finally:
        proc.terminate()
        proc.wait(30)
