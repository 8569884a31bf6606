"""Open-data publication over a simulated week in a real InfluxDB 1.6.7 and in SQLite.

The week is made by a seeded generator here (so lamp failures, silent poles and alarms are known);
the expected figures are computed in this file from the raw readings in plain Python, without the
module's own functions, and compared with the published CSV and GeoJSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import schema
from contract.models import Alert
from contract.readings import Point, Reading
from ingest import opendata as od
from ingest import publish
from ingest import rollup as roll
from ingest.cli import main
from ingest.influx1 import Influx1Store
from ingest.sqlite import SqliteStore
from testbed.servers import InfluxDB1

SINCE, UNTIL = date(2026, 3, 2), date(2026, 3, 9)
OFFSET_H = 1  # local time = UTC + 1 h
STEP_S = 300  # reporting interval
PER_HOUR = 3600 // STEP_S
DEFAULT_PER_HOUR = 60  # publish's --interval-s default: for a pole whose status gives no interval
MIN_POLES = 5
DISTRICTS = {"north": 8, "south": 7, "east": 6, "harbour": 3}  # harbour: always under MIN_POLES
EAST_SILENT_DAY = date(2026, 3, 5)  # three east poles silent all that local day: 3 < 5 report
DARK = {("north", 0): (date(2026, 3, 3), date(2026, 3, 4)),  # two nights dark: counted on 03-04
        ("south", 1): (date(2026, 3, 5),)}  # one night only: never counted
LUX_ONLY = ("south", 6)  # reports no dimming (schedule from ambient light) nor its interval (default 60 s)
POLLUTED = ("north", date(2026, 3, 6))
SECRET = "s3cr3t-device-password"  # free text in status and alerts: must never be published
BOOT = "boot-7f3a9c"
HOUR_MS = 3_600_000


def pole_id(district: str, i: int) -> str:
    return f"lp-{district}-{i:03d}"


def local(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000 + OFFSET_H * 3600, tz=UTC)


def night_of(ts_ms: int) -> date:
    return (local(ts_ms) - timedelta(hours=12)).date()


def scheduled_dim(lt: datetime) -> float:
    if lt.hour >= 22 or lt.hour < 6:
        return 50.0
    return 100.0 if lt.hour >= 18 else 0.0


@dataclass
class Week:
    telemetry: list[Point] = field(default_factory=list)
    status: list[Point] = field(default_factory=list)
    alerts: list[Point] = field(default_factory=list)
    rated: dict[str, float] = field(default_factory=dict)
    district_of: dict[str, str] = field(default_factory=dict)
    location: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def points(self) -> list[Point]:
        return [*self.telemetry, *self.status, *self.alerts]


def make_week(seed: int = 14) -> Week:
    rng = np.random.default_rng(seed)
    w = Week()
    t_start = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    t_end = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp() * 1000)
    for di, (district, n) in enumerate(DISTRICTS.items()):
        for i in range(n):
            pole = pole_id(district, i)
            w.district_of[pole] = district
            w.rated[pole] = float(rng.choice([60.0, 120.0, 150.0]))
            w.location[pole] = (52.1 + 0.02 * di + 0.001 * i, 4.3 + 0.03 * di + 0.0015 * i)
            w.status.append(Point(schema.STATUS, schema.tags(district=district, pole=pole),
                                  {"state": "birth", "online": 1, "boot": BOOT, "reason": f"login {SECRET}",
                                   "lat": w.location[pole][0], "lon": w.location[pole][1],
                                   "rated_power_w": w.rated[pole],
                                   **({} if (district, i) == LUX_ONLY else {"interval_s": float(STEP_S)})},
                                  t_start * 1_000_000 - 86_400 * 10**9))
            flicker = 0.12 if (district, i) == ("east", 2) else 0.0  # often dark, hour by hour
            seq = 0
            for t in range(t_start + i * 7000, t_end, STEP_S * 1000):
                lt = local(t)
                if district == "east" and i < 3 and lt.date() == EAST_SILENT_DAY:
                    continue
                if rng.random() < 0.04:
                    continue  # lost reading
                dim = scheduled_dim(lt)
                if (district, i) == LUX_ONLY and dim:
                    dim = 100.0  # a driver without dimming runs at full power
                dark = night_of(t) in DARK.get((district, i), ()) or rng.random() < flicker
                power = w.rated[pole] * dim / 100 * (1 + 0.01 * rng.standard_normal()) if dim and not dark \
                    else 0.4
                rush = math.exp(-((lt.hour + lt.minute / 60 - 8.5) ** 2) / 2) + math.exp(-((lt.hour - 17.5) ** 2) / 3)
                pm_factor = 3.0 if (district, lt.date()) == POLLUTED else 1.0
                values = {"lamp_power_w": round(max(power, 0.0), 2),
                          "pm25_ugm3": round(pm_factor * (7 + 2 * di + 8 * rush) + rng.normal(0, 1.0), 1),
                          "pm10_ugm3": round(pm_factor * (14 + 3 * di + 12 * rush) + rng.normal(0, 1.5), 1),
                          "no2_ugm3": round(10 + 3 * di + 15 * rush + rng.normal(0, 1.0), 1),
                          "noise_db": round(42 + (14 if 7 <= lt.hour < 22 else 0) + 6 * rush + rng.normal(0, 1.5), 1)}
                if (district, i) == LUX_ONLY:
                    values["illuminance_lux"] = 6.0 if dim else 4000.0
                else:
                    values["dimming_pct"] = dim
                seq += 1
                w.telemetry.append(schema.telemetry_point(Reading(pole, district, BOOT, seq, t, values)))
            # alarms: a few per pole, some cleared after the end of the period (open at the end)
            t, k = t_start + int(rng.integers(1, 20)) * HOUR_MS, 0
            while t < t_end:
                kind = ("lamp_failure", "leakage", "door_open")[(i + k) % 3]
                raised = t + int(rng.integers(0, 3_000_000))
                cleared = raised + int(rng.integers(60_000, 150 * 60_000))
                if (district, i) == ("north", 1) and k == 0:  # raised late on the last day, open at the end
                    raised = int(datetime(2026, 3, 8, 22, 30, tzinfo=UTC).timestamp() * 1000)
                    cleared = raised + 3 * HOUR_MS
                    kind = "tilt"
                key, k = f"{kind}.w", k + 1
                for state, ts in (("raised", raised), ("cleared", cleared)):
                    w.alerts.append(schema.alert_point(Alert(
                        pole=pole, district=district, key=key, kind=kind, severity="warning", state=state,
                        raised_at=raised, cleared_at=cleared if state == "cleared" else None, ts=ts,
                        explain=f"test alarm at {local(ts):%H:%M} {SECRET}")))
                t = max(t, cleared) + int(rng.integers(4, 48)) * HOUR_MS
    return w


# --- the reference figures, from the raw readings -------------------------------------------------------
@dataclass
class Expect:
    suppressed: set[tuple[str, str]]
    daily: dict[tuple[str, str], dict[str, float]]
    faults: dict[tuple[str, str, str], dict[str, float]]


def per_hour_of(pole: str) -> int:
    return DEFAULT_PER_HOUR if pole == pole_id(*LUX_ONLY) else PER_HOUR


def expected(w: Week) -> Expect:
    days = [SINCE + timedelta(days=i) for i in range((UNTIL - SINCE).days)]
    lo_ms = int(datetime(SINCE.year, SINCE.month, SINCE.day, tzinfo=UTC).timestamp() * 1000) - OFFSET_H * HOUR_MS
    hi_ms = lo_ms + len(days) * 24 * HOUR_MS
    reporting: dict[tuple[date, str], set[str]] = defaultdict(set)
    per_hour: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for p in w.telemetry:
        pole, t = dict(p.tags)["pole"], p.ts_ns // 1_000_000
        per_hour[(pole, t // HOUR_MS * HOUR_MS)].append(dict(p.fields))
        if lo_ms <= t < hi_ms:
            reporting[(local(t).date(), w.district_of[pole])].add(pole)
    cells: dict[tuple[date, str], dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    vals: dict[tuple[date, str, str], list[float]] = defaultdict(list)
    nights: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0])
    for (pole, h), rows in per_hour.items():
        d, district = local(h).date(), w.district_of[pole]
        if "dimming_pct" in rows[0]:
            dims = [r["dimming_pct"] for r in rows]
            on, level = min(dims) > 0, sum(dims) / len(dims)
        else:
            on, level = max(r["illuminance_lux"] for r in rows) < 20, 100.0
        if on:
            mean_p = sum(r["lamp_power_w"] for r in rows) / len(rows)
            nights[(night_of(h), pole)][0] += 1
            nights[(night_of(h), pole)][1] += mean_p >= 0.8 * w.rated[pole] * level / 100
        if not lo_ms <= h < hi_ms:
            continue
        c = cells[(d, district)]
        c["received_readings"] += min(len(rows), per_hour_of(pole))
        for m in ("pm25_ugm3", "pm10_ugm3", "no2_ugm3"):
            vals[(d, district, m)] += [r[m] for r in rows]
        noise = sum(r["noise_db"] for r in rows) / len(rows)
        lh = local(h).hour
        if 7 <= lh < 19:
            vals[(d, district, "day")].append(noise)
        elif lh >= 23 or lh < 7:
            vals[(d, district, "night")].append(noise)
    dark = {k for k, (n, lit) in nights.items() if lit < n / 2}
    out: dict[tuple[str, str], dict[str, float]] = {}
    suppressed = set()
    for d in days:
        for district, n in DISTRICTS.items():
            key = (d.isoformat(), district)
            if len(reporting[(d, district)]) < MIN_POLES:
                suppressed.add(key)
                continue
            poles = [pole_id(district, i) for i in range(n)]
            expected_n = sum(24 * per_hour_of(p) for p in poles)
            night = [nights.get((d, p), [0, 0]) for p in poles]
            c = cells[(d, district)]
            e: dict[str, float] = {
                "reporting_poles": len(reporting[(d, district)]), "known_poles": n,
                "expected_readings": expected_n, "received_readings": c["received_readings"],
                "completeness": c["received_readings"] / expected_n,
                "night_pole_hours": sum(x[0] for x in night), "lit_pole_hours": sum(x[1] for x in night),
                "poles_dark_multi_night": sum((d, p) in dark and (d - timedelta(days=1), p) in dark for p in poles),
            }
            e["lit_share"] = e["lit_pole_hours"] / e["night_pole_hours"]
            for m, g in (("pm25_ugm3", 15.0), ("pm10_ugm3", 45.0), ("no2_ugm3", 25.0)):
                vs = vals[(d, district, m)]
                e[f"{m[:-5]}_mean_ugm3"] = sum(vs) / len(vs)
                e[f"{m[:-5]}_above_who"] = float(sum(vs) / len(vs) > g)
                e[f"{m[:-5]}_who_24h_ugm3"] = g
            for period in ("day", "night"):
                ls = vals[(d, district, period)]
                e[f"noise_{period}_dba"] = 10 * math.log10(sum(10 ** (x / 10) for x in ls) / len(ls))
            out[key] = e
    # faults: pair each raise with the next clear of the same pole and key, in the period only
    faults: dict[tuple[str, str, str], dict[str, Any]] = {}
    by_key: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    for p in w.alerts:
        t = dict(p.tags)
        if lo_ms * 1_000_000 <= p.ts_ns < hi_ms * 1_000_000:
            by_key[(t["pole"], str(p.fields["key"]))].append((p.ts_ns, str(p.fields["state"]), t["kind"]))
    durations: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for (pole, _), events in by_key.items():
        events.sort()
        for j, (ts, state, kind) in enumerate(events):
            if state != "raised":
                continue
            key = (local(ts // 1_000_000).date().isoformat(), w.district_of[pole], kind)
            if key[:2] in suppressed:
                continue
            f = faults.setdefault(key, {"raised": 0, "cleared": 0})
            f["raised"] += 1
            if j + 1 < len(events) and events[j + 1][1] == "cleared":
                f["cleared"] += 1
                durations[key].append((events[j + 1][0] - ts) / 60e9)
    for key, f in faults.items():
        f["open_at_end"] = f["raised"] - f["cleared"]
        ds = durations[key]
        f["clear_median_min"] = float(np.median(ds)) if ds else math.nan
        f["clear_p90_min"] = float(np.percentile(ds, 90)) if ds else math.nan
    for key, f in faults.items():
        out[key[:2]]["alarms_raised"] = out[key[:2]].get("alarms_raised", 0) + f["raised"]
    for e in out.values():
        e.setdefault("alarms_raised", 0)
    return Expect(suppressed, out, faults)


# --- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def week() -> Week:
    return make_week()


@pytest.fixture(scope="module")
def want(week: Week) -> Expect:
    return expected(week)


@pytest.fixture(scope="module")
def influx_week(influxdb: InfluxDB1, week: Week) -> Iterator[tuple[str, str]]:
    db = "opendata_week"
    influxdb.create_database(db)
    store = Influx1Store(influxdb.url, db, create=False)
    pts = week.points
    for i in range(0, len(pts), 5000):
        store.write(pts[i:i + 5000])
    # the hourly rollup, as `lampwatch-ingest rollup` makes it (1-hour window only)
    store.query(f'CREATE RETENTION POLICY "rollup_1h" ON "{db}" DURATION INF REPLICATION 1')
    writer = Influx1Store(influxdb.url, db, retention_policy="rollup_1h", create=False)
    lo = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()) * 10**9
    roll.run(store, {"1h": writer}, lo, lo + 9 * 86_400 * 10**9, chunk_hours=24)
    store.close()
    writer.close()
    yield influxdb.url, db
    influxdb.drop_database(db)


@pytest.fixture(scope="module")
def sqlite_week(tmp_path_factory: pytest.TempPathFactory, week: Week) -> Path:
    path = tmp_path_factory.mktemp("store") / "lampwatch.sqlite"
    store = SqliteStore(path)
    store.write(week.points)
    store.close()
    return path


def run_publish(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(["publish", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "--out", str(out),
               "--min-poles", str(MIN_POLES), "--utc-offset", str(OFFSET_H), *args])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("publish: "), cap.out
    return lines[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def assert_matches(out: Path, want: Expect) -> None:
    for f in publish.FILES:
        assert (out / f).is_file(), f
    rows = read_csv(out / publish.DAILY)
    assert len(rows) == len(DISTRICTS) * (UNTIL - SINCE).days
    decimals = {"completeness": 4, "lit_share": 4, "noise_day_dba": 1, "noise_night_dba": 1}
    seen_suppressed = set()
    for r in rows:
        key = (r["date"], r["district"])
        if r["status"] == "suppressed":
            seen_suppressed.add(key)
            assert all(v == "" for k, v in r.items() if k not in ("date", "district", "status")), r
            continue
        e = want.daily[key]
        for col, v in e.items():
            if col.endswith("_who_24h_ugm3"):
                assert float(r[col]) == v
                continue
            tol = 0.5 * 10 ** -decimals.get(col, 2 if col.endswith("_ugm3") else 0) + 1e-9
            assert abs(float(r[col]) - v) <= tol, (key, col, r[col], v)
    assert seen_suppressed == want.suppressed
    faults = read_csv(out / publish.FAULTS)
    got = {(f["date"], f["district"], f["kind"]): f for f in faults}
    assert got.keys() == want.faults.keys()
    for key, e in want.faults.items():
        for col, v in e.items():
            if math.isnan(v):
                assert got[key][col] == "", (key, col)
            else:
                assert abs(float(got[key][col]) - v) <= 0.05 + 1e-9, (key, col, got[key][col], v)


# --- acceptance -------------------------------------------------------------------------------------------
def test_the_week_has_what_the_checks_need(want: Expect) -> None:
    """Guards the generator: each rule below is exercised by this data, so the checks can fail."""
    assert {d for _, d in want.suppressed} == {"harbour", "east"}
    assert (EAST_SILENT_DAY.isoformat(), "east") in want.suppressed
    assert want.daily[("2026-03-04", "north")]["poles_dark_multi_night"] == 1
    assert all(e["poles_dark_multi_night"] == 0 for k, e in want.daily.items() if k != ("2026-03-04", "north"))
    assert want.daily[(POLLUTED[1].isoformat(), "north")]["pm25_above_who"] == 1
    assert sum(e["pm25_above_who"] for e in want.daily.values()) < len(want.daily)
    assert 0 < min(e["lit_share"] for e in want.daily.values()) < 0.95
    assert any(f["open_at_end"] for f in want.faults.values())
    assert len(want.faults) >= 10


def test_publish_from_influxdb_equals_the_raw_aggregates(influx_week: tuple[str, str], want: Expect,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, db = influx_week
    line = run_publish(["--url", url, "--db", db], tmp_path / "a", capsys)
    n_sup = len(want.suppressed)
    assert line == (f"publish: days=7 districts=4 published={7 * 4 - n_sup} suppressed={n_sup} files=5 "
                    f"out={tmp_path / 'a'}")
    assert_matches(tmp_path / "a", want)
    # idempotent: the same range again gives byte-identical files
    run_publish(["--url", url, "--db", db], tmp_path / "b", capsys)
    for f in publish.FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # the stored hourly rollup gives the same figures as the raw data
    run_publish(["--url", url, "--db", db, "--source", "rollup"], tmp_path / "c", capsys)
    assert_matches(tmp_path / "c", want)


def test_publish_from_sqlite_equals_the_raw_aggregates(sqlite_week: Path, want: Expect, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_publish(["--sqlite", str(sqlite_week)], tmp_path / "a", capsys)
    assert_matches(tmp_path / "a", want)
    run_publish(["--sqlite", str(sqlite_week)], tmp_path / "b", capsys)
    for f in publish.FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_geojson_has_centroids_of_published_districts_only(sqlite_week: Path, week: Week, want: Expect,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_publish(["--sqlite", str(sqlite_week)], tmp_path, capsys)
    doc = json.loads((tmp_path / publish.GEOJSON).read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection"
    feats = {f["id"]: f for f in doc["features"]}
    assert set(feats) == set(DISTRICTS)
    assert feats["harbour"]["geometry"] is None
    assert feats["harbour"]["properties"] == {"district": "harbour", "days_published": 0, "days_suppressed": 7}
    for district in ("north", "south", "east"):
        poles = [p for p, d in week.district_of.items() if d == district]
        lat = sum(week.location[p][0] for p in poles) / len(poles)
        lon = sum(week.location[p][1] for p in poles) / len(poles)
        got_lon, got_lat = feats[district]["geometry"]["coordinates"]
        assert abs(got_lon - lon) <= 0.0005 + 1e-12 and abs(got_lat - lat) <= 0.0005 + 1e-12
        rows = [e for (d, dist), e in want.daily.items() if dist == district]
        props = feats[district]["properties"]
        assert props["days_published"] == len(rows)
        assert props["alarms_raised"] == sum(e["alarms_raised"] for e in rows)
        lit = sum(e["lit_pole_hours"] for e in rows) / sum(e["night_pole_hours"] for e in rows)
        assert abs(props["lit_share"] - lit) <= 0.00005 + 1e-12


def test_a_higher_minimum_suppresses_more(sqlite_week: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["publish", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "--out", str(tmp_path),
               "--sqlite", str(sqlite_week), "--min-poles", "8", "--interval-s", str(STEP_S)])
    assert rc == 0
    rows = read_csv(tmp_path / publish.DAILY)
    published = {r["district"] for r in rows if r["status"] == "published"}
    assert published == {"north"}  # the only district with 8 poles (some days may lose a reading, not a pole)
    assert {f["district"] for f in read_csv(tmp_path / publish.FAULTS)} <= {"north"}
    assert "published=" in capsys.readouterr().out


CLOCK = re.compile(r"\d{1,2}:\d{2}")  # 07:30, 2026-03-02T07:30: any time of day
EPOCH = re.compile(r"(?<![\d.])\d{10,}(?!\d)")  # epoch seconds, ms or ns
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d")  # a date with an hour (ISO 8601, SQL)


def test_no_output_carries_a_pole_id_device_data_or_a_sub_hour_time(sqlite_week: Path, week: Week,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run_publish(["--sqlite", str(sqlite_week)], tmp_path, capsys)
    texts = {f.name: f.read_text(encoding="utf-8") for f in sorted(tmp_path.iterdir())}
    assert set(texts) == set(publish.FILES)  # no temp files or anything else left behind
    forbidden = [*week.district_of, BOOT, SECRET, "lp-"]
    for name, text in texts.items():
        for word in forbidden:
            assert word not in text, (name, word)
        assert not CLOCK.search(text), (name, CLOCK.search(text))
        assert not EPOCH.search(text), (name, EPOCH.search(text))
        assert not DATETIME.search(text), (name, DATETIME.search(text))


def test_the_privacy_check_catches_a_leak(sqlite_week: Path, tmp_path: Path) -> None:
    """The patterns above do fire on what they must keep out."""
    assert CLOCK.search("2026-03-02T07:30:00Z") and EPOCH.search("t=1772435400000")
    assert DATETIME.search("2026-03-02T07") and DATETIME.search("2026-03-02 07h")
    assert not EPOCH.search("0.1234567890123") and not DATETIME.search("2026-03-02,east")


def test_html_is_self_contained_with_inline_svg(sqlite_week: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run_publish(["--sqlite", str(sqlite_week)], tmp_path, capsys)
    page = (tmp_path / publish.HTML).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert page.count("<svg") == 6  # lighting, PM2.5, PM10, NO2, noise, completeness
    refs = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert refs and all(r in publish.FILES for r in refs), refs
    assert "WHO 2021 guideline" in page and "withheld" in page


def test_data_dictionary_describes_every_column_and_docs_list_them(tmp_path: Path) -> None:
    dictionary = read_csv_text(publish.dictionary_csv())
    docs = (Path(__file__).resolve().parents[2] / "docs" / "open-data.md").read_text(encoding="utf-8")
    for name, header in ((publish.DAILY, publish.DAILY_COLUMNS), (publish.FAULTS, publish.FAULT_COLUMNS)):
        cols = [r["column"] for r in dictionary if r["file"] == name]
        assert cols == [c[0] for c in header]
        for c in cols:
            assert f"`{c}`" in docs, c
    assert all(r["description"] for r in dictionary)


def read_csv_text(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- pure pieces ------------------------------------------------------------------------------------------
def test_percentile_and_energy_mean() -> None:
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert od.percentile(xs, 50) == 3.0
    assert od.percentile(xs, 90) == pytest.approx(float(np.percentile(xs, 90)))
    assert od.percentile([7.0], 90) == 7.0
    assert od.energy_mean([60.0, 60.0]) == pytest.approx(60.0)
    assert od.energy_mean([60.0, 70.0]) == pytest.approx(67.4036, abs=1e-4)  # louder hour dominates


def test_who_guidelines_come_from_the_catalog() -> None:
    assert [od.who_guideline(m) for m in od.AIR] == [15.0, 45.0, 25.0]
    with pytest.raises(ValueError, match="no 24-hour guideline"):
        od.who_guideline("lamp_power_w")


def test_repeated_raise_is_one_alarm_and_a_clear_without_raise_is_ignored() -> None:
    p = od.Params(date(2026, 3, 2), date(2026, 3, 3), min_poles=1)
    t0 = p.local_ns(date(2026, 3, 2), 10)
    ev = [od.AlertEvent("north", "x", "tilt", "tilt.k", "cleared", t0 - 1),
          od.AlertEvent("north", "x", "tilt", "tilt.k", "raised", t0),
          od.AlertEvent("north", "x", "tilt", "tilt.k", "raised", t0 + 60 * od.NS),
          od.AlertEvent("north", "x", "tilt", "tilt.k", "cleared", t0 + 600 * od.NS)]
    hours = [od.PoleHour("north", "x", t0, {"noise_db": roll.Agg.of(50.0)})]
    pub = od.aggregate(hours, ev, [], p)
    assert [(f.raised, f.cleared, f.median_min) for f in pub.faults] == [(1, 1, 10.0)]


def test_bad_arguments_are_one_line_and_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--since", "2026-13-01", "--until", "2026-03-09"], 2, "--since: invalid date"),
        (["--since", "2026-03-09", "--until", "2026-03-02"], 2, "--until must be after --since"),
        (["--since", "2026-03-02", "--until", "2026-03-09", "--source", "cq"], 2, "--source must be"),
        (["--since", "2026-03-02", "--until", "2026-03-09", "--min-poles", "0"], 2, "min_poles"),
        (["--since", "2026-03-02", "--until", "2026-03-09", "--sqlite", str(tmp_path / "none.sqlite")], 2,
         "no SQLite store"),
        (["--since", "2026-03-02", "--until", "2026-03-09", "--url", "ftp://x"], 2, "--url must start"),
    ]
    for args, code, text in cases:
        rc = main(["publish", "--out", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err
        assert rc == code, (args, err)
        assert len(err.strip().splitlines()) == 1 and text in err, (args, err)
    assert not (tmp_path / "out").exists()


def test_unreachable_influxdb_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.servers import free_port

    rc = main(["publish", "--since", "2026-03-02", "--until", "2026-03-03", "--out", str(tmp_path),
               "--url", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "unreachable" in err[0], err


def _hour(district: str, pole: str, t: int, **aggs: roll.Agg) -> od.PoleHour:
    return od.PoleHour(district, pole, t, aggs)


def test_only_whole_scheduled_hours_count_and_a_dimmed_lamp_is_lit() -> None:
    p = od.Params(date(2026, 3, 2), date(2026, 3, 3), min_poles=1)
    t = p.local_ns(date(2026, 3, 2), 20)
    dusk = roll.Agg(0.0, 100.0, 600.0, 12)  # schedule switched on inside the hour: not a night hour
    dimmed = roll.Agg(50.0, 50.0, 600.0, 12)
    hours = [_hour("north", "a", t, dimming_pct=dusk, lamp_power_w=roll.Agg.of(10.0)),
             _hour("north", "a", t + od.HOUR_NS, dimming_pct=dimmed, lamp_power_w=roll.Agg.of(49.0)),
             _hour("north", "a", t + 2 * od.HOUR_NS, dimming_pct=dimmed, lamp_power_w=roll.Agg.of(47.0))]
    day = od.aggregate(hours, [], [od.PoleInfo("north", "a", rated_power_w=120.0)], p).days[0]
    # 80 % of 120 W x 50 % = 48 W: 49 W is lit, 47 W is not
    assert (day.night_pole_hours, day.lit_pole_hours) == (2, 1)


def test_a_lamp_of_unknown_rating_is_lit_at_the_draw_it_shows_on_its_brightest_night_hour() -> None:
    # rated_power_w is optional: against the old 120 W default an unrated 60 W lamp was dark every night,
    # and the public file said so
    p = od.Params(date(2026, 3, 2), date(2026, 3, 3), min_poles=1)
    t = p.local_ns(date(2026, 3, 2), 21)
    on = roll.Agg.of(100.0)
    hours = [_hour("north", "a", t + k * od.HOUR_NS, dimming_pct=on, lamp_power_w=roll.Agg.of(w))
             for k, w in enumerate((60.0, 59.0, 40.0))]  # the last hour: 40 / 60 = 67 %, not lit
    hours += [_hour("north", "b", t + k * od.HOUR_NS, dimming_pct=on, lamp_power_w=roll.Agg.of(0.3))
              for k in range(3)]  # never seen lit: judged as the smallest lamp (10 W), dark
    day = od.aggregate(hours, [], [od.PoleInfo("north", "a"), od.PoleInfo("north", "b")], p).days[0]
    assert (day.night_pole_hours, day.lit_pole_hours) == (6, 2)


def test_suppression_is_at_the_minimum_exactly() -> None:
    p = od.Params(date(2026, 3, 2), date(2026, 3, 3), min_poles=3)
    t = p.local_ns(date(2026, 3, 2), 10)
    n = roll.Agg.of(50.0)
    hours = [_hour("a", f"p{i}", t, noise_db=n) for i in range(3)] + [_hour("b", f"q{i}", t, noise_db=n)
                                                                      for i in range(2)]
    got = {d.district: d.published for d in od.aggregate(hours, [], [], p).days}
    assert got == {"a": True, "b": False}


def test_params_reject_nonsense() -> None:
    for kwargs in ({"utc_offset_h": 15}, {"interval_s": 0.0}, {"interval_s": math.nan}, {"min_poles": 0}):
        with pytest.raises(ValueError):
            od.Params(date(2026, 3, 2), date(2026, 3, 3), **kwargs)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_the_files_do_not_depend_on_the_order_the_store_returns_rows(rnd: random.Random) -> None:
    p = od.Params(date(2026, 3, 2), date(2026, 3, 4), min_poles=2)
    t0 = p.local_ns(date(2026, 3, 2))
    hours = [_hour(d, f"{d}{i}", t0 + h * od.HOUR_NS, pm25_ugm3=roll.Agg(1.0 + i, 9.0 + h, 0.1 * h + i / 3, 3),
                   noise_db=roll.Agg.of(40.0 + (h * 7 + i) % 13), dimming_pct=roll.Agg.of(100.0 * (h % 24 > 17)),
                   lamp_power_w=roll.Agg.of(100.0 if (h + i) % 5 else 1.0))
             for d in ("a", "b") for i in range(3) for h in range(60)]
    alerts = [od.AlertEvent("a", f"a{i}", "leakage", "leakage.w", state, t0 + (7 * i + k) * 600 * od.NS)
              for i in range(3) for k, state in enumerate(("raised", "cleared", "raised", "cleared"))]
    want = publish.render(od.aggregate(hours, alerts, [], p))
    rnd.shuffle(hours)
    rnd.shuffle(alerts)
    assert publish.render(od.aggregate(hours, alerts, [], p)) == want
