"""Layer 3: a pole against its district peers, and the district against its own baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.catalog import NAMES
from contract.readings import Reading
from gateway.detect.spatial import DISTRICT_POLE, SPATIAL_METRICS, SpatialParams, group_median
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000
MIN = 60_000
SPATIAL = ("sensor_suspect", "district_event", "sensor_drift")


class Fleet:
    """Two districts of 21 poles each, one PM2.5 / temperature sample per pole per minute."""

    def __init__(self, params: SpatialParams = SpatialParams(), seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.now = [T0 / 1000]
        self.stage = DetectionStage(clock=lambda: self.now[0], spatial=params, stream=False)
        self.t = T0
        self.alerts: list[dict[str, Any]] = []

    def minute(self, pm25: dict[str, float] | None = None, district_pm25: dict[str, float] | None = None,
               poles: int = 21) -> list[dict[str, Any]]:
        self.t += MIN
        self.now[0] += 60
        readings = []
        for d in ("north", "south"):
            base = (district_pm25 or {}).get(d, 9.0)
            for i in range(poles):
                pole = f"{d[0]}-{i:02d}"
                v = (pm25 or {}).get(pole, base + self.rng.normal(0, 1.0))
                readings.append(Reading(pole, d, "b", self.t // MIN, self.t,
                                        {"pm25_ugm3": max(v, 0.0), "ambient_temp_c": 12 + self.rng.normal(0, 0.3)}))
        # only the spatial kinds: the catalog's per-pole pm25_high (info) is layer 1's business
        got = [a for a in alerts_of(self.stage(Outcome(readings=readings))) if a["kind"] in SPATIAL]
        self.alerts += got
        return got


#: sensor_suspect against the district median itself (the default waits 6 h to learn each pole's place)
MEDIAN_ONLY = SpatialParams(suspect_own_place=False)


def test_one_pole_far_from_20_peers_is_a_suspect_sensor_on_that_pole_only() -> None:
    f = Fleet(MEDIAN_ONLY)
    for _ in range(40):
        f.minute()
    assert f.alerts == []
    for _ in range(10):
        f.minute(pm25={"n-07": 80.0})
    raised = [a for a in f.alerts if a["state"] == "raised"]
    assert [(a["kind"], a["pole"], a["key"]) for a in raised] == [
        ("sensor_suspect", "n-07", "sensor_suspect.pm25_ugm3")]
    assert "district median" in raised[0]["explain"] and "(80 ug/m3" in raised[0]["explain"]
    for _ in range(5):
        f.minute()
    assert [a["state"] for a in f.alerts] == ["raised", "cleared"]


#: a short warm-up for tests of the event logic itself (the default learns for a day first)
QUICK = SpatialParams(warmup_ms=20 * MIN, bin_warm_ms=10 * MIN, warmup_evals=10)


def test_a_whole_district_rising_together_is_one_district_event_and_no_suspect() -> None:
    f = Fleet(QUICK)
    for _ in range(40):
        f.minute()
    for _ in range(15):  # the rise must last event_persist_ms
        f.minute(district_pm25={"north": 60.0})
    assert f.alerts == []
    for _ in range(20):
        f.minute(district_pm25={"north": 60.0})
    assert [(a["kind"], a["district"], a["pole"], a["state"]) for a in f.alerts] == [
        ("district_event", "north", DISTRICT_POLE, "raised")]
    (a,) = f.alerts
    assert a["severity"] in ("info", "warning") and a["key"] == "district_event.pm25_ugm3"
    assert not [x for x in f.stage.active() if x.kind == "sensor_suspect"]


def test_no_district_event_during_warm_up() -> None:
    f = Fleet()  # default: the spread is learned for a day before any event
    for _ in range(60):
        f.minute()
    for _ in range(60):
        f.minute(district_pm25={"north": 60.0})
    assert [a for a in f.alerts if a["kind"] == "district_event"] == []


def test_a_daily_periodic_district_signal_raises_nothing_over_several_days() -> None:
    """Rush hours and the daily cycle move every district median; the hourly profile learns them."""
    f = Fleet()
    for k in range(4 * 24 * 12):  # four days, one reading every 5 minutes
        f.t += 4 * MIN
        f.now[0] += 4 * 60
        h = ((f.t + MIN) % 86_400_000) / 3_600_000
        rush = 14.0 * np.exp(-0.5 * ((h - 8.0) / 1.0) ** 2) + 10.0 * np.exp(-0.5 * ((h - 17.5) / 1.2) ** 2)
        f.minute(district_pm25={"north": 9.0 + rush, "south": 9.0 + 0.5 * rush})
        assert f.alerts == [], (k, f.alerts)


def test_a_simulated_pollution_episode_is_one_district_event_and_no_suspect() -> None:
    """The simulator's own district event, after two days of learning: one district_event for the
    district it hit, no per-pole sensor_suspect anywhere."""
    from simulator.city import City, CityConfig
    from simulator.signals import Event, SignalModel

    city = City(CityConfig(seed=5, poles=60, districts=3))
    step = 5 * MIN
    t0 = 1_705_334_400_000
    hit = city.districts[1]
    episode = Event(hit, "pollution_episode", t0 + 2 * 86_400_000, t0 + 2 * 86_400_000 + 8 * 3_600_000, 4.0)
    model = SignalModel(city, 5, [episode])
    stage = DetectionStage(clock=lambda: 0.0, stream=False)
    cols = {m: i for i, m in enumerate(NAMES)}
    alerts = []
    for k in range(int(2.5 * 288)):
        t = t0 + k * step
        v = model.sample(t)
        rs = [Reading(p.pole_id, p.district, "b", k, t,
                      {m: float(v[i, cols[m]]) for m in SPATIAL_METRICS if not np.isnan(v[i, cols[m]])})
              for i, p in enumerate(city.poles)]
        alerts += [a for a in alerts_of(stage(Outcome(readings=rs))) if a["kind"] in SPATIAL]
    raised = [(a["kind"], a["district"], a["metric"]) for a in alerts if a["state"] == "raised"]
    assert not [r for r in raised if r[0] == "sensor_suspect"]
    events = {r for r in raised if r[0] == "district_event"}
    assert events and {d for _, d, _ in events} == {hit}
    assert {m for _, _, m in events} <= {"pm25_ugm3", "pm10_ugm3", "no2_ugm3"}
    per_key = [r for r in raised if r[0] == "district_event" and r[2] == "pm25_ugm3"]
    assert len(per_key) == 1


def test_a_pole_drifting_away_from_its_peers_is_sensor_drift_not_suspect() -> None:
    f = Fleet(SpatialParams(drift_learn_ms=60 * MIN))
    for _ in range(120):
        f.minute()
    assert f.alerts == []
    for k in range(600):  # +0.02 ug/m3 a minute: 12 ug/m3 after ten hours
        f.minute(pm25={"n-07": 9.0 + 0.02 * k + f.rng.normal(0, 1.0)})
    raised = [(a["kind"], a["pole"]) for a in f.alerts if a["state"] == "raised"]
    assert raised and raised[0] == ("sensor_drift", "n-07")
    assert all(p == "n-07" for _, p in raised)


def test_districts_too_small_give_no_spatial_condition() -> None:
    f = Fleet(SpatialParams(min_poles=6))
    for _ in range(5):
        f.minute(pm25={"n-01": 300.0}, poles=5)
    assert f.alerts == []


def test_stale_values_are_not_compared() -> None:
    p = SpatialParams(window_ms=5 * MIN, suspect_own_place=False)
    f = Fleet(p)
    stage = f.stage
    stage(Outcome(readings=[Reading("n-07", "north", "b", 1, f.t, {"pm25_ugm3": 500.0})]))  # then silent
    f.t += 10 * MIN
    for _ in range(6):
        f.t += MIN
        f.now[0] += 60
        rs = [Reading(f"n-{i:02d}", "north", "b", f.t, f.t, {"pm25_ugm3": 9.0 + 0.1 * i})
              for i in range(21) if i != 7]
        f.alerts += [a for a in alerts_of(stage(Outcome(readings=rs))) if a["kind"] in SPATIAL]
    assert f.alerts == []
    # the same outlier while fresh is caught
    for _ in range(3):
        f.t += MIN
        rs = [Reading(f"n-{i:02d}", "north", "b", f.t, f.t, {"pm25_ugm3": 500.0 if i == 7 else 9.0 + 0.1 * i})
              for i in range(21)]
        f.alerts += [a for a in alerts_of(stage(Outcome(readings=rs))) if a["kind"] in SPATIAL]
    assert [(a["pole"], a["kind"]) for a in f.alerts] == [("n-07", "sensor_suspect")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-1e6, 1e6, allow_nan=False)), max_size=60))
def test_group_median_matches_numpy(pairs: list[tuple[int, float]]) -> None:
    g = np.array([p[0] for p in pairs], np.int64)
    x = np.array([p[1] for p in pairs], np.float64)
    med, cnt = group_median(g, x, 5)
    for k in range(5):
        sel = x[g == k]
        assert cnt[k] == len(sel)
        if len(sel):
            assert med[k] == np.median(sel)
        else:
            assert np.isnan(med[k])


def test_a_pole_that_always_stands_apart_is_not_suspect_but_a_jump_from_its_place_is() -> None:
    f = Fleet()
    busy_road = {"n-07": 30.0}  # always three times its peers' PM2.5: its place, not a fault
    for _ in range(7 * 60):  # 7 h: its usual place is learned after 6 h
        f.minute(pm25=busy_road)
    assert [a for a in f.alerts if a["kind"] == "sensor_suspect"] == []
    for _ in range(10):
        f.minute(pm25={"n-07": 400.0})
    assert [(a["pole"], a["state"]) for a in f.alerts if a["kind"] == "sensor_suspect"] == [("n-07", "raised")]
