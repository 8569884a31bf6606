"""The gateway drills, in short form, on real Mosquitto + InfluxDB 1.6.7: each must PASS."""

from __future__ import annotations

import re

import pytest

from simulator.drills.gateway_drills import DrillSpec, gateway_kill, hostile_traffic, store_outage
from tests.servers import need

LINE = re.compile(r"drill [a-z-]+: published=\d+ stored=\d+ duplicates=\d+ lost=-?\d+ verdict=(PASS|FAIL)")


@pytest.fixture(autouse=True)
def _servers() -> None:
    need("mosquitto", "influxd")


SHORT = DrillSpec(poles=40, seconds=6, rate_hz=5, settle_s=90)


def _check(res: object) -> None:
    line = res.line()  # type: ignore[attr-defined]
    assert LINE.fullmatch(line), line
    assert res.failed_checks == (), res.failed_checks  # type: ignore[attr-defined]
    assert line.endswith("lost=0 verdict=PASS") and " duplicates=0 " in line, line


def test_gateway_kill_loses_nothing() -> None:
    res = gateway_kill(SHORT, log=lambda _m: None)
    _check(res)
    assert res.published == 40 * 30


def test_store_outage_spools_and_replays() -> None:
    res = store_outage(SHORT, outage_s=4, log=lambda _m: None)
    _check(res)
    assert res.extra["max_spool_points"] > 0


def test_hostile_traffic_is_refused_and_nothing_else_is_lost() -> None:
    res = hostile_traffic(SHORT, log=lambda _m: None)
    _check(res)
    assert res.rejected > 0 and res.extra["replays"] > 0


def test_drill_cli_dispatches_every_drill_and_refuses_unknown_ones() -> None:
    from typer.testing import CliRunner

    from simulator.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["drill", "volcano"])
    assert bad.exit_code == 2 and "unknown drill" in bad.output
    res = runner.invoke(app, ["drill", "edge-offline", "--poles", "1", "--outage-s", "60"])
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]
    assert LINE.fullmatch(line) and line.startswith("drill edge-offline:") and line.endswith("verdict=PASS")
