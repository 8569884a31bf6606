"""Rollups: pure aggregation, and the whole job against a real InfluxDB 1.6.7 over a simulated day."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract import catalog, schema
from contract.readings import Point
from ingest import rollup
from ingest.influx1 import Influx1Store
from ingest.setup import setup
from testbed.servers import InfluxDB1
from tests.ingest.fakedata import readings

DAY_S = 86_400
MIN_NS = 60 * rollup.NS


def expected(points: list[Point], window_s: int) -> dict[tuple[int, str, str], dict[str, float]]:
    """Reference aggregates, computed from the raw points in plain Python, independently of rollup.py."""
    groups: dict[tuple[int, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        tags = dict(p.tags)
        start = p.ts_ns // (window_s * rollup.NS) * window_s * rollup.NS
        for name, v in p.fields.items():
            if name in catalog.BY_NAME:
                groups[(start, tags["district"], tags["pole"])][name].append(float(v))
    out: dict[tuple[int, str, str], dict[str, float]] = {}
    for key, per_metric in groups.items():
        fields: dict[str, float] = {}
        for name, vs in per_metric.items():
            fields[f"{name}_min"], fields[f"{name}_max"] = min(vs), max(vs)
            fields[f"{name}_mean"], fields[f"{name}_count"] = sum(vs) / len(vs), len(vs)
        out[key] = fields
    return out


def as_table(rows: list[dict[str, Any]]) -> dict[tuple[int, str, str], dict[str, float]]:
    return {(int(r["time"]), r["district"], r["pole"]):
            {k: v for k, v in r.items() if k not in ("time", "district", "pole") and v is not None}
            for r in rows}


def assert_tables_match(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, fields in want.items():
        assert got[key].keys() == fields.keys(), key
        for f, v in fields.items():
            assert math.isclose(got[key][f], v, rel_tol=1e-9, abs_tol=1e-9), (key, f, got[key][f], v)


# --- pure ----------------------------------------------------------------------------------------------
def test_rollup_points_matches_reference() -> None:
    start_ms = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
    pts = [schema.telemetry_point(r) for r in readings(start_ms, 150, 30)]
    for window, seconds in rollup.WINDOWS.items():
        got = as_table(rollup.point_rows(rollup.rollup_points(pts, window)))
        assert_tables_match(got, expected(pts, seconds))


def test_coarsen_of_minutes_equals_hours_from_raw() -> None:
    start_ms = 1_700_000_000_000
    pts = [schema.telemetry_point(r) for r in readings(start_ms, 400, 20)]
    minutes = rollup.rollup_points(pts, "1m")
    assert {p.measurement for p in minutes} == {"telemetry_1m"}
    via = as_table(rollup.point_rows(rollup.coarsen(rollup.point_rows(minutes), "1h")))
    assert_tables_match(via, expected(pts, 3600))


def test_non_metric_fields_and_other_measurements_are_ignored() -> None:
    p = Point("telemetry", (("district", "d"), ("pole", "p")), {"seq": 5, "lamp_power_w": 10.0, "x": 1.0}, 0)
    other = Point("status", (("district", "d"), ("pole", "p")), {"online": 1}, 0)
    [out] = rollup.rollup_points([p, other], "1m")
    assert set(out.fields) == {"lamp_power_w_min", "lamp_power_w_mean", "lamp_power_w_max",
                               "lamp_power_w_count"}
    assert out.fields["lamp_power_w_count"] == 1


def test_aggregate_query_shape_and_bad_arguments() -> None:
    q = rollup.aggregate_query(0, 60 * rollup.NS, "1m", metrics=["tilt_deg"], district="north")
    assert q == ('SELECT min("tilt_deg") AS "tilt_deg_min", mean("tilt_deg") AS "tilt_deg_mean", '
                 'max("tilt_deg") AS "tilt_deg_max", count("tilt_deg") AS "tilt_deg_count" FROM "telemetry" '
                 "WHERE \"district\" = 'north' AND time >= 0 AND time < 60000000000 "
                 'GROUP BY time(60s), "district", "pole" fill(none)')
    with pytest.raises(ValueError, match="window"):
        rollup.aggregate_query(0, 1, "5m")
    with pytest.raises(KeyError, match="no_such"):
        rollup.aggregate_query(0, 1, metrics=["no_such"])
    with pytest.raises(ValueError, match="empty"):
        rollup.aggregate_query(5, 5)


@given(st.lists(st.tuples(st.integers(0, 7200), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1,
                max_size=60))
def test_coarsen_is_exact_for_any_samples(samples: list[tuple[int, float]]) -> None:
    pts = [Point("telemetry", (("district", "d"), ("pole", "p")), {"tilt_deg": v}, t * rollup.NS)
           for t, v in samples]
    direct = rollup.rollup_points(pts, "1h")
    via = rollup.coarsen(rollup.point_rows(rollup.rollup_points(pts, "1m")), "1h")
    assert [(p.ts_ns, p.tags) for p in via] == [(p.ts_ns, p.tags) for p in direct]
    for a, b in zip(via, direct, strict=True):
        for f in ("tilt_deg_min", "tilt_deg_max", "tilt_deg_count"):
            assert a.fields[f] == b.fields[f]
        assert a.fields["tilt_deg_mean"] == pytest.approx(b.fields["tilt_deg_mean"], rel=1e-9, abs=1e-6)


# --- real InfluxDB 1.6.7 ---------------------------------------------------------------------------------
def test_a_simulated_day_rolls_up_exactly_on_influxdb_1(influx_db: tuple[InfluxDB1, str]) -> None:
    server, db = influx_db
    store = Influx1Store(server.url, db, create=False)
    assert len(setup(store, db)) == 3  # raw (default), rollup_1m, rollup_1h
    # yesterday, UTC: inside the 30-day raw retention policy, so InfluxDB keeps it
    today_ms = int(time.time()) // DAY_S * DAY_S * 1000
    start_ms = today_ms - DAY_S * 1000
    raw = [schema.telemetry_point(r) for r in readings(start_ms, 2 * 24 * 60, 30)]  # 3 poles x 1 day x 30 s
    for i in range(0, len(raw), 5000):
        store.write(raw[i:i + 5000])
    assert store.count() == len(raw)

    writers = {w: Influx1Store(server.url, db, retention_policy=rollup.RETENTION_POLICY[w], create=False)
               for w in rollup.WINDOWS}
    written = rollup.run(store, writers, start_ms * 1_000_000, today_ms * 1_000_000)
    assert written == {"1m": 3 * 24 * 60, "1h": 3 * 24}

    day = f"time >= {start_ms}ms AND time < {today_ms}ms"
    for window, seconds in rollup.WINDOWS.items():
        rp, meas = rollup.RETENTION_POLICY[window], rollup.MEASUREMENT[window]
        rows = store.rows(f'SELECT * FROM "{rp}"."{meas}" WHERE {day} GROUP BY "district", "pole"')
        assert_tables_match(as_table(rows), expected(raw, seconds))

    # idempotent: a second run rewrites the same points, it adds none
    rollup.run(store, writers, start_ms * 1_000_000, today_ms * 1_000_000)
    n = store.rows(f'SELECT count("tilt_deg_count") FROM "rollup_1h"."telemetry_1h" WHERE {day}')
    assert n[0]["count"] == 3 * 24
    for s in (store, *writers.values()):
        s.close()
