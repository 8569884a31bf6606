"""The demo's live view shows what an operator would see: active alarms and notifications sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from simulator.demo import run_demo
from tests.servers import need


def test_demo_view_shows_alarms_and_notifications(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAMPWATCH_GATEWAY_INFLUX_URL", raising=False)
    need("mosquitto", "prometheus-alertmanager")
    with open(tmp_path / "view.txt", "w") as view:
        res = run_demo(poles=50, duration=20, seed=42, broker="mosquitto", workdir=tmp_path,
                       console=Console(file=view, width=120))
    text = (tmp_path / "view.txt").read_text()
    assert res.lost == 0 and res.alerts >= 1, res.line()
    m = re.search(r"active alarms: (\d+) \(worst first\)", text)
    assert m and int(m.group(1)) >= 1
    sent = re.findall(r"notifications to Alertmanager http://127\.0\.0\.1:\d+: sent=(\d+) queued=\d+ dropped=0", text)
    assert sent and int(sent[-1]) >= 1
    assert re.search(r"p-\d+ +│ \w+ +│ (leakage|tilt)\w* +│ critical", text)
