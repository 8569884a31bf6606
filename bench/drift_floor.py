"""How fast can any detector see the simulator's sensor drifts? ``python -m bench.drift_floor``.

A drift fault is a linear ramp of ``m`` sensor noises (``m`` uniform in 20-40, either sign) over its
duration (uniform 6 h - 3 d, clipped to the run), added to the sensor's own white noise. The best
conceivable test - one that knows when the ramp starts, its slope, the sensor's baseline and its noise -
is the matched filter: after ``n`` samples its statistic ``sum_i i r x_i`` has a signal-to-noise ratio
``r sqrt(n (n + 1) (2n + 1) / 6)`` (``r`` = slope in noises per sample). It finds the drift with even odds
once that ratio reaches ``z``, the normal quantile of the false rate allowed per test. Any real detector
(which knows none of those things, and tests every sample) is slower.

Prints, for the catalog's median drift (30 noises over 39 h) and for the drift labels the evaluation
seeds (``bench.eval.EVAL_SEEDS``, 100 poles x 2 days) really draw: how far the drift has moved after
2 h, the ideal latency at a false rate of 1e-7 per test (one- and two-sided), and the share of drifts
that start at the run's first sample (their pole has no clean history to compare with).
"""

from __future__ import annotations

import argparse
import math
from statistics import NormalDist, median

from simulator.faults import SPECS

STEP_MIN = 5.0
HOUR_MS = 3_600_000


def matched_filter_samples(slope: float, z: float) -> int:
    """Samples after the ramp's start until the ideal test's signal-to-noise ratio reaches ``z``."""
    n = 1
    while slope * math.sqrt(n * (n + 1) * (2 * n + 1) / 6.0) < z:
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.drift_floor", description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=1e-7, help="false rate allowed per test")
    ap.add_argument("--seeds", type=int, default=20, help="evaluation seeds (from 101)")
    args = ap.parse_args(argv)
    z1 = NormalDist().inv_cdf(1.0 - args.alpha)
    z2 = NormalDist().inv_cdf(1.0 - args.alpha / 2.0)
    (d_lo, d_hi), (m_lo, m_hi) = SPECS["drift"].duration_ms, SPECS["drift"].magnitude
    dur_h, mag = (d_lo + d_hi) / 2 / HOUR_MS, (m_lo + m_hi) / 2
    slope = mag / (dur_h * 60.0 / STEP_MIN)
    print(f"median drift: {mag:.0f} noise over {dur_h:.0f} h = {slope:.4f} noise/sample; after 2 h it has "
          f"moved {slope * 120 / STEP_MIN:.2f} noise")
    for name, z in (("one-sided", z1), ("two-sided", z2)):
        n = matched_filter_samples(slope, z)
        print(f"ideal test at {args.alpha:g} per test ({name}, z={z:.2f}): {n} samples = {n * STEP_MIN:.0f} min")

    from bench.eval import START_MS
    from contract.catalog import BY_NAME
    from simulator.city import City, CityConfig
    from simulator.faults import random_faults

    end_ms = START_MS + 2 * 86_400_000
    lat1: list[float] = []
    lat2: list[float] = []
    safety: list[float] = []
    first = total = 0
    for seed in range(101, 101 + args.seeds):
        city = City(CityConfig(seed=seed, poles=100))
        for f in random_faults(city, seed, START_MS, end_ms, rate=0.3):
            if f.kind != "drift":
                continue
            total += 1
            first += f.start_ms - START_MS < STEP_MIN * 60_000
            r = abs(f.mag) / BY_NAME[f.metric or ""].signal.noise / ((f.end_ms - f.start_ms) / 60_000 / STEP_MIN)
            lat1.append(matched_filter_samples(r, z1) * STEP_MIN)
            lat2.append(matched_filter_samples(r, z2) * STEP_MIN)
            if BY_NAME[f.metric or ""].safety_channel:
                safety.append(lat2[-1])
    print(f"evaluation drifts ({args.seeds} seeds x 100 poles x 2 days): {total}, {first} ({first / total:.0%}) "
          f"start at the run's first sample; ideal latency p50 {median(lat1):.0f} min one-sided, "
          f"{median(lat2):.0f} min two-sided; under 2 h: {sum(x <= 120 for x in lat2)}/{total}; on the safety "
          f"channels {len(safety)}, ideal p50 {median(safety):.0f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
