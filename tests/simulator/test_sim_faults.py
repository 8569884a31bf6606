from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.catalog import METRICS
from simulator.city import City
from simulator.faults import (
    DEAD_VALUE,
    DELIVERY_KINDS,
    KINDS,
    SENSOR_FAULT_METRICS,
    SIGNAL_KINDS,
    Fault,
    FaultSet,
    Label,
    labels_csv,
    parse_labels,
    random_faults,
    read_labels,
    write_labels,
)
from simulator.signals import SignalModel, sun_elevation_deg
from tests.simulator.sim_helpers import HOUR, MIN, T0, col

STEP = 2 * MIN
SPAN = (T0, T0 + 24 * HOUR)
# one fault of each signal kind, each on its own full-kit pole (T0 is midnight UTC: dark until ~08:00)
FAULTS = [
    Fault.make("leakage", "p-000000", T0 + 10 * HOUR, T0 + 14 * HOUR, magnitude=50),
    Fault.make("tilt_lean", "p-000001", T0 + 6 * HOUR, T0 + 18 * HOUR),
    Fault.make("knockdown", "p-000002", T0 + 9 * HOUR + 30 * MIN, T0 + 15 * HOUR, magnitude=40),
    Fault.make("flood", "p-000004", T0 + 10 * HOUR, T0 + 16 * HOUR),
    Fault.make("overheat", "p-000005", T0 + 12 * HOUR, T0 + 15 * HOUR),
    Fault.make("smoke", "p-000005", T0 + 14 * HOUR, T0 + 15 * HOUR),
    Fault.make("door_forced", "p-000006", T0 + 2 * HOUR, T0 + 2 * HOUR + 40 * MIN),
    Fault.make("lamp_failure", "p-000007", T0 + 1 * HOUR, T0 + 5 * HOUR),
    Fault.make("flicker", "p-000009", T0 + 1 * HOUR, T0 + 4 * HOUR, magnitude=0.5),
    Fault.make("voltage_sag", "p-000011", T0 + 10 * HOUR, T0 + 11 * HOUR),
    Fault.make("voltage_surge", "p-000012", T0 + 13 * HOUR, T0 + 14 * HOUR),
    Fault.make("backhaul_down", "p-000013", T0 + 3 * HOUR, T0 + 6 * HOUR),
    Fault.make("stuck", "p-000015", T0 + 6 * HOUR, T0 + 12 * HOUR, metric="ambient_temp_c"),
    Fault.make("drift", "p-000016", T0 + 4 * HOUR, T0 + 20 * HOUR, metric="humidity_pct", magnitude=-25),
    Fault.make("sensor_dropout", "p-000017", T0 + 5 * HOUR, T0 + 7 * HOUR, metric="tilt_deg"),
]


@pytest.fixture(scope="module")
def series(city: City, model: SignalModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, clean series, faulted series): shape (n_times, n_poles, n_metrics)."""
    ts = np.arange(*SPAN, STEP)
    fs = FaultSet(FAULTS, city)
    return ts, model.series(SPAN[0], STEP, len(ts)), model.series(SPAN[0], STEP, len(ts), fs)


def _window(ts: np.ndarray, f: Fault) -> np.ndarray:
    return (ts >= f.start_ms) & (ts < f.end_ms)


def _get(series: tuple[np.ndarray, np.ndarray, np.ndarray], kind: str) -> tuple[Fault, np.ndarray,
                                                                                  np.ndarray, np.ndarray]:
    f = next(f for f in FAULTS if f.kind == kind)
    ts, _, faulted = series
    i = int(f.pole[2:])
    return f, _window(ts, f), faulted[:, i, :], series[1][:, i, :]


def test_every_signal_kind_is_covered() -> None:
    assert {f.kind for f in FAULTS} == set(SIGNAL_KINDS)


def test_only_faulty_poles_change_and_values_stay_in_range(city: City, series: tuple) -> None:
    _, clean, faulted = series
    touched = sorted({int(f.pole[2:]) for f in FAULTS})
    others = [i for i in range(len(city)) if i not in touched]
    assert np.array_equal(clean[:, others], faulted[:, others], equal_nan=True)
    dead = next(f for f in FAULTS if f.kind == "sensor_dropout")  # its driver's error value: out of range
    ts = series[0]
    x = faulted[:, int(dead.pole[2:]), col(str(dead.metric))]
    assert np.all(x[_window(ts, dead)] == DEAD_VALUE[str(dead.metric)])
    faulted = faulted.copy()
    faulted[_window(ts, dead), int(dead.pole[2:]), col(str(dead.metric))] = clean[
        _window(ts, dead), int(dead.pole[2:]), col(str(dead.metric))]
    for j, m in enumerate(METRICS):
        x = faulted[:, :, j][:, city.has[:, j]]
        assert np.all((x >= m.lo) & (x <= m.hi)), m.name


@pytest.mark.parametrize(("kind", "metric", "inside", "outside"), [
    ("leakage", "leakage_current_ma", 30.0, 15.0),  # crosses the 30 mA RCD level, never the warning outside
    ("flood", "water_level_cm", 15.0, 3.0),
    ("overheat", "cabinet_temp_c", 75.0, 60.0),
])
def test_safety_faults_cross_their_critical_threshold_only_inside(series: tuple, kind: str, metric: str,
                                                                  inside: float, outside: float) -> None:
    _, w, v, _ = _get(series, kind)
    x = v[:, col(metric)]
    assert x[w].max() >= inside
    assert x[~w].max() < outside
    first = int(np.argmax(x >= inside))
    assert w[first]


def test_tilt_lean_and_knockdown(city: City, series: tuple) -> None:
    f, w, v, _ = _get(series, "tilt_lean")
    base = city.pole(f.pole).tilt_baseline_deg
    lean = v[:, col("tilt_deg")] - base
    assert lean[~w].max() < 1.0 and lean[w].max() >= 5.0
    assert np.all(np.diff(lean[w][::30]) > 0)  # a slow, steady lean
    f, w, v, _ = _get(series, "knockdown")
    tilt = v[:, col("tilt_deg")]
    k = int(np.argmax(w))
    assert tilt[k] - tilt[k - 1] > 30.0  # a jump, not a lean
    assert tilt[w].min() > 30.0 and tilt[~w].max() < 2.0
    assert v[k, col("vibration_g")] > 1.0


@pytest.mark.parametrize(("kind", "metric", "value", "normal"), [
    ("smoke", "smoke", 1.0, 0.0), ("door_forced", "door_open", 1.0, 0.0),
    ("backhaul_down", "backhaul_up", 0.0, 1.0),
])
def test_switch_faults(series: tuple, kind: str, metric: str, value: float, normal: float) -> None:
    _, w, v, _ = _get(series, kind)
    assert np.all(v[w, col(metric)] == value) and np.all(v[~w, col(metric)] == normal)


def test_lamp_failure_only_while_it_should_be_lit(city: City, series: tuple) -> None:
    f, w, v, clean = _get(series, "lamp_failure")
    rated = city.pole(f.pole).rated_power_w
    lit = clean[:, col("dimming_pct")] > 0
    power = v[:, col("lamp_power_w")]
    assert (w & lit).sum() > 50
    assert np.all(power[w & lit] < 0.8 * rated * v[w & lit, col("dimming_pct")] / 100)
    assert np.all(power[~w & lit] >= 0.8 * rated * v[~w & lit, col("dimming_pct")] / 100)
    assert np.array_equal(v[:, col("dimming_pct")], clean[:, col("dimming_pct")])  # still commanded on


def test_flicker_drops_some_lit_samples(city: City, series: tuple) -> None:
    f, w, v, clean = _get(series, "flicker")
    rated = city.pole(f.pole).rated_power_w
    lit = clean[:, col("dimming_pct")] > 0
    dark = v[:, col("lamp_power_w")] < 0.1 * rated
    assert 0.25 < dark[w & lit].mean() < 0.75
    assert not dark[~w & lit].any()


def test_voltage_sag_and_surge_cross_15_percent(city: City, series: tuple) -> None:
    f, w, v, _ = _get(series, "voltage_sag")
    u = v[:, col("supply_voltage_v")] / city.pole(f.pole).nominal_voltage_v
    assert np.all(u[w] <= 0.85) and np.all(u[~w] > 0.95)
    f, w, v, _ = _get(series, "voltage_surge")
    u = v[:, col("supply_voltage_v")] / city.pole(f.pole).nominal_voltage_v
    assert np.all(u[w] >= 1.15) and np.all(u[~w] < 1.05)


def test_stuck_sensor_has_zero_variance_in_its_window(series: tuple) -> None:
    _, w, v, clean = _get(series, "stuck")
    x = v[:, col("ambient_temp_c")]
    assert np.ptp(x[w]) == 0.0  # one value repeated: zero variance
    assert np.var(clean[w, col("ambient_temp_c")]) > 0.0
    assert np.array_equal(x[~w], clean[~w, col("ambient_temp_c")])


def test_drift_grows_linearly_to_its_magnitude(series: tuple) -> None:
    _, w, v, clean = _get(series, "drift")
    d = v[w, col("humidity_pct")] - clean[w, col("humidity_pct")]
    lo_clip = clean[w, col("humidity_pct")] - 25 < 0
    assert not lo_clip.any()
    assert abs(d[0]) < 0.5 and -25.5 < d[-1] < -23.0
    assert np.all(np.diff(d) < 0.2)
    assert np.array_equal(v[~w, col("humidity_pct")], clean[~w, col("humidity_pct")])


# --- the random mix -------------------------------------------------------------------------
def test_random_faults_deterministic_sorted_and_non_overlapping(city: City) -> None:
    a = random_faults(city, 5, *SPAN, rate=3.0)
    assert a == random_faults(city, 5, *SPAN, rate=3.0)
    assert labels_csv(a) == labels_csv(random_faults(city, 5, *SPAN, rate=3.0))
    assert labels_csv(a) != labels_csv(random_faults(city, 6, *SPAN, rate=3.0))
    assert a == sorted(a, key=lambda f: (f.start_ms, f.pole, f.kind, f.metric or ""))
    per_pole: dict[str, list[Fault]] = {}
    for f in a:
        assert SPAN[0] <= f.start_ms < f.end_ms <= SPAN[1]
        assert f.metric is None or city.pole(f.pole).has(f.metric)
        per_pole.setdefault(f.pole, []).append(f)
    for fs in per_pole.values():
        for x, y in itertools.pairwise(fs):
            if y.kind == "smoke" and x.kind == "overheat":
                continue  # smoke follows its overheat by design
            assert x.end_ms <= y.start_ms or (x.kind == "overheat" and y.kind == "smoke")


def test_random_faults_cover_every_kind_and_night_kinds_start_dark(city: City) -> None:
    faults = random_faults(city, 1, T0, T0 + 10 * 24 * HOUR, rate=3.0)
    assert {f.kind for f in faults} == set(KINDS)
    for f in faults:
        if f.kind in ("door_forced", "lamp_failure", "flicker"):
            p = city.pole(f.pole)
            assert float(sun_elevation_deg(f.start_ms, p.lat, p.lon)) < -6.0
        if f.kind in ("stuck", "drift"):
            assert f.metric in SENSOR_FAULT_METRICS
        if f.kind in DELIVERY_KINDS:
            assert f.metric is None


def test_random_faults_rate_and_kind_filter(city: City) -> None:
    few = random_faults(city, 2, T0, T0 + 5 * 24 * HOUR, rate=0.1, kinds=["leakage", "stuck"])
    assert {f.kind for f in few} <= {"leakage", "stuck"}
    assert random_faults(city, 2, *SPAN, rate=0.0) == []
    with pytest.raises(ValueError):
        random_faults(city, 2, *SPAN, kinds=["meteor"])


def test_random_faults_show_in_the_signals(city: City, model: SignalModel) -> None:
    """Every leakage the random mix makes reaches its drawn size (>= 16 mA: past the warning tier)
    inside its label window."""
    faults = random_faults(city, 8, T0, T0 + 2 * 24 * HOUR, rate=3.0, kinds=["leakage"])
    assert faults
    fs = FaultSet(faults, city)
    for f in faults:
        ts = np.arange(f.start_ms, f.end_ms, MIN)
        x = np.array([model.sample(int(t), fs)[int(f.pole[2:]), col("leakage_current_ma")] for t in ts])
        assert x.max() >= min(f.mag - 1.0, 30.0) and x.max() >= 15.0


@pytest.mark.parametrize("bad", [
    dict(pole="p-1", metric=None, kind="nope", start_ms=1, end_ms=2),
    dict(pole="p-1", metric="leakage_current_ma", kind="leakage", start_ms=2, end_ms=2),
    dict(pole="p-1", metric="tilt_deg", kind="leakage", start_ms=1, end_ms=2),
    dict(pole="p-1", metric="smoke", kind="stuck", start_ms=1, end_ms=2),
    dict(pole="p-1", metric="tilt_deg", kind="dropout", start_ms=1, end_ms=2),
    dict(pole="p-1", metric=None, kind="drift", start_ms=1, end_ms=2),
])
def test_fault_validates_on_construction(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(**bad)  # type: ignore[arg-type]


def test_faultset_refuses_a_missing_sensor(city: City) -> None:
    no_radio = next(p for p in city.poles if not p.has("backhaul_up"))
    with pytest.raises(ValueError, match="no backhaul_up"):
        FaultSet([Fault.make("backhaul_down", no_radio.pole_id, T0, T0 + HOUR)], city)


# --- labels CSV -----------------------------------------------------------------------------
def test_labels_file_round_trip_and_bytes(tmp_path: Path, city: City) -> None:
    faults = random_faults(city, 3, *SPAN, rate=2.0)
    write_labels(tmp_path / "a.csv", faults)
    write_labels(tmp_path / "b.csv", list(reversed(faults)))
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "pole,metric,kind,start_ms,end_ms"
    assert read_labels(tmp_path / "a.csv") == sorted(
        (f.label for f in faults), key=lambda lb: (lb.start_ms, lb.pole, lb.kind, lb.metric or "", lb.end_ms))


_label = st.builds(
    lambda pole, metric, kind, s, d: Label(pole, metric, kind, s, s + d),
    st.from_regex(r"p-[0-9]{6}", fullmatch=True), st.one_of(st.none(), st.sampled_from(SENSOR_FAULT_METRICS)),
    st.sampled_from(KINDS), st.integers(0, 2**53), st.integers(1, 10**9),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(_label, max_size=20))
def test_labels_csv_round_trip_property(labels: list[Label]) -> None:
    text = labels_csv(labels)
    back = parse_labels(text)
    key = lambda lb: (lb.start_ms, lb.pole, lb.kind, lb.metric or "", lb.end_ms)  # noqa: E731
    assert sorted(back, key=key) == sorted(labels, key=key)
    assert labels_csv(back) == text


@pytest.mark.parametrize("text", ["", "a,b\n", "pole,metric,kind,start_ms,end_ms\np-1,,leakage,x,2\n",
                                  "pole,metric,kind,start_ms,end_ms\np-1,,leakage,5,5\n",
                                  "pole,metric,kind,start_ms,end_ms\np-1,leakage\n"])
def test_bad_labels_csv_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_labels(text)


def test_random_fault_sizes_include_just_above_warning_and_below_critical(city: City) -> None:
    from simulator.faults import random_faults

    t0 = 1_705_334_400_000
    kinds = ("leakage", "tilt_lean", "flood", "overheat")
    fs = [f for seed in range(6) for f in random_faults(city, seed, t0, t0 + 3 * 86_400_000, rate=2.0, kinds=kinds)]
    warning = {"leakage": 15.0, "tilt_lean": 2.0, "flood": 5.0, "overheat": 60.0}
    critical = {"leakage": 30.0, "tilt_lean": 5.0, "flood": 15.0, "overheat": 75.0}
    for k in kinds:
        mags = [f.mag for f in fs if f.kind == k]
        assert mags and min(mags) > warning[k]  # every fault still crosses the warning tier
        assert any(m < critical[k] for m in mags)  # and some never reach critical
