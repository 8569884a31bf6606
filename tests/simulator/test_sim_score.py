"""score() against a hand-built ground truth whose answers are worked out in the comments."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.faults import Label
from simulator.score import Alarm, compatible, pole_days, score

S = 10_000  # step_ms: latencies below are in multiples of it
LABELS = [
    Label("p-1", "leakage_current_ma", "leakage", 1_000_000, 2_000_000),
    Label("p-2", "leakage_current_ma", "leakage", 1_000_000, 2_000_000),
    Label("p-3", "leakage_current_ma", "leakage", 5_000_000, 6_000_000),
    Label("p-4", "leakage_current_ma", "leakage", 1_000_000, 2_000_000),  # never detected
    Label("p-1", "tilt_deg", "knockdown", 3_000_000, 4_000_000),
    Label("p-5", "ambient_temp_c", "stuck", 0, 1_000_000),
]
ALARMS = [
    Alarm("p-1", "leakage_current_ma", "leakage", 1_020_000, 1_500_000),  # latency 2 samples
    Alarm("p-1", "leakage_current_ma", "leakage", 1_600_000, 1_700_000),  # flapping: still a TP
    Alarm("p-2", "leakage_current_ma", "leakage", 1_060_000, None),       # latency 6 samples
    Alarm("p-3", "leakage_current_ma", "leakage", 6_050_000, None),       # after end, inside grace: 105 s
    Alarm("p-4", "leakage_current_ma", "leakage", 2_070_000, None),       # 70 s after end > grace 60 s: FP
    Alarm("p-6", "leakage_current_ma", "leakage", 100, None),             # no label on p-6: FP
    Alarm("p-1", "tilt_deg", "tilt", 3_000_000, None),                    # knockdown via 'tilt': latency 0
    Alarm("p-5", "humidity_pct", "anomaly", 10_000, None),                # wrong metric: FP
    Alarm("p-5", "ambient_temp_c", "anomaly", 30_000, None),              # stuck found: latency 3 samples
    Alarm("p-1", "leakage_current_ma", "voltage_low", 1_100_000, None),   # incompatible kind: FP
]


@pytest.fixture
def result():  # type: ignore[no-untyped-def]
    return score(LABELS, ALARMS, step_ms=S, pole_days=20.0, grace_ms=60_000)


def test_leakage_row(result) -> None:  # type: ignore[no-untyped-def]
    r = result.per_kind["leakage"]
    assert (r.labels, r.detected) == (4, 3)
    assert r.recall == 0.75
    # TP: the two p-1 alarms, p-2, p-3; FP compatible with leakage: p-4 late, p-6 (not the anomaly on
    # humidity: 'anomaly' is compatible with leakage too) -> fp = 3
    assert (r.tp, r.fp) == (4, 3)
    assert r.precision == pytest.approx(4 / 7)
    # latencies: 20 s, 60 s, 1,050 s -> median 60 s; p95 nearest rank ceil(2.85)=3rd -> 1,050 s
    assert r.latency_median_ms == 60_000 and r.latency_p95_ms == 1_050_000
    assert r.latency_median_samples == 6 and r.latency_p95_samples == 105
    assert r.false_alarms_per_1000_pole_days == pytest.approx(3 / 20 * 1000)


def test_knockdown_and_stuck_rows(result) -> None:  # type: ignore[no-untyped-def]
    k = result.per_kind["knockdown"]
    assert (k.labels, k.detected, k.tp, k.fp, k.recall) == (1, 1, 1, 1, 1.0)  # fp: unmatched anomaly
    assert k.latency_median_ms == 0 and k.latency_p95_samples == 0
    s = result.per_kind["stuck"]
    assert (s.labels, s.detected, s.tp, s.fp) == (1, 1, 1, 1)
    # the 10 s anomaly is on humidity (wrong metric), so the stuck label is found at 30 s = 3 samples
    assert s.latency_median_ms == 30_000 and s.latency_median_samples == 3 and s.precision == 0.5


def test_overall_row_and_unmatched(result) -> None:  # type: ignore[no-untyped-def]
    o = result.overall
    assert (o.labels, o.detected) == (6, 5)
    assert (o.tp, o.fp) == (6, 4)
    assert o.precision == 0.6 and o.recall == pytest.approx(5 / 6)
    assert o.false_alarms_per_1000_pole_days == pytest.approx(4 / 20 * 1000)
    assert {(a.pole, a.kind) for a in result.unmatched} == {
        ("p-4", "leakage"), ("p-6", "leakage"), ("p-5", "anomaly"), ("p-1", "voltage_low")}
    assert result.summary_line().startswith("faults: precision=0.600 recall=0.833")


def test_voltage_row_has_only_false_alarms(result) -> None:  # type: ignore[no-untyped-def]
    v = result.per_kind["voltage_sag"]  # the unmatched voltage_low and the unmatched anomaly
    assert (v.labels, v.tp, v.fp) == (0, 0, 2) and v.precision == 0.0 and math.isnan(v.recall)
    assert math.isnan(v.latency_median_ms)


def test_alarm_counts_once_for_the_earliest_label() -> None:
    labels = [Label("p-1", None, "leakage", 0, 100_000), Label("p-1", None, "leakage", 50_000, 200_000)]
    r = score(labels, [Alarm("p-1", None, "leakage", 60_000, None)], step_ms=S, pole_days=1.0)
    assert r.overall.tp == 1 and r.overall.detected == 1 and r.overall.fp == 0


def test_default_grace_is_six_steps() -> None:
    lb = [Label("p-1", None, "flood", 0, 100_000)]
    assert score(lb, [Alarm("p-1", None, "flood", 160_000)], step_ms=S, pole_days=1).overall.tp == 1
    assert score(lb, [Alarm("p-1", None, "flood", 160_001)], step_ms=S, pole_days=1).overall.fp == 1


def test_no_alarms_no_labels() -> None:
    r = score([], [], step_ms=S, pole_days=1.0)
    assert r.per_kind == {} and r.overall.tp == 0 and math.isnan(r.overall.precision)
    with pytest.raises(ValueError):
        score([], [], step_ms=0, pole_days=1.0)


def test_compatibility_and_pole_days() -> None:
    lb = Label("p-1", "tilt_deg", "tilt_lean", 0, 1)
    assert compatible(lb, Alarm("p-1", None, "tilt", 0))
    assert not compatible(lb, Alarm("p-2", "tilt_deg", "tilt", 0))
    assert not compatible(lb, Alarm("p-1", "tilt_deg", "flood", 0))
    assert pole_days(100, 0, 2 * 86_400_000) == 200.0


def test_a_tilt_trend_finds_a_tilt_sensor_drift_and_nothing_else() -> None:
    """One inclinometer cannot tell its own drift from a lean: ``tilt_trend`` finds a tilt drift."""
    drift = Label("p-1", "tilt_deg", "drift", 0, 1)
    assert compatible(drift, Alarm("p-1", "tilt_deg", "tilt_trend", 0))
    assert not compatible(Label("p-1", "humidity_pct", "drift", 0, 1), Alarm("p-1", "tilt_deg", "tilt_trend", 0))
    assert not compatible(Label("p-1", "tilt_deg", "stuck", 0, 1), Alarm("p-1", "tilt_deg", "tilt_trend", 0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["p-1", "p-2"]), st.integers(0, 10**6), st.integers(1, 10**5)),
                max_size=8),
       st.lists(st.tuples(st.sampled_from(["p-1", "p-2", "p-3"]), st.integers(0, 2 * 10**6)), max_size=12))
def test_counts_are_consistent(lbs: list[tuple[str, int, int]], als: list[tuple[str, int]]) -> None:
    labels = [Label(p, None, "leakage", s, s + d) for p, s, d in lbs]
    alarms = [Alarm(p, None, "leakage", t) for p, t in als]
    r = score(labels, alarms, step_ms=S, pole_days=3.0)
    assert r.overall.tp + r.overall.fp == len(alarms)
    assert r.overall.detected <= min(len(labels), r.overall.tp)
    if labels:
        assert 0.0 <= r.overall.recall <= 1.0
        assert r.per_kind["leakage"].labels == len(labels)


def test_the_end_of_a_run_is_not_an_offline_event() -> None:
    alarms = [Alarm("p-1", None, "offline", 1_000_000), Alarm("p-2", None, "offline", 500_000)]
    r = score([], alarms, step_ms=S, pole_days=1.0, end_ms=900_000)
    assert [a.pole for a in r.unmatched] == ["p-2"]  # only the one raised while the run was on
    assert score([], alarms, step_ms=S, pole_days=1.0).overall.fp == 2


def test_latency_in_device_minutes() -> None:
    lb = [Label("p-1", None, "flood", 0, 10_000_000)]
    r = score(lb, [Alarm("p-1", None, "flood", 1_800_000)], step_ms=300_000, pole_days=1.0)
    k = r.per_kind["flood"]
    assert k.latency_median_min == 30.0 and k.latency_median_samples == 6.0


def test_honest_judge_counts_side_effects_as_false_unless_they_name_the_sensor() -> None:
    from bench.eval import judge
    from simulator.faults import Fault

    faults = [Fault.make("knockdown", "p-1", 0, 3_000_000), Fault.make("dropout", "p-2", 0, 3_000_000)]
    alarms = [
        Alarm("p-1", "tilt_deg", "tilt", 0),                 # the fault: found
        Alarm("p-1", "vibration_g", "anomaly", 0),          # the impact on another sensor: false
        Alarm("p-1", "tilt_deg", "sensor_stuck", 60_000),   # names the fault's sensor: explained
        Alarm("p-2", None, "offline", 900_000),             # messages lost: a labelled dropout explains it
        Alarm("p-2", None, "lamp_failure", 900_000),        # nothing explains it: false
        Alarm("p-3", "pm25_ugm3", "pm25_high", 0),          # a statement about the air
    ]
    sc, explained, env, false, labels = judge(alarms, faults, step_ms=S, pole_days=1.0, end_ms=10**9)
    assert [lb.kind for lb in labels] == ["knockdown"] and sc.overall.detected == 1
    assert {(a.pole, a.kind) for a in false} == {("p-1", "anomaly"), ("p-2", "lamp_failure")}
    assert {(a.pole, a.kind) for a in explained} == {("p-1", "sensor_stuck"), ("p-2", "offline")}
    assert [a.kind for a in env] == ["pm25_high"]
