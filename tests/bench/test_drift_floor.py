"""bench.drift_floor: the matched filter's latency on a ramp (the physical floor of drift detection)."""

from __future__ import annotations

import math

from bench.drift_floor import matched_filter_samples


def test_the_median_drift_needs_over_two_hours_even_for_an_ideal_test() -> None:
    slope = 30.0 / (39 * 12)  # 30 noises over 39 h of 5-minute samples
    n = matched_filter_samples(slope, 5.2)  # ~1e-7 false per test
    assert n == 27 and n * 5 > 120
    assert slope * math.sqrt(n * (n + 1) * (2 * n + 1) / 6) >= 5.2 > slope * math.sqrt((n - 1) * n * (2 * n - 1) / 6)


def test_a_steeper_ramp_is_found_sooner() -> None:
    assert matched_filter_samples(1.0, 5.2) < matched_filter_samples(0.1, 5.2) < matched_filter_samples(0.01, 5.2)
