"""Edge for real boards: check --test, every config mistake at once, entry-point driver plugins, and
the Modbus driver against pymodbus's own simulator over TCP on 127.0.0.1 (through the real agent too)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.config import ModbusRegister, ModbusSource, load_config
from edge.drivers import DriverError, preflight
from edge.modbus import ModbusDriver, decode
from testbed.servers import Mosquitto, free_port
from tests.edge.edge_helpers import AgentProcess, Recorder, wait_until

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LAMPWATCH_EDGE_")} | {"COLUMNS": "40"}
    return subprocess.run([str(BIN / "lampwatch-edge"), *args], capture_output=True, text=True, timeout=60,
                          check=False, env=full | (env or {}))


# --- check --test ------------------------------------------------------------------------------------
def test_check_test_reads_every_sensor_once_and_prints_the_sample(tmp_path: Path) -> None:
    (tmp_path / "temp_raw").write_text("3150\n")
    script = tmp_path / "read-cabinet"
    script.write_text('#!/bin/sh\necho \'{"rcd": {"leak_ma": 2.4}, "mains": {"v": 231.5}, "door": false}\'\n')
    script.chmod(0o755)
    cfg = tmp_path / "pole.toml"
    cfg.write_text(f'''pole = "p-000123"
district = "north"
[[drivers]]
kind = "command"
argv = ["{script}"]
[drivers.metrics]
leakage_current_ma = {{ path = "rcd.leak_ma" }}
supply_voltage_v = {{ path = "mains.v" }}
door_open = {{ path = "door" }}
[[drivers]]
kind = "file"
[drivers.metrics]
cabinet_temp_c = {{ path = "{tmp_path / 'temp_raw'}", scale = 0.01 }}
[[drivers]]
kind = "simulated"
metrics = ["tilt_deg"]
seed = 1
''')
    res = edge("check", "--config", str(cfg), "--test")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"driver 0 (command {script}): leakage_current_ma=2.4 supply_voltage_v=231.5 door_open=0"
    assert lines[1] == "driver 1 (file): cabinet_temp_c=31.5"
    assert lines[2].startswith("driver 2 (simulated): tilt_deg=")
    sample = json.loads(lines[3].removeprefix("sample: "))
    assert {k: sample["m"][k] for k in ("leakage_current_ma", "supply_voltage_v", "door_open", "cabinet_temp_c")} \
        == {"leakage_current_ma": 2.4, "supply_voltage_v": 231.5, "door_open": 0.0, "cabinet_temp_c": 31.5}
    assert lines[4] == "ok: 5 metrics read from 3 driver(s)" and res.stderr == ""


def test_a_missing_command_fails_check_naming_the_driver(tmp_path: Path) -> None:
    cfg = tmp_path / "pole.toml"
    cfg.write_text('pole = "p-1"\ndistrict = "north"\n[[drivers]]\nkind = "simulated"\nmetrics = ["tilt_deg"]\n'
                   '[[drivers]]\nkind = "command"\nargv = ["/nonexistent/read-rcd"]\n[drivers.metrics]\n'
                   'leakage_current_ma = { path = "x" }\n')
    res = edge("check", "--config", str(cfg))  # no broker is tried: the driver fails first
    assert res.returncode == 1 and "ok:" not in res.stdout
    assert res.stderr.splitlines() == [
        "lampwatch-edge: error: driver 1 (command /nonexistent/read-rcd): sensor command '/nonexistent/read-rcd' "
        "not found"]
    res = edge("check", "--config", str(cfg), "--test")
    assert res.returncode == 1
    assert "driver 1 (command /nonexistent/read-rcd): leakage_current_ma=FAILED" in res.stdout
    assert res.stderr.startswith("lampwatch-edge: error: driver 1 (command /nonexistent/read-rcd): no value for "
                                 "leakage_current_ma") and len(res.stderr.splitlines()) == 1


def test_an_out_of_range_reading_fails_the_test(tmp_path: Path) -> None:
    cfg = tmp_path / "pole.toml"
    cfg.write_text('pole = "p-1"\ndistrict = "north"\n[[drivers]]\nkind = "command"\n'
                   'argv = ["echo", "{\\"v\\": 999}"]\n[drivers.metrics]\nsupply_voltage_v = { path = "v" }\n')
    res = edge("check", "--config", str(cfg), "--test")
    assert res.returncode == 1 and "outside 0..500 V" in res.stdout
    assert "driver 0 (command echo): supply_voltage_v=999 outside its valid range" in res.stderr


def test_every_config_mistake_is_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "pole.toml"
    cfg.write_text('pole = "P 1"\ndistrict = "north"\nmqtt_port = 0\nmqtt_keepalive_s = 1\nbogus = 3\n'
                   'mqtt_tls_ca = "/nonexistent/ca.pem"\n[intervals]\nfoo_bar = 3\n[thresholds]\nnoise_db = 1\n'
                   '[[drivers]]\nkind = "modbus"\n[drivers.metrics]\nlamp_power_w = { address = 3, type = "int8" }\n')
    res = edge("check", "--config", str(cfg))
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and res.stdout == ""
    assert all(line.startswith(f"lampwatch-edge: error: {cfg}: ") for line in lines), lines
    fields = sorted(line.removeprefix(f"lampwatch-edge: error: {cfg}: ").split(":")[0] for line in lines)
    assert fields == ["bogus", "drivers.0.modbus.metrics.lamp_power_w.type", "intervals", "mqtt_keepalive_s",
                      "mqtt_port", "mqtt_tls_ca", "pole", "thresholds"], lines
    # the library keeps them too, and its one-line form says how many more there are
    with pytest.raises(Exception) as exc:
        load_config(cfg)
    assert "(+7 more)" in str(exc.value) and "\n" not in str(exc.value)


# --- plugins through entry points --------------------------------------------------------------------
def test_a_driver_plugin_is_found_through_its_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "acme_lampwatch").mkdir(parents=True)
    (site / "acme_lampwatch" / "__init__.py").write_text(
        "class Rcd:\n"
        "    def __init__(self, metrics, options):\n"
        "        self.metrics, self.gain = metrics, options['gain']\n"
        "    def read(self, names, t_ms):\n"
        "        return {n: 1.5 * self.gain for n in names}\n"
        "    def close(self):\n"
        "        pass\n"
        "def make(metrics, options):\n"
        "    return Rcd(metrics, options)\n")
    dist = site / "acme_lampwatch-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-lampwatch\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lampwatch.drivers]\nacme-rcd = acme_lampwatch:make\n")
    cfg = tmp_path / "pole.toml"
    cfg.write_text('pole = "p-1"\ndistrict = "north"\n[[drivers]]\nkind = "plugin"\nname = "acme-rcd"\n'
                   'metrics = ["leakage_current_ma"]\noptions = { gain = 2 }\n')
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    res = edge("check", "--config", str(cfg), "--test", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "driver 0 (plugin acme-rcd): leakage_current_ma=3"
    cfg.write_text(cfg.read_text().replace("acme-rcd", "acme-nope"))
    res = edge("check", "--config", str(cfg), "--test", env=env)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1
    assert "no driver plugin 'acme-nope' in entry-point group lampwatch.drivers (installed: acme-rcd" in res.stderr


# --- Modbus --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("regs", "reg", "expected"), [
    ([0xFF85], ModbusRegister(address=0, type="int16"), -123.0),
    ([0xFF85], ModbusRegister(address=0, type="uint16"), 65413.0),
    ([2301], ModbusRegister(address=0, type="uint16", scale=0.1), 230.1),
    ([0xFFFE, 0xEE90], ModbusRegister(address=0, type="int32"), -70000.0),
    ([0xEE90, 0xFFFE], ModbusRegister(address=0, type="int32", word_order="little"), -70000.0),
    (list(struct.unpack(">HH", struct.pack(">f", 12.5))), ModbusRegister(address=0, type="float32"), 12.5),
    (list(struct.unpack(">HH", struct.pack(">f", 12.5)))[::-1],
     ModbusRegister(address=0, type="float32", word_order="little", offset=-2.5), 10.0),
])
def test_register_decoding(regs: list[int], reg: ModbusRegister, expected: float) -> None:
    assert decode(regs, reg) == pytest.approx(expected, rel=1e-12)


class ModbusSimulator:
    """pymodbus's own simulator (SimDevice) serving Modbus TCP on 127.0.0.1, in a thread of its own."""

    def __init__(self, device: SimDevice) -> None:
        self.device, self.port = device, free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.server: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _main(self) -> None:
        self.server = ModbusTcpServer(self.device, address=("127.0.0.1", self.port))
        self.loop.call_soon(self.ready.set)
        await self.server.serve_forever()

    def _run(self) -> None:
        self.loop.run_until_complete(self._main())

    def start(self) -> ModbusSimulator:
        self.thread.start()
        assert self.ready.wait(10)
        from testbed.servers import tcp_open

        wait_until(lambda: tcp_open("127.0.0.1", self.port), 10, "modbus simulator listening")
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
            self.thread.join(10)
        assert not self.thread.is_alive()
        self.loop.close()


UNIT = 7
METER = [SimData(0, values=2301, datatype=DataType.UINT16),  # supply_voltage_v, 0.1 V
         SimData(1, values=-42, datatype=DataType.INT16),  # cabinet_temp_c, 0.5 degC steps, offset
         SimData(2, values=123_456, datatype=DataType.INT32),  # lamp_power_w in mW
         SimData(4, values=0.962, datatype=DataType.FLOAT32)]  # power_factor
REGISTERS = {"supply_voltage_v": {"address": 0, "type": "uint16", "scale": 0.1},
             "cabinet_temp_c": {"address": 1, "type": "int16", "scale": 0.5, "offset": 40.0},
             "lamp_power_w": {"address": 2, "type": "int32", "scale": 0.001},
             "power_factor": {"address": 4, "type": "float32"}}
EXPECTED = {"supply_voltage_v": 230.1, "cabinet_temp_c": 19.0, "lamp_power_w": 123.456, "power_factor": 0.962}


@pytest.fixture
def meter() -> Iterator[ModbusSimulator]:
    sim = ModbusSimulator(SimDevice(id=UNIT, simdata=METER)).start()
    yield sim
    sim.stop()


def _spec(port: int, **over: Any) -> ModbusSource:
    return ModbusSource.model_validate({"kind": "modbus", "host": "127.0.0.1", "port": port, "unit": UNIT,
                                        "timeout_s": 1.0, "metrics": REGISTERS, **over})


def test_modbus_round_trip_against_the_pymodbus_simulator(meter: ModbusSimulator) -> None:
    d = ModbusDriver(_spec(meter.port))
    try:
        assert preflight(d) == []
        got = d.read(list(REGISTERS), 0)
        assert got.keys() == EXPECTED.keys()
        for k, v in EXPECTED.items():
            assert got[k] == pytest.approx(v, rel=1e-6), k  # float32 carries ~7 digits
        assert d.read(["supply_voltage_v"], 0) == {"supply_voltage_v": pytest.approx(230.1)}  # connection reused
    finally:
        d.close()
    wrong_unit = ModbusDriver(_spec(meter.port, unit=UNIT + 1, metrics={"supply_voltage_v": REGISTERS[
        "supply_voltage_v"]}))
    with pytest.raises(DriverError, match=f"unit {UNIT + 1} holding register 0"):
        wrong_unit.read(["supply_voltage_v"], 0)
    wrong_unit.close()


def test_modbus_device_gone_is_a_driver_error_naming_it() -> None:
    port = free_port()
    d = ModbusDriver(_spec(port, timeout_s=0.5))
    assert preflight(d) == [f"modbus tcp 127.0.0.1:{port}: cannot connect"]
    with pytest.raises(DriverError, match="cannot connect"):
        d.read(["power_factor"], 0)
    d.close()


def test_modbus_through_check_and_the_real_agent(meter: ModbusSimulator, mosquitto: Mosquitto, tmp_path: Path,
                                                 recorder_factory: Callable[..., Recorder],
                                                 agent_process: Callable[[Path, Path], AgentProcess]) -> None:
    regs = "\n".join(f"{k} = {{ {', '.join(f'{a} = {json.dumps(b)}' for a, b in v.items())} }}"
                     for k, v in REGISTERS.items())
    cfg = tmp_path / "pole.toml"
    cfg.write_text(f'pole = "p-modbus"\ndistrict = "north"\nmqtt_host = "{mosquitto.host}"\n'
                   f'mqtt_port = {mosquitto.port}\n'
                   f'report_interval_s = 0.5\noutbox_path = "{tmp_path / "outbox.sqlite"}"\n'
                   f'[[drivers]]\nkind = "modbus"\nhost = "127.0.0.1"\nport = {meter.port}\nunit = {UNIT}\n'
                   f'[drivers.metrics]\n{regs}\n')
    res = edge("check", "--config", str(cfg), "--test")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith(f"driver 0 (modbus tcp 127.0.0.1:{meter.port} unit {UNIT}): "
                                                 "supply_voltage_v=230.1 ")
    rec = recorder_factory(mosquitto, topic="lampwatch/v1/north/p-modbus/telemetry")
    agent = agent_process(cfg, tmp_path / "agent.log").start()
    wait_until(lambda: len(rec.samples("p-modbus")) >= 2, what="modbus samples over MQTT")
    agent.terminate()
    for s in rec.samples("p-modbus"):
        assert s["m"].keys() == EXPECTED.keys()
        for k, v in EXPECTED.items():
            assert s["m"][k] == pytest.approx(v, rel=1e-6), k
