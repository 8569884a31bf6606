"""Averaged rules (WHO 24-hour guidelines): the rule judges a per-pole time-weighted running mean."""

from __future__ import annotations

import math

import pytest

from contract.catalog import BY_NAME, Threshold
from gateway.detect.rules import RuleParams, derive_rules
from tests.gateway.detect.test_rules import Pole

HOUR_MS = 3_600_000
AVERAGED = [(r.spec.metric or "", r.spec.key, i) for r in derive_rules() if r.mean_over_s is not None
            for i in range(len(r.spec.tiers))]
COVER_SAMPLES = math.ceil(-math.log(1 - RuleParams().mean_cover) * 24)  # hourly samples to cover a day


def _rule(key: str):  # type: ignore[no-untyped-def]
    return {r.spec.key: r for r in derive_rules()}[key]


def test_the_who_guidelines_are_24_hour_means() -> None:
    for name, value in (("pm25_ugm3", 15.0), ("pm10_ugm3", 45.0), ("no2_ugm3", 25.0)):
        t = next(t for t in BY_NAME[name].thresholds if t.value == value)
        assert t.mean_over_s == 86_400.0 and t.severity == "info"
    assert {k for _, k, _ in AVERAGED} == {"pm25_high", "pm10_high", "no2_high"}
    assert all(t.mean_over_s is None for m in ("leakage_current_ma", "tilt_deg") for t in BY_NAME[m].thresholds)
    with pytest.raises(ValueError, match="mean_over_s"):
        Threshold("x", ">=", 1.0, "info", 0.5, "x", mean_over_s=0.0)


@pytest.mark.parametrize(("metric", "key", "tier"), AVERAGED)
def test_averaged_threshold_boundary_and_hysteresis(metric: str, key: str, tier: int) -> None:
    rule = _rule(key)
    v, c = rule.trig_at[tier], rule.clear_at[tier]
    level = tier + 1
    n = COVER_SAMPLES + rule.spec.raise_n + 1

    below = Pole(dt_ms=HOUR_MS)  # a day just under the level: the mean is just under it
    below.feed(n, **{metric: v - 0.01})
    assert below.level(key) < level

    at = Pole(dt_ms=HOUR_MS)
    at.feed(n, **{metric: v})
    assert at.level(key) == level
    assert at.stage.rules.running_mean(at.pole, metric) == pytest.approx(v)

    # hysteresis on the mean: readings between clear and trigger keep it; once the *mean* is at or
    # under the clear level for clear_n samples it clears, exactly once
    at.feed(3 * 24, **{metric: (v + c) / 2})
    assert at.level(key) == level
    low = c - 0.5 * (v - c)
    cleared_after = None
    for k in range(24 * 10):
        changes = at.feed(1, **{metric: low})
        mean = at.stage.rules.running_mean(at.pole, metric)
        assert mean is not None
        if changes:
            assert [a["state"] for a in changes] in (["cleared"], ["raised"])  # raised = de-escalated
            cleared_after = k
            break
        assert at.level(key) == level
    assert cleared_after is not None
    assert at.stage.rules.running_mean(at.pole, metric) <= c


def test_no_averaged_alarm_before_the_mean_covers_the_period() -> None:
    p = Pole(dt_ms=HOUR_MS)
    p.feed(COVER_SAMPLES - 1, pm25_ugm3=500.0)  # far past both tiers, but less than a period of data
    assert p.level("pm25_high") == 0
    p.feed(3, pm25_ugm3=500.0)
    assert p.level("pm25_high") == 2


def test_rush_hour_peaks_over_the_guideline_do_not_alarm() -> None:
    # every day: two rush hours at twice the guideline, the rest of the day clean; daily mean < 15
    p = Pole(dt_ms=5 * 60_000)
    for _day in range(4):
        for step in range(288):
            hour = step / 12
            pm = 30.0 if (7 <= hour < 9 or 16 <= hour < 18) else 8.0
            p.feed(1, pm25_ugm3=pm)
    assert [a for a in p.alerts if a["key"] == "pm25_high"] == []
    mean = p.stage.rules.running_mean(p.pole, "pm25_ugm3")
    assert mean is not None and 8.0 < mean < 15.0


def test_a_polluted_day_alarms_and_the_mean_survives_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.detection import DetectionStage

    now = [1_700_000_000.0]
    path = str(tmp_path / "state.json")
    stage = DetectionStage(clock=lambda: now[0], spatial=None, stream=False, state_path=path)
    p = Pole(stage=stage, dt_ms=HOUR_MS)
    p.now = now
    p.feed(COVER_SAMPLES + 3, pm25_ugm3=40.0)
    assert p.level("pm25_high") == 1
    mean = stage.rules.running_mean("p-1", "pm25_ugm3")
    stage.close()
    again = DetectionStage(clock=lambda: now[0], spatial=None, stream=False, state_path=path)
    assert again.rules.running_mean("p-1", "pm25_ugm3") == pytest.approx(mean)
    q = Pole(stage=again, dt_ms=HOUR_MS)
    q.now, q.t, q.seq = now, p.t, p.seq
    q.feed(1, pm25_ugm3=40.0)
    assert q.level("pm25_high") == 1 and [a for a in q.alerts if a["key"] == "pm25_high"] == []
