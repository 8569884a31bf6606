"""Smoke test of ``bench.bench_gateway``: real Mosquitto + InfluxDB, one low rate, a few seconds.

Asserts the shape of the result and that the gateway lost nothing at that rate; never a speed.
"""

from __future__ import annotations

import pytest

from bench import bench_gateway as bg
from tests.servers import need

KEYS = {"gateway_msgs_s", "gateway_mode", "raw_msgs_s", "naive_msgs_s", "ratio_raw", "ratio_naive", "p99_ms",
        "p50_ms", "lost", "sim_msgs_s", "agents", "systems"}


@pytest.fixture(autouse=True)
def _servers() -> None:
    need("mosquitto", "influxd")


def test_bench_gateway_tiny() -> None:
    # steady state: a city of 200 msg/s x 2 s = 400 poles reports once (unmeasured), then 400 messages
    spec = bg.Spec(poles=1_000, hold_s=2.0, settle_s=5.0, drain_s=10.0, ladder=(200,), max_trials=1,
                   start={s: 200 for s in bg.SYSTEMS}, systems=("raw", "naive", "gateway-1"), sim_s=0.0,
                   agents=(), quiet=True, report_s=2.0)
    r = bg.run(spec)
    assert KEYS <= set(r)
    assert set(r["systems"]) == {"raw", "naive", "gateway-1"}
    gw = r["systems"]["gateway-1"]["trials"]
    assert len(gw) == 1 and gw[0]["published"] == 400 and gw[0]["poles"] == 400
    assert gw[0]["lost"] == 0 and r["lost"] == 0
    # the measured count excludes the first interval: the store holds 800 points, the trial counts 400
    assert gw[0]["stored_final"] == gw[0]["published"]
    assert gw[0]["first_held"] is not None and gw[0]["first_cpu_us"]["consumer"] > 0
    for name in ("raw", "naive"):
        t = r["systems"][name]["trials"][0]
        assert t["published"] == 400 and t["lost"] == 0
    raw = r["systems"]["raw"]["trials"][0]
    assert raw["first_held"] is None and raw["poles"] == 1_000  # raw keeps no state: no first interval
    # the probes are the measured phase's (seq 1), and each was seen
    assert gw[0]["probes"] == 2 and gw[0]["probes_seen"] == 2
    lines = bg.lines(r)
    assert lines[-1].startswith("bench: gateway_msgs_s=") and "lost=0" in lines[-1]
    assert lines[0].startswith("sim: msgs_s=")


def test_bench_edge_runs_the_real_agent_on_its_config() -> None:
    """bench_edge writes its own pole.toml: a renamed setting made the agent exit at once and the bench
    fail (found by make bench, not by a test). footprint() raises if the agent is not running."""
    from bench.bench_edge import footprint

    res = footprint(warmup_s=2.0, window_s=1.0)
    assert set(res) == {"rss_mb", "cpu_pct", "uss_mb"}
    assert res["rss_mb"] >= res["uss_mb"] > 0  # measured from a live process
