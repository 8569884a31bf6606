"""TLS: the agent verifies the broker against a CA file and can present a client certificate."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from testbed.servers import Mosquitto, free_port
from tests.edge.edge_helpers import Recorder, wait_until
from tests.servers import need


@pytest.fixture(autouse=True)
def _openssl_installed() -> None:
    need("openssl")  # fails under CI=true, skips elsewhere


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _pki(d: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lampwatch-test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
                 str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"),
                 "-out", str(d / f"{name}.pem"))


def test_agent_over_tls_with_client_certificate(mosquitto_factory: Callable[..., Mosquitto],
                                                recorder_factory: Callable[..., Recorder], tmp_path: Path) -> None:
    _pki(tmp_path)
    tls_port = free_port()
    broker = mosquitto_factory(extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
        f"keyfile {tmp_path / 'server.key'}\nrequire_certificate true\n"))
    rec = recorder_factory(broker)  # plain listener, to watch
    cfg = EdgeConfig(pole="p-tls", district="north", mqtt_port=tls_port, mqtt_tls_ca=tmp_path / "ca.pem",
                     mqtt_tls_cert=tmp_path / "client.pem", mqtt_tls_key=tmp_path / "client.key", report_interval_s=0.5,
                     outbox_path=tmp_path / "o.sqlite", backoff_max_s=0.5)
    agent = EdgeAgent(cfg)
    agent.start()
    try:
        wait_until(lambda: len(rec.samples("p-tls")) >= 2, what="telemetry over TLS")
    finally:
        agent.stop(flush_timeout_s=2)
    assert json.loads(rec.of("/status")[0][1])["state"] == "birth"
    # without the client certificate the broker refuses the handshake: the agent keeps retrying
    bare = EdgeAgent(cfg.model_copy(update={"mqtt_tls_cert": None, "mqtt_tls_key": None, "pole": "p-tls2",
                                            "outbox_path": tmp_path / "o2.sqlite"}))
    bare.start()
    try:
        wait_until(lambda: bare.counters().get("connect_failures", 0) >= 2, what="refused handshakes")
        assert not bare.connected
    finally:
        bare.stop(flush_timeout_s=0)
