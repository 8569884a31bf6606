"""lampwatch-gateway commands: detect (offline replay), settings errors, status against a real broker."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.service import Gateway, GatewayConfig
from ingest.sqlite import SqliteStore
from testbed.servers import Mosquitto

runner = CliRunner()


def test_detect_csv_scores_every_row_and_labels_a_spike(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = 20 + rng.normal(0, 0.5, 3000)
    values[2500] = 60.0
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for i, v in enumerate(values):
            w.writerow([f"2024-01-{1 + i // 288:02d} {i % 288 // 12:02d}:{i % 12 * 5:02d}:00", f"{v:.3f}"])
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["detect", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3000 and list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
    assert rows[2500]["label"] == "1"
    assert sum(r["label"] == "1" for r in rows) < 30  # noise is not flagged wholesale


@pytest.mark.parametrize("columns", ["40", "200"])
def test_detect_refuses_bad_input_in_one_line(tmp_path: Path, columns: str) -> None:
    # a long path makes the message longer than any terminal: it must still be one line
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    bad = deep / "bad.csv"
    bad.write_text("timestamp,value\n2024-01-01 00:00:00,not-a-number\n")
    res = runner.invoke(app, ["detect", str(bad)], env={"COLUMNS": columns})
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lampwatch-gateway: error: ") and "not a timestamp,value CSV" in lines[0]
    assert str(bad) in lines[0]
    assert runner.invoke(app, ["detect"]).exit_code == 2


def test_run_refuses_invalid_settings(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_PORT", "99999")
    res = runner.invoke(app, ["run"])
    assert res.exit_code == 2 and "mqtt_port" in res.output


def test_status_shows_a_live_gateway(mosquitto: Mosquitto, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = SqliteStore(tmp_path / "s.sqlite")
    gw = Gateway(GatewayConfig(host=mosquitto.host, port=mosquitto.port, client_id="gw-status",
                               spool_path=str(tmp_path / "spool.sqlite")), store)
    gw.start()
    try:
        monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_PORT", str(mosquitto.port))
        res = runner.invoke(app, ["status", "--wait", "1"])
    finally:
        gw.stop()
        store.close()
    assert res.exit_code == 0, res.output
    assert "gw-status" in res.output and "online" in res.output
