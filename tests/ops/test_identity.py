"""Gateway identity and the broker's files: ids, the gateway's client id default, `lampwatch-gateway
status` logging in as the operators' user on the production config, the one mosquitto.conf and what
is rendered from it, `lampwatch-ingest certs`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from contract import topics
from contract.errors import ConfigError
from contract.ids import GATEWAY_ID_RE, POLE_RE, is_gateway_id, is_pole_id
from gateway.service import Gateway, GatewayConfig
from gateway.settings import load
from ingest import broker as brokerfiles
from ingest import credentials
from ingest.cli import main
from ingest.sqlite import SqliteStore
from simulator.drills.identity_drills import ProductionBroker
from tests.servers import need, need_root

REPO = Path(__file__).resolve().parents[2]


# --- ids and settings ----------------------------------------------------------------------------
def test_service_users_are_gateway_ids_and_never_pole_ids() -> None:
    for user in [*credentials.gateway_users(3), credentials.OPS_USER]:
        assert is_gateway_id(user) and not is_pole_id(user), user
        assert topics.gateway_status(user) == f"lampwatch/v1/_sys/gateway/{user}/status"
    assert GATEWAY_ID_RE.pattern.replace(".", "") == POLE_RE.pattern  # pole-id characters plus the dot
    for bad in ("", "+", "#", "a/b", "Gw", "-gw", "gw 0", "x" * 65):
        with pytest.raises(topics.TopicError):
            topics.gateway_status(bad)


def test_the_gateway_client_id_defaults_to_its_username(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith("LAMPWATCH_GATEWAY_"):
            monkeypatch.delenv(k)
    assert load().client_id == "lampwatch-gateway-0"  # an unsecured development broker
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_USERNAME", "lampwatch.gw-3")
    s = load()
    assert s.client_id == "lampwatch.gw-3" and s.gateway_config().client_id == "lampwatch.gw-3"
    toml = tmp_path / "gw.toml"
    toml.write_text('[gateway]\nclient_id = "lampwatch.gw-9"\n')
    assert load(toml).client_id == "lampwatch.gw-9"  # given explicitly: kept
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_USERNAME", "Ops Team")
    with pytest.raises(ConfigError, match="defaults to mqtt_username"):
        load().gateway_config()


# --- lampwatch-gateway status on the production config --------------------------------------------
@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[ProductionBroker, dict[str, str], Gateway]]:
    need("mosquitto", "openssl")
    d = tmp_path / "broker"
    credentials.write_credentials(d, ["p-000001"])
    brokerfiles.make_certs(d / "certs")
    (d / "data").mkdir()
    pw = dict(line.split(",", 1) for line in (d / "secrets.csv").read_text().split()[1:])
    store = SqliteStore(tmp_path / "store.sqlite")
    with ProductionBroker(d) as server:
        gw = Gateway(GatewayConfig(host=server.host, port=server.plain_port, client_id=credentials.GATEWAY_USER,
                                   username=credentials.GATEWAY_USER, password=pw[credentials.GATEWAY_USER],
                                   spool_path=str(tmp_path / "spool.sqlite"), selfmetrics_interval_s=1.0), store)
        gw.start()
        try:
            yield server, pw, gw
        finally:
            gw.stop()
            store.close()


def _status(server: ProductionBroker, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPWATCH_")}
    env.update({"LAMPWATCH_GATEWAY_MQTT_HOST": server.host, "LAMPWATCH_GATEWAY_MQTT_PORT": str(server.plain_port),
                "COLUMNS": "200", **extra_env})
    return subprocess.run([sys.executable, "-m", "gateway", "status", "--wait", "1", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_logs_in_as_ops_and_never_as_a_gateway(live: tuple[ProductionBroker, dict[str, str], Gateway]) -> None:
    server, pw, _gw = live
    ops = {"LAMPWATCH_OPS_MQTT_USERNAME": credentials.OPS_USER, "LAMPWATCH_OPS_MQTT_PASSWORD": pw[credentials.OPS_USER]}
    proc = _status(server, ops)
    assert proc.returncode == 0, proc.stderr
    assert credentials.GATEWAY_USER in proc.stdout and "online" in proc.stdout, proc.stdout
    refusals = [
        ({}, "refused the login as anonymous"),  # the repository's config has no anonymous access
        ({**ops, "LAMPWATCH_OPS_MQTT_PASSWORD": "wrong"}, f"refused the login as {credentials.OPS_USER}"),
        ({"LAMPWATCH_GATEWAY_MQTT_USERNAME": credentials.GATEWAY_USER,
          "LAMPWATCH_OPS_MQTT_USERNAME": credentials.GATEWAY_USER}, "the gateway's own login"),
        ({"LAMPWATCH_OPS_MQTT_USERNAME": "lampwatch.gw-1"}, "is a gateway's user"),
    ]
    for env, text in refusals:
        proc = _status(server, env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (env, proc.stderr)
        assert lines[0].startswith("lampwatch-gateway: error: ") and text in lines[0], lines
    time.sleep(0.5)
    assert "Client lampwatch.gw-0 disconnected" not in server.log_text()  # nobody took its session over


# --- the one broker config and its renderings -------------------------------------------------------
def test_every_listener_sets_use_username_as_clientid() -> None:
    text = (REPO / "mosquitto.conf").read_text()
    sections = re.split(r"^listener .*$", text, flags=re.M)
    assert len(sections) == 3  # before the first listener, then one per listener
    assert not re.search(r"^use_username_as_clientid", sections[0], re.M)  # no effect there on 2.0.11
    for body in sections[1:]:
        assert re.search(r"^use_username_as_clientid true$", body, re.M), body


def test_compose_mounts_every_path_the_container_config_reads() -> None:
    conf = (REPO / "mosquitto.conf").read_text()
    paths = set(re.findall(r"^(?:password_file|acl_file|cafile|certfile|keyfile|persistence_location) (\S+)",
                           conf, re.M))
    assert len(paths) == 6
    svc = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["mosquitto"]
    targets = [v.rsplit(":", 2)[1] if v.endswith((":ro", ":rw")) else v.rsplit(":", 1)[1] for v in svc["volumes"]]
    assert "/mosquitto/config/mosquitto.conf" in targets
    for p in paths:
        assert any(p == t or p.startswith(t.rstrip("/") + "/") for t in targets), (p, targets)


def test_bare_metal_rendering_changes_only_paths_ports_and_the_plain_bind(tmp_path: Path) -> None:
    container = (REPO / "mosquitto.conf").read_text()
    text = brokerfiles.bare_metal_config(container, tmp_path, tls_port=18883, plain_port=11883)
    assert not [line for line in text.splitlines() if "/mosquitto/" in line and not line.startswith("#")]
    assert re.search(r"^listener 18883$", text, re.M) and re.search(r"^listener 11883 127.0.0.1$", text, re.M)
    assert f"password_file {tmp_path.resolve()}/passwd" in text
    rules = [line for line in container.splitlines() if line and not line.startswith(("#", "listener"))
             and "/mosquitto/" not in line]
    assert rules and all(line in text.splitlines() for line in rules)  # every rule carried over verbatim
    with pytest.raises(ConfigError, match="no longer has"):
        brokerfiles.bare_metal_config(container.replace("/mosquitto/data/", "/var/lib/x/"), tmp_path)


def test_broker_config_refuses_a_directory_mosquitto_cannot_reach() -> None:
    need_root("the broker only drops to user mosquitto when started as root")
    need("openssl")
    top = Path(tempfile.mkdtemp(prefix="lampwatch-reach-"))
    top.chmod(0o755)
    hidden = top / "private"
    d = hidden / "broker"
    credentials.write_credentials(d, ["p-000001"], hasher="python")
    brokerfiles.make_certs(d / "certs")
    hidden.chmod(0o700)
    with pytest.raises(ConfigError, match=f"cannot reach .*{hidden.name} is mode 0700"):
        brokerfiles.write_bare_metal(d)
    assert not (d / "mosquitto.conf").exists()
    hidden.chmod(0o711)  # traversable, not listable: enough
    assert brokerfiles.write_bare_metal(d).handed_to == "mosquitto"
    shutil.rmtree(top)


def test_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need("openssl")
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--host", "127.0.0.1", "--host", "mqtt.example.org"]) == 0
    assert capsys.readouterr().out.strip() == f"certs: files=4 dir={out} hosts=127.0.0.1,mqtt.example.org"
    for name, mode in (("ca.key", 0o600), ("server.key", 0o600), ("ca.crt", 0o644), ("server.crt", 0o644)):
        assert (out / name).stat().st_mode & 0o777 == mode, name
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(out / "server.crt"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:mqtt.example.org" in text
    before = (out / "ca.crt").read_bytes()
    assert main(["certs", "--out", str(out)]) == 2  # devices trust this CA: never replaced silently
    assert "--force" in capsys.readouterr().err
    assert (out / "ca.crt").read_bytes() == before
    assert main(["certs", "--out", str(out), "--host", "bad host!"]) == 2
