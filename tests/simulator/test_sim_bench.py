from __future__ import annotations

from bench.bench_sim import run


def test_bench_runs_small() -> None:
    r = run(poles=30, ticks=2)
    # what was measured, never how fast: one message per pole per tick on the fast path, a fifth of
    # the fleet per baseline tick, and every checked fast-path message valid under the contract
    assert r["messages"] == 30 * 2
    assert r["baseline_messages"] == 30 // 5
    assert r["invalid"] == 0
