from __future__ import annotations

from bench.bench_sim import run


def test_bench_runs_small() -> None:
    r = run(poles=30, ticks=2)
    assert r["msgs_s"] > 0 and r["pydantic_msgs_s"] > 0  # no timing assertion, just that it runs
