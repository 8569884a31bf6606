"""Layer 3: a pole against its district peers, and the district against its own baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.readings import Reading
from gateway.detect.spatial import DISTRICT_POLE, SpatialParams, group_median
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000
MIN = 60_000
SPATIAL = ("sensor_suspect", "district_event")


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


def test_one_pole_far_from_20_peers_is_a_suspect_sensor_on_that_pole_only() -> None:
    f = Fleet()
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


def test_a_whole_district_rising_together_is_one_district_event_and_no_suspect() -> None:
    f = Fleet()
    for _ in range(40):
        f.minute()
    for _ in range(10):
        f.minute(district_pm25={"north": 60.0})
    assert [(a["kind"], a["district"], a["pole"], a["state"]) for a in f.alerts] == [
        ("district_event", "north", DISTRICT_POLE, "raised")]
    (a,) = f.alerts
    assert a["severity"] in ("info", "warning") and a["key"] == "district_event.pm25_ugm3"
    assert not [x for x in f.stage.active() if x.kind == "sensor_suspect"]


def test_no_district_event_during_warm_up() -> None:
    f = Fleet(SpatialParams(warmup_evals=30))
    for _ in range(5):
        f.minute()
    for _ in range(10):
        f.minute(district_pm25={"north": 60.0})
    assert [a for a in f.alerts if a["kind"] == "district_event"] == []


def test_districts_too_small_give_no_spatial_condition() -> None:
    f = Fleet(SpatialParams(min_poles=6))
    for _ in range(5):
        f.minute(pm25={"n-01": 300.0}, poles=5)
    assert f.alerts == []


def test_stale_values_are_not_compared() -> None:
    p = SpatialParams(window_ms=5 * MIN)
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
