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
    assert res.hostile > 0 and res.replayed > 0
    assert res.lost == 0, res.line()
    from ingest.sqlite import SqliteStore

    # three independent accounts must agree: what the publisher sent, what the gateway counted, what
    # the store holds (the summary line's lost=0 is only their difference)
    store = SqliteStore(tmp_path / "lampwatch.sqlite", readonly=True)
    try:
        assert store.count("telemetry") == res.published - res.hostile  # every valid sample, once
        assert res.rejected == res.hostile  # every hostile message refused, none stored
        assert len(store.select("rejects")) >= res.hostile  # and each refusal left a reject point
        assert res.duplicates == res.replayed  # every replay seen and dropped
    finally:
        store.close()
