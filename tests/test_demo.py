"""`make demo` in short form, on both brokers: the summary line is exact and nothing is lost."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from simulator.demo import run_demo
from tests.servers import need


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_demo_loses_nothing_and_counts_from_the_store(broker: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAMPWATCH_GATEWAY_INFLUX_URL", raising=False)
    if broker == "mosquitto":
        need("mosquitto")
    with open(tmp_path / "view.txt", "w") as view:
        res = run_demo(poles=20, duration=4, seed=3, hostile_pct=5, broker=broker, workdir=tmp_path,
                       console=Console(file=view))
    assert re.fullmatch(r"demo: published=\d+ stored=\d+ rejected=\d+ alerts=\d+ lost=-?\d+", res.line())
    assert res.published >= 4 * 20
    assert res.rejected > 0  # hostile payloads were refused, not stored
    assert res.lost == 0, res.line()
    assert res.stored == res.published - res.rejected
    from ingest.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "lampwatch.sqlite")
    assert store.count("telemetry") == res.stored
    assert store.count("rejects") >= res.rejected  # every refusal left a reject point
    assert res.duplicates > 0  # the replays were seen and dropped, not stored twice
    store.close()
