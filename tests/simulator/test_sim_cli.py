"""``lampwatch-sim run | scenario | score | report`` through typer's CliRunner, against real servers."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.main import get_command
from typer.testing import CliRunner

from simulator.cli import app
from testbed.servers import Mosquitto
from tests.simulator.test_sim_report import build_known_store

RUN_LINE = re.compile(r"run: published=(\d+) hostile=(\d+) msgs_s=[\d.]+ faults=(\d+) seconds=[\d.]+")
SCORE_LINE = re.compile(r"faults: precision=(\S+) recall=(\S+) latency_p50_samples=(\S+) "
                        r"false_per_1000_pole_days=(\S+)")
TINY = """
name = "tiny"
description = "eight poles, forty minutes, a leak and a knock-down"
seed = 5

[city]
poles = 8
districts = ["centre", "north"]

[run]
start = 2024-01-15T16:00:00Z
duration = "40m"
step = "10s"

[[faults]]
pole = "p-000002"
kind = "leakage"
at = "5m"
for = "20m"
magnitude = 45

[[faults]]
pole = "p-000004"
kind = "knockdown"
at = "10m"
for = "20m"
magnitude = 60
"""


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


class _Sub:
    """A subscriber on every lampwatch topic that records what it received."""

    def __init__(self, broker: Mosquitto) -> None:
        self.msgs: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sub", protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_a: self._ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.subscribe("lampwatch/v1/#", qos=1)
        self.c.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.msgs.append((m.topic, bytes(m.payload)))

    def of(self, kind: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(t, p) for t, p in self.msgs if t.endswith("/" + kind)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_every_new_command_has_an_example() -> None:
    root = get_command(app)
    for name in ("run", "scenario", "score", "report", "demo", "drill"):
        cmd = root.commands[name]  # type: ignore[attr-defined]
        assert cmd.help and "Example: lampwatch-sim " + name in cmd.help, name


def test_run_multiplexed_publishes_births_then_telemetry(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = _Sub(mosquitto)
    labels = tmp_path / "labels.csv"
    try:
        res = _invoke("run", "--host", mosquitto.host, "--port", str(mosquitto.port), "--poles", "6",
                      "--speed", "300", "--duration", "2", "--faults", "3000", "--labels", str(labels),
                      "--hostile-pct", "20")
        assert res.exit_code == 0, res.output
        m = RUN_LINE.search(res.output)
        assert m, res.output
        published, hostile, faults = map(int, m.groups())
        import time

        deadline = time.monotonic() + 10
        while len(sub.of("telemetry")) < published + hostile and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.close()
    births = [json.loads(p) for _t, p in sub.of("status")]
    assert sorted(b["pole"] for b in births) == [f"p-{i:06d}" for i in range(6)]
    assert all(b["state"] == "birth" and b["rated_power_w"] > 0 for b in births)
    tele = sub.of("telemetry")
    assert published >= 6 * 5 and hostile > 0
    assert len(tele) >= published  # hostile payloads may carry injected topics; the fleet's all arrive
    first_telemetry = next(i for i, (t, _p) in enumerate(sub.msgs) if t.endswith("/telemetry"))
    assert all(t.endswith("/status") for t, _p in sub.msgs[:6]) and first_telemetry >= 6
    text = labels.read_text()
    assert text.startswith("pole,metric,kind,start_ms,end_ms\n") and text.count("\n") == faults + 1 and faults > 0


def test_run_per_device_is_one_client_per_pole(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = _Sub(mosquitto)
    try:
        res = _invoke("run", "--host", mosquitto.host, "--port", str(mosquitto.port), "--poles", "4",
                      "--mode", "per-device", "--speed", "20", "--duration", "2", "--workdir", str(tmp_path))
        assert res.exit_code == 0, res.output
        m = RUN_LINE.search(res.output)
        assert m, res.output
        # the broker forwards each agent's last status after acknowledging it to the agent: wait for the
        # four (bounded) instead of reading what has arrived at the moment the run returned
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len({json.loads(p)["pole"] for _t, p in sub.of("status")
                                                    if json.loads(p)["state"] == "offline"}) < 4:
            time.sleep(0.05)
    finally:
        sub.close()
    status = [json.loads(p) for _t, p in sub.of("status")]
    agents = {s["pole"] for s in status if s["state"] == "birth" and s.get("agent_version") != "sim"}
    assert agents == {f"p-{i:06d}" for i in range(4)}  # each agent's own birth
    assert {s["pole"] for s in status if s["state"] == "offline"} == agents  # clean shutdown status
    assert int(m.group(1)) > 0 and len(sub.of("telemetry")) > 0
    assert len(list(tmp_path.glob("edge-p-*.sqlite"))) == 4  # one outbox per agent
    log = mosquitto.log_text()
    for pole in agents:
        assert f" as {pole} " in log  # its own MQTT client id


def test_run_bad_arguments_are_one_line_and_exit_2() -> None:
    for args in (["run", "--speed", "2", "--rate", "10"], ["run", "--mode", "swarm"],
                 ["run", "--scenario", "safety-drill", "--poles", "3"],
                 ["run", "--scenario", "no-such-file.toml"], ["run", "--port", "1", "--duration", "1"]):
        res = _invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and "error" in res.output.lower(), (args, res.output)


def test_scenario_end_to_end_writes_store_and_labels_and_scores(tmp_path: Path) -> None:
    from testbed.servers import ServerMissing, require

    try:
        require("mosquitto")
        broker = "mosquitto"
    except ServerMissing:
        broker = "embedded"
    scen = tmp_path / "tiny.toml"
    scen.write_text(TINY)
    out = tmp_path / "run"
    res = _invoke("scenario", str(scen), "--out", str(out), "--broker", broker)
    assert res.exit_code == 0, res.output
    m = re.search(r"scenario: name=tiny published=(\d+) stored=(\d+) rejected=(\d+) alerts=(\d+) faults=2 "
                  r"seconds=[\d.]+", res.output)
    assert m, res.output
    published, stored, rejected, alerts = map(int, m.groups())
    assert published == stored == 8 * 240 and rejected == 0 and alerts >= 2
    s = SCORE_LINE.search(res.output)
    assert s and s.group(2) == "1.000", res.output  # the leak and the knock-down are both found
    assert {p.name for p in out.iterdir()} >= {"labels.csv", "lampwatch.sqlite", "run.json"}
    meta = json.loads((out / "run.json").read_text())
    assert len(meta["poles"]) == 8 and meta["step_ms"] == 10_000
    from ingest.sqlite import SqliteStore

    st = SqliteStore(out / "lampwatch.sqlite")
    assert st.count("telemetry") == stored and st.count("alerts") >= 2
    st.close()
    # the same folder scores the same from the command line, and reports
    again = _invoke("score", "--labels", str(out / "labels.csv"), "--store", f"sqlite:{out / 'lampwatch.sqlite'}",
                    "--step-s", "10")
    assert again.exit_code == 0, again.output
    assert SCORE_LINE.search(again.output).group(2) == "1.000"  # type: ignore[union-attr]
    rep = _invoke("report", "--run", str(out), "--out", str(tmp_path / "r.html"))
    assert rep.exit_code == 0, rep.output
    assert (tmp_path / "r.html").read_text().count('class="pole"') == 8


def test_scenario_list_names_the_bundled_scenarios() -> None:
    res = _invoke("scenario", "--list")
    assert res.exit_code == 0
    for name in ("city-week", "hostile-night", "safety-drill", "sensor-faults"):
        assert name in res.output


def test_scenario_bad_arguments() -> None:
    for args in (["scenario"], ["scenario", "no-such-scenario"], ["scenario", "safety-drill", "--until", "soon"],
                 ["scenario", "safety-drill", "--broker", "rabbit"]):
        res = _invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output


def test_score_a_hand_built_store_with_known_answers(tmp_path: Path) -> None:
    db, labels, _ = build_known_store(tmp_path)
    res = _invoke("score", "--labels", str(labels), "--store", f"sqlite:{db}")
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == (
        "faults: precision=0.500 recall=0.500 latency_p50_samples=3.0 false_per_1000_pole_days=8000.00")
    assert "leakage" in res.output and "flood" in res.output


def test_score_and_report_bad_arguments(tmp_path: Path) -> None:
    db, labels, _ = build_known_store(tmp_path)
    bad_labels = tmp_path / "bad.csv"
    bad_labels.write_text("what,is,this\n")
    for args in (["score", "--labels", str(labels)],
                 ["score", "--labels", str(tmp_path / "nope.csv"), "--store", f"sqlite:{db}"],
                 ["score", "--labels", str(bad_labels), "--store", f"sqlite:{db}"],
                 ["score", "--labels", str(labels), "--store", "redis:x"],
                 ["score", "--labels", str(labels), "--store", f"sqlite:{tmp_path / 'missing.sqlite'}"],
                 ["score", "--labels", str(labels), "--influx-url", "http://127.0.0.1:9"],
                 ["report", "--out", str(tmp_path / "x.html")],
                 ["report", "--run", str(tmp_path / "nothing-here")],
                 ["report", "--run", str(tmp_path), "--out", str(tmp_path / "no" / "dir" / "r.html")]):
        res = _invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 3, (args, res.output)


def test_report_from_store_and_labels(tmp_path: Path) -> None:
    db, labels, _ = build_known_store(tmp_path)
    out = tmp_path / "report.html"
    res = _invoke("report", "--store", f"sqlite:{db}", "--labels", str(labels), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert re.search(r"report: out=\S+ bytes=\d+ labels=3", res.output)
    text = out.read_text()
    assert text.startswith("<!doctype html>") and text.count('class="timeline"') == 2
    assert "No pole positions" in text  # without run.json there is no map, and it says so


@pytest.mark.parametrize("name", ["hostile-night", "safety-drill"])
def test_bundled_scenarios_plan_in_the_past(name: str) -> None:
    import time

    from simulator.run import plan_city

    now = int(time.time() * 1000)
    plan = plan_city(poles=1, seed=0, step_ms=1, fault_rate=0, sim_span_ms=None, now_ms=now, scenario=name)
    from simulator.scenario import load_scenario

    original = load_scenario(name)
    assert plan.end_ms is not None and plan.end_ms <= now < plan.end_ms + 7 * 86_400_000
    assert (plan.start_ms - original.start_ms) % (7 * 86_400_000) == 0  # weekday and time of day kept
    shift = plan.start_ms - original.start_ms
    assert [f.start_ms - shift for f in plan.faults] == [f.start_ms for f in original.faults]
