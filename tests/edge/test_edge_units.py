"""Pure parts of the edge agent: config, drivers, safety, commands, wire format, CLI errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from contract.catalog import CRITICAL, METRICS
from contract.errors import ConfigError
from contract.models import CommandAck, Status, Telemetry
from edge.agent import build_drivers
from edge.cli import app
from edge.commands import handle
from edge.config import EdgeConfig, load_config
from edge.drivers import CommandDriver, DriverError, FileDriver, SimulatedDriver, ValueSource, catalog_model
from edge.link import backoff_delay
from edge.safety import SafetyMonitor
from edge.wire import status_payload, telemetry_payload


# --- config -------------------------------------------------------------------------------------
def test_config_file_env_priority_and_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "edge.toml"
    f.write_text('pole = "p-7"\ndistrict = "north"\nmqtt_port = 1884\nmqtt_password = "hunter2"\nmqtt_username = "u"\n'
                 '[intervals]\nnoise_db = 5.0\n')
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_PORT", "1999")
    cfg = load_config(f)
    got = (cfg.pole, cfg.mqtt_port, cfg.interval_of("noise_db"), cfg.interval_of("tilt_deg"))
    assert got == ("p-7", 1999, 5.0, 60.0)
    assert "hunter2" not in repr(cfg) and cfg.mqtt_password is not None
    assert cfg.mqtt_password.get_secret_value() == "hunter2"
    assert cfg.sensors == tuple(m.name for m in METRICS)


@pytest.mark.parametrize(("text", "needle"), [
    ('pole = "P 1"\ndistrict = "n"\n', "pole"),
    ('pole = "p-1"\ndistrict = "n"\n[thresholds]\nnoise_db = 3.0\n', "not checked on the edge"),
    ('pole = "p-1"\ndistrict = "n"\n[intervals]\nfoo_bar = 3.0\n', "unknown metric"),
    ('pole = "p-1"\ndistrict = "n"\nmqtt_tls_ca = "/nonexistent/ca.pem"\n', "not found"),
    ('pole = "p-1"\ndistrict = "n"\nbogus = 1\n', "bogus"),
    ("pole = \n", "not valid TOML"),
])
def test_config_errors_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "edge.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_cli_user_mistakes_print_one_line_no_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["check", "--config", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and "not found" in res.output and "Traceback" not in res.output
    f = tmp_path / "edge.toml"
    f.write_text('pole = "p-1"\ndistrict = "north"\nmqtt_port = 1\n')
    res = runner.invoke(app, ["check", "--config", str(f), "--timeout", "2"])
    assert res.exit_code == 1 and "cannot reach broker" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_check_against_a_real_broker(mosquitto: object, tmp_path: Path) -> None:
    f = tmp_path / "edge.toml"
    f.write_text(f'pole = "p-1"\ndistrict = "north"\nmqtt_port = {mosquitto.port}\n')  # type: ignore[attr-defined]
    res = CliRunner().invoke(app, ["check", "--config", str(f)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ok:") and "granted QoS 1" in res.output


# --- drivers ------------------------------------------------------------------------------------
def test_catalog_model_stays_in_range_and_is_seeded() -> None:
    a, b = catalog_model(3), catalog_model(3)
    for t in range(0, 86_400_000, 3_600_000):
        for m in METRICS:
            v = a(m.name, 1_700_000_000_000 + t)
            assert v is not None and m.in_range(v), (m.name, v)
            assert b(m.name, 1_700_000_000_000 + t) == v
    assert a("no_such_metric", 0) is None


def test_simulated_driver_takes_any_callable() -> None:
    d = SimulatedDriver(["tilt_deg", "smoke"], lambda n, t: 1.0 if n == "smoke" else None)
    assert d.read(["tilt_deg", "smoke"], 0) == {"smoke": 1.0}


def test_command_driver_reads_json_paths(tmp_path: Path) -> None:
    script = tmp_path / "sensors.py"
    script.write_text('import json; print(json.dumps({"rcd": {"leak_ma": 3.5}, "adc": [{"v": 1150}], '
                      '"door": True}))')
    d = CommandDriver([sys.executable, str(script)], {
        "leakage_current_ma": ValueSource("rcd.leak_ma"),
        "supply_voltage_v": ValueSource("adc.0.v", scale=0.2),
        "door_open": ValueSource("door"),
        "tilt_deg": ValueSource("imu.tilt"),  # absent: left out, not fatal
    })
    assert d.read(["leakage_current_ma", "supply_voltage_v", "door_open", "tilt_deg"], 0) == {
        "leakage_current_ma": 3.5, "supply_voltage_v": 230.0, "door_open": 1.0}
    bad = CommandDriver([sys.executable, "-c", "import sys; sys.exit(3)"], {"tilt_deg": ValueSource("x")})
    with pytest.raises(DriverError, match="exited 3"):
        bad.read(["tilt_deg"], 0)


def test_file_driver_reads_sysfs_style_files(tmp_path: Path) -> None:
    (tmp_path / "in_temp_raw").write_text("2750\n")
    d = FileDriver({"cabinet_temp_c": ValueSource(str(tmp_path / "in_temp_raw"), scale=0.01),
                    "water_level_cm": ValueSource(str(tmp_path / "missing"))})
    assert d.read(["cabinet_temp_c", "water_level_cm"], 0) == {"cabinet_temp_c": 27.5}
    with pytest.raises(DriverError):
        d.read(["water_level_cm"], 0)


def test_drivers_from_config(tmp_path: Path) -> None:
    (tmp_path / "tilt").write_text("0.7")
    cfg = EdgeConfig(pole="p-1", district="n", drivers=[
        {"kind": "file", "metrics": {"tilt_deg": {"path": str(tmp_path / "tilt")}}},
        {"kind": "simulated", "metrics": ["tilt_deg", "smoke"], "seed": 1},
    ])
    drivers = build_drivers(cfg)
    assert cfg.sensors == ("tilt_deg", "smoke")
    assert isinstance(drivers["tilt_deg"], FileDriver) and isinstance(drivers["smoke"], SimulatedDriver)


# --- safety -------------------------------------------------------------------------------------
def test_safety_levels_with_hysteresis_and_baseline() -> None:
    s = SafetyMonitor(CRITICAL, tilt_baseline=1.0)
    assert s.check({"leakage_current_ma": 2.0}) == []
    assert [c.new_level for c in s.check({"leakage_current_ma": 16.0})] == [1]
    assert [c.new_level for c in s.check({"leakage_current_ma": 31.0})] == [2]
    assert s.check({"leakage_current_ma": 27.0}) == []  # above the 25 mA clear level: still raised
    assert [c.new_level for c in s.check({"leakage_current_ma": 20.0})] == [1]
    assert [c.new_level for c in s.check({"leakage_current_ma": 11.0})] == [0]
    assert s.check({"tilt_deg": 2.9}) == []  # 1.9 beyond baseline
    assert [c.new_level for c in s.check({"tilt_deg": 3.1})] == [1]
    s.set_threshold("leakage_current_ma", 5.0)
    assert [c.new_level for c in s.check({"leakage_current_ma": 6.0})] == [1]
    with pytest.raises(ValueError):
        s.set_threshold("noise_db", 1.0)


# --- commands -----------------------------------------------------------------------------------
class _Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def set_interval(self, interval_s: float, metric: str | None) -> dict[str, float | str | bool]:
        if metric == "bogus_metric":
            raise ValueError("metric 'bogus_metric' is not sampled on this pole")
        self.calls.append(("set_interval", interval_s))
        return {"interval_s": interval_s}

    def sample_now(self) -> dict[str, float | str | bool]:
        return {"queued": True}

    def set_thresholds(self, thresholds: dict[str, float]) -> dict[str, float | str | bool]:
        return dict(thresholds)

    def ping(self) -> dict[str, float | str | bool]:
        return {"pong": True}


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_payload_gets_a_valid_ack(payload: bytes) -> None:
    ack = handle(payload, _Target(), pole="p-1", now_ms=1_700_000_000_000)
    CommandAck.model_validate_json(ack.model_dump_json())


def test_commands_validated_and_answered() -> None:
    t = _Target()

    def go(doc: object) -> CommandAck:
        return handle(json.dumps(doc).encode(), t, pole="p-1", now_ms=1_700_000_000_000)

    assert go({"v": 1, "id": "a", "cmd": "set_interval", "interval_s": 2.5}).ok
    assert t.calls == [("set_interval", 2.5)]
    r = go({"v": 1, "id": "b", "cmd": "set_interval", "interval_s": 1, "metric": "bogus_metric"})
    assert not r.ok and "bogus_metric" in str(r.reason)
    r = go({"v": 1, "id": "c", "cmd": "format_disk"})
    assert (r.id, r.ok) == ("c", False) and "unknown command" in str(r.reason)
    r = go({"v": 1, "id": "d", "cmd": "ping", "extra": 1})
    assert not r.ok and "malformed" in str(r.reason)
    assert go({"v": 1, "id": "e", "cmd": "ping"}).result == {"pong": True}


# --- wire ---------------------------------------------------------------------------------------
@given(st.lists(st.fixed_dictionaries({"tilt_deg": st.floats(0, 90), "smoke": st.sampled_from([0.0, 1.0])}),
                min_size=1, max_size=5), st.integers(0, 10**6))
def test_telemetry_payload_round_trips_through_the_contract(ms: list[dict[str, float]], evicted: int) -> None:
    from contract.models import Sample

    bodies = [Sample(seq=i, ts=1_700_000_000_000 + i, m=m).model_dump_json() for i, m in enumerate(ms)]
    t = Telemetry.model_validate_json(telemetry_payload("p-1", "abc-123", bodies, evicted))
    assert (t.pole, t.boot, t.evicted, [s.m for s in t.samples]) == ("p-1", "abc-123", evicted, ms)


def test_status_payload_is_a_contract_status() -> None:
    st_ = Status.model_validate_json(status_payload(pole="p-1", district="north", state="offline",
                                                    ts_ms=1_700_000_000_000, boot="b", reason="will"))
    assert (st_.state, st_.reason) == ("offline", "will")


def test_backoff_is_jittered_exponential_and_capped() -> None:
    import random

    rng = random.Random(1)
    ds = [backoff_delay(n, 0.5, 8.0, rng) for n in range(10)]
    assert all(0.25 <= d <= 8.0 for d in ds)
    assert ds[-1] >= 4.0 and ds[0] <= 0.5
