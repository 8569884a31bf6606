"""docker-compose.yml validates (docker-compose config), needs no committed secret, and is wired as
documented: healthchecks, named volumes, the simulator behind a profile, mounts that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.servers import missing

REPO = Path(__file__).resolve().parents[2]
FILES = ("docker-compose.yml", "mosquitto.conf", "Dockerfile", "pyproject.toml", "alertmanager.yml")


def _binary() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        missing("docker-compose is not installed (apt-get install docker-compose)")
    return path


def _project(tmp_path: Path, env_text: str) -> Path:
    for name in FILES:
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "grafana", tmp_path / "grafana")
    (tmp_path / ".env").write_text(env_text)
    return tmp_path


def _compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUXDB_", "LAMPWATCH_", "GRAFANA_", "MQTT_"))}
    return subprocess.run([_binary(), "-f", "docker-compose.yml", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_config_is_valid_with_the_example_env(tmp_path: Path) -> None:
    project = _project(tmp_path, (REPO / ".env.example").read_text())
    proc = _compose(project, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    proc = _compose(project, "--profile", "sim", "config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_a_missing_secret_fails_the_config(tmp_path: Path) -> None:
    env = "\n".join(line for line in (REPO / ".env.example").read_text().splitlines()
                    if not line.startswith("INFLUXDB_TOKEN="))
    proc = _compose(_project(tmp_path, env), "config", "-q")
    assert proc.returncode != 0
    assert "INFLUXDB_TOKEN" in proc.stderr


def test_resolved_services(tmp_path: Path) -> None:
    project = _project(tmp_path, (REPO / ".env.example").read_text())
    proc = _compose(project, "--profile", "sim", "config")
    assert proc.returncode == 0, proc.stderr
    cfg: dict[str, Any] = yaml.safe_load(proc.stdout)
    services = cfg["services"]
    assert {"mosquitto", "influxdb", "grafana", "gateway", "simulator"} <= set(services)
    for name, svc in services.items():
        if name != "influxdb-setup":  # a one-shot job
            assert "healthcheck" in svc, name
    assert set(cfg["volumes"]) >= {"mosquitto-data", "influxdb-data", "grafana-data", "gateway-state"}
    assert "sim" in services["simulator"]["profiles"]
    gw = services["gateway"]["environment"]
    assert gw["LAMPWATCH_GATEWAY_STORE"] == "influx2" and gw["LAMPWATCH_GATEWAY_MQTT_HOST"] == "mosquitto"
    assert gw["LAMPWATCH_GATEWAY_INFLUX_TOKEN"] == "change-me-influx-token"  # from .env, not the file
    init = services["influxdb"]["environment"]
    assert {"DOCKER_INFLUXDB_INIT_ORG", "DOCKER_INFLUXDB_INIT_BUCKET", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"} <= set(init)
    mounts = " ".join(str(v) for v in services["mosquitto"]["volumes"])
    assert "mosquitto.conf" in mounts and "/mosquitto/config/passwd" in mounts
    # every file compose mounts from the repository exists there
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v["source"] if isinstance(v, dict) else str(v).split(":")[0]
            if isinstance(v, dict) and v.get("type") == "volume":
                continue
            p = Path(src)
            if p.is_relative_to(project) and not any(s in src for s in ("broker", "certs")):
                assert p.exists(), src


def test_no_secret_is_committed() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    for var in re.findall(r"\$\{(\w*(?:TOKEN|PASSWORD)\w*)", compose):
        assert re.search(rf"\${{{var}:\?", compose), f"{var} must be required (${{{var}:?...}}), not defaulted"
    assert not re.search(r"(TOKEN|PASSWORD)\w*:\s*[\"']?[A-Za-z0-9]{8,}", compose)
    example = (REPO / ".env.example").read_text()
    for line in example.splitlines():
        if re.match(r"\w*(TOKEN|PASSWORD)\w*=", line):
            assert "change-me" in line, line


def test_alertmanager_is_in_the_stack_and_its_config_is_valid(tmp_path: Path) -> None:
    project = _project(tmp_path, (REPO / ".env.example").read_text())
    proc = _compose(project, "config")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    am = services["alertmanager"]
    assert any("alertmanager.yml" in str(v) for v in am["volumes"]) and "healthcheck" in am
    assert services["gateway"]["environment"]["LAMPWATCH_GATEWAY_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    amtool = shutil.which("amtool")
    if amtool is None:
        missing("amtool is not installed (apt-get install prometheus-alertmanager)")
    check = subprocess.run([amtool, "check-config", str(REPO / "alertmanager.yml")], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
