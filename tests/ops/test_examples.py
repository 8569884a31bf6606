"""examples/gateway.toml and examples/pole.toml load with the real loaders; the systemd units pass
`systemd-analyze verify` and every ExecStart is a command line the CLI accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.agent import build_drivers
from edge.config import load_config
from gateway.settings import load
from tests.servers import need

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
BIN = Path(sys.executable).parent


def test_the_gateway_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in __import__("os").environ if k.startswith("LAMPWATCH_GATEWAY_")]:
        monkeypatch.delenv(k)
    s = load(ROOT / "examples" / "gateway.toml")
    cfg = s.gateway_config()
    assert (cfg.host, cfg.port, cfg.username, cfg.client_id) == ("mqtt.city.example", 8883, "lampwatch.gateway",
                                                               "lampwatch-gateway-0")
    assert s.store == "influx1" and s.mqtt_password is None  # the secret stays out of the file
    assert cfg.spool_path.startswith("/var/lib/lampwatch/")


def test_the_pole_example_loads_and_builds_its_drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in __import__("os").environ if k.startswith("LAMPWATCH_EDGE_")]:
        monkeypatch.delenv(k)
    ca = tmp_path / "ca.crt"
    ca.write_text("stand-in: the loader checks the file exists\n")
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_TLS_CA", str(ca))  # the environment wins over the file, as documented
    cfg = load_config(ROOT / "examples" / "pole.toml")
    assert cfg.pole == "p-000123" and cfg.use_tls and cfg.mqtt_password is None
    assert [d.kind for d in cfg.drivers] == ["modbus", "command", "file"]
    assert set(cfg.sensors) == {"supply_voltage_v", "lamp_current_a", "lamp_power_w", "power_factor",
                                "leakage_current_ma", "door_open", "cabinet_temp_c", "tilt_deg"}
    drivers = build_drivers(cfg)  # constructs, connects nothing
    assert type(drivers["power_factor"]).__name__ == "ModbusDriver"
    for d in {id(d): d for d in drivers.values()}.values():
        d.close()


def _units() -> list[Path]:
    units = sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))
    assert {p.name for p in units} == {"lampwatch-gateway.service", "lampwatch-edge.service",
                                       "lampwatch-rollup.service", "lampwatch-rollup.timer"}
    return units


def test_systemd_units_verify(tmp_path: Path) -> None:
    need("systemd-analyze")
    for unit in _units():  # installed under /opt/lampwatch/bin; here the venv's scripts stand in
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/lampwatch/bin/", f"{BIN}/"))
    res = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.iterdir()))],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    (tmp_path / "broken.service").write_text("[Service]\nExecStart=not/absolute\n")  # the check can fail
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "broken.service")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode != 0


def test_every_exec_start_is_accepted_by_its_cli() -> None:
    seen = set()
    for unit in _units():
        for line in re.findall(r"^ExecStart=(.+)$", unit.read_text(), re.M):
            argv = shlex.split(line)
            prog = Path(argv[0]).name
            seen.add(prog)
            exe = shutil.which(prog, path=str(BIN))
            assert exe is not None, prog
            # --help after the real arguments: click parses them all first, so an unknown option or
            # command fails here with exit 2
            res = subprocess.run([exe, *argv[1:], "--help"], capture_output=True, text=True, timeout=60,
                                 check=False)
            assert res.returncode == 0, (unit.name, res.stderr)
    assert seen == {"lampwatch-gateway", "lampwatch-edge", "lampwatch-ingest"}
    timer = (UNITS / "lampwatch-rollup.timer").read_text()
    assert "Unit=lampwatch-rollup.service" in timer and "Persistent=true" in timer
