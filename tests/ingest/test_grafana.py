"""Generated Grafana dashboards: structure, committed == generated, every query runs on real InfluxDB
1.6.7 with Grafana's macros substituted, and the API push has the right shape (fake HTTP server)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract import catalog, schema
from contract.models import Alert
from ingest import grafana, rollup
from ingest.influx1 import Influx1Store
from ingest.setup import setup
from testbed.servers import InfluxDB1
from tests.ingest import fakedata as fd

from .conftest import FakeGrafana

REPO = Path(__file__).resolve().parents[2]
BOARDS = grafana.dashboards()


# --- structure ---------------------------------------------------------------------------------------
def test_committed_files_equal_what_the_generator_makes_now() -> None:
    stale = grafana.stale(REPO / "grafana")
    assert stale == [], f"regenerate with `lampwatch-ingest grafana generate`: {stale}"


def test_generate_writes_every_file(tmp_path: Path) -> None:
    written = grafana.generate(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(grafana.files())
    assert grafana.stale(tmp_path) == []
    (tmp_path / "dashboards/pole-detail.json").write_text("{}")
    assert grafana.stale(tmp_path) == ["dashboards/pole-detail.json"]


@pytest.mark.parametrize("board", BOARDS, ids=lambda d: d["uid"])
def test_dashboard_structure(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        pos = p["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"} and pos["x"] + pos["w"] <= 24, p["title"]
        cover = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & cover, f"panel {p['title']!r} overlaps another"
        cells |= cover
        if p["type"] == "row":
            continue
        assert p["datasource"] == grafana.DS, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == grafana.DS and t["rawQuery"] is True and t["query"]
    defined = {v["name"] for v in board["templating"]["list"]}
    used = {m for _, q in grafana.iter_queries(board) for m in re.findall(r"\$(\w+)", q)}
    assert used - {"timeFilter", "__interval", "__interval_ms"} <= defined
    json.dumps(board)  # serialisable


def test_pole_detail_has_every_catalog_metric_with_its_thresholds() -> None:
    [pole] = [d for d in BOARDS if d["uid"] == "lampwatch-pole"]
    by_title = {p["title"].split(" ")[0]: p for p in pole["panels"]}
    for m in catalog.METRICS:
        panel = by_title[m.name]
        assert f'"{m.name}"' in panel["targets"][0]["query"]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        for t in m.thresholds:
            v = grafana.threshold_value(t)
            if v is not None and t.op == ">=":
                assert {"color": grafana.COLORS[t.severity], "value": v} in steps, (m.name, t)
    leak = by_title["leakage_current_ma"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert leak == [{"color": "green", "value": None}, {"color": "orange", "value": 15.0},
                    {"color": "red", "value": 30.0}]
    volts = by_title["supply_voltage_v"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["color"] for s in volts] == ["orange", "green", "orange"]
    assert volts[2]["value"] == pytest.approx(1.15 * 230)
    assert {a["name"] for a in pole["annotations"]["list"]} >= {"Alarms raised", "Alarms cleared"}


# --- Grafana's interpolation, as Grafana does it for InfluxQL ---------------------------------------------
_ESCAPE = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def regex_value(values: list[str] | str) -> str:
    """A variable inside /^...$/: a single value of a single-value variable is used as is; for
    multi/include-all variables Grafana escapes each value and joins them as (a|b); All -> allValue."""
    if isinstance(values, str):
        return values
    if values == ["$__all"]:
        return ".*"
    escaped = [_ESCAPE.sub(lambda m: "\\" + m.group(0), v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(q: str, time_filter: str, interval_s: int, variables: dict[str, list[str] | str]) -> str:
    q = q.replace("$timeFilter", time_filter)
    q = q.replace("$__interval_ms", str(interval_s * 1000)).replace("$__interval", f"{interval_s}s")
    for name in sorted(variables, key=len, reverse=True):
        q = q.replace(f"${name}", regex_value(variables[name]))
    assert re.search(r"\$\w", q) is None, f"uninterpolated macro in {q}"
    return q


def test_interpolation_helper() -> None:
    q = 'SELECT x FROM t WHERE "d" =~ /^$district$/ AND "p" =~ /^$pole$/ AND $timeFilter GROUP BY time($__interval)'
    got = interpolate(q, "time >= now() - 6h", 60, {"district": ["a.b", "c"], "pole": "p-1"})
    assert got == ('SELECT x FROM t WHERE "d" =~ /^(a\\.b|c)$/ AND "p" =~ /^p-1$/ AND time >= now() - 6h '
                   "GROUP BY time(60s)")


def _top_level_select(q: str) -> list[str]:
    """The expressions of the outermost SELECT list."""
    body = q[len("SELECT "):]
    depth, cur, out = 0, "", []
    for i, ch in enumerate(body):
        if depth == 0 and body.startswith(" FROM ", i):
            break
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*out, cur.strip()]


def expected_columns(q: str) -> list[str] | re.Pattern[str]:
    if q.startswith("SHOW TAG VALUES"):
        return ["key", "value"]
    cols: list[str] = []
    for expr in _top_level_select(q):
        if m := re.search(r' AS "([^"]+)"$', expr):
            cols.append(m.group(1))
        elif m := re.fullmatch(r'"([^"]+)"', expr):
            cols.append(m.group(1))
        elif "/^rejects_/" in expr:
            return re.compile(r"non_negative_derivative_rejects_\w+")
        else:
            raise AssertionError(f"every selected expression needs an alias: {expr}")
    return ["time", *cols]


# --- every query against real InfluxDB 1.6.7 -------------------------------------------------------------
@pytest.fixture(scope="module")
def filled(influxdb: InfluxDB1) -> Iterator[tuple[Influx1Store, int]]:
    """A database named like the datasource's, set up and filled: 6 h of telemetry (60 s step) for 3
    poles in 2 districts, its rollups, status with positions, alarms, gateway counters and rejects."""
    db = f"grafana_{int(time.time() * 1000)}"
    store = Influx1Store(influxdb.url, db, create=False)
    setup(store, db)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - 6 * 3600 * 1000
    points = fd.telemetry(start_ms, 6 * 60, 60)
    (n1, p1), (n2, p2), (s3, p3) = fd.POLES
    points += [fd.status_point(n1, p1, now_ms - 2 * 86_400_000, "birth", 52.37, 4.89),
               fd.status_point(n2, p2, now_ms - 2 * 86_400_000, "birth", 52.38, 4.90),
               fd.status_point(s3, p3, now_ms - 2 * 86_400_000, "birth", 52.35, 4.91),
               fd.status_point(n1, p1, now_ms - 600_000, "online"),
               fd.status_point(n2, p2, now_ms - 500_000, "online"),
               fd.status_point(s3, p3, now_ms - 400_000, "offline")]
    points += [fd.alert_point(n1, p1, now_ms - 40 * 60_000, "leakage", "warning", "raised", "leakage_current_ma",
                              16.0, "leakage current past half the 30 mA RCD trip level"),
               fd.alert_point(n1, p1, now_ms - 30 * 60_000, "leakage", "critical", "raised", "leakage_current_ma",
                              31.0, "leakage current at or past the 30 mA RCD trip level: shock risk"),
               fd.alert_point(n1, p1, now_ms - 3 * 3_600_000, "door_open", "warning", "raised", "door_open", 1.0,
                              "cabinet door open outside a maintenance window"),
               fd.alert_point(n1, p1, now_ms - 2 * 3_600_000, "door_open", "warning", "cleared", "door_open", 0.0,
                              "cabinet door open outside a maintenance window"),
               fd.alert_point(s3, p3, now_ms - 2 * 3_600_000, "tilt", "critical", "raised", "tilt_deg", 6.0,
                              "pole leans 5 degrees or more beyond its installed baseline: fall risk"),
               # the gateway's one definition of offline: p3's offline status raised pole_offline
               fd.alert_point(s3, p3, now_ms - 400_000, "pole_offline", "warning", "raised", "", 0.0,
                              "pole silent"),
               # ... and p1 went silent while its last status still says online (a hung pole)
               fd.alert_point(n1, p1, now_ms - 300_000, "pole_offline", "warning", "raised", "", 95.0,
                              "pole silent"),
               # an acknowledged alarm, exactly as the gateway writes it
               schema.alert_point(Alert(pole=p2, district=n2, key="flood", kind="flood", metric="water_level_cm",
                                        severity="warning", state="raised", value=6.0, raised_at=now_ms - 900_000,
                                        ts=now_ms - 600_000, explain="water is rising", acked_by="alice",
                                        acked_at=now_ms - 600_000, ack_note="crew sent"))]
    points += fd.gateway_points(start_ms, 6 * 60, 60) + fd.reject_points(now_ms - 3_600_000, 20, 60)
    store.write(points)
    writers = {w: Influx1Store(influxdb.url, db, retention_policy=rollup.RETENTION_POLICY[w], create=False)
               for w in rollup.WINDOWS}
    rollup.run(store, writers, start_ms * 1_000_000, now_ms * 1_000_000)
    for w in writers.values():
        w.close()
    yield store, now_ms
    store.query(f'DROP DATABASE "{db}"')
    store.close()


SCENARIOS: dict[str, dict[str, list[str] | str]] = {
    "one-district": {"district": ["north"], "pole": "p-000001", "gateway": ["gw-1"], "severity": ["$__all"]},
    "all": {"district": ["$__all"], "pole": "p-000001", "gateway": ["$__all"], "severity": ["$__all"]},
    "multi": {"district": ["north", "south"], "pole": "p-000001", "gateway": ["gw-1"],
              "severity": ["critical", "warning"]},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("absolute", [False, True], ids=["relative-range", "absolute-range"])
@pytest.mark.parametrize("board", BOARDS, ids=lambda d: d["uid"])
def test_every_query_returns_the_expected_series(filled: tuple[Influx1Store, int], board: dict[str, Any],
                                                 absolute: bool, scenario: str) -> None:
    store, now_ms = filled
    time_filter = (f"time >= {now_ms - 6 * 3_600_000}ms and time <= {now_ms + 60_000}ms" if absolute
                   else "time >= now() - 6h")
    checked = 0
    for where, raw in grafana.iter_queries(board):
        q = interpolate(raw, time_filter, 60, SCENARIOS[scenario])
        results = store.query(q, epoch="ms")
        series = results[0].get("series", [])
        assert series, f"{where}: no data for\n{q}"
        want = expected_columns(q)
        for s in series:
            assert s["values"], f"{where}: empty series"
            if isinstance(want, re.Pattern):
                assert s["columns"][0] == "time" and len(s["columns"]) > 1
                assert all(want.fullmatch(c) for c in s["columns"][1:]), s["columns"]
            else:
                assert s["columns"] == want, f"{where}: {s['columns']} != {want}\n{q}"
        checked += 1
    assert checked == len(list(grafana.iter_queries(board)))


def test_queries_return_the_right_values(filled: tuple[Influx1Store, int]) -> None:
    """Spot checks that the numbers mean what the panels say."""
    store, _ = filled
    v = {"district": ["$__all"], "pole": "p-000001", "gateway": ["$__all"], "severity": ["$__all"]}
    queries = {title: q for d in BOARDS for title, q in grafana.iter_queries(d)}

    def run(key: str) -> list[dict[str, Any]]:
        [q] = [q for where, q in queries.items() if key in where]
        return store.rows(interpolate(q, "time >= now() - 6h", 60, v))

    assert run("'Poles online' A")[0]["known"] == 3
    assert run("'Poles online' B")[0]["offline"] == 2  # online = known - offline = 1: the hung p1 is not online
    assert run("'Poles offline'")[0]["offline"] == 2
    assert sorted((r["pole"], r["silent_s"]) for r in run("'Stale / offline poles'")) == [
        ("p-000001", 95.0), ("p-000003", 0.0)]
    worst = {r["pole"]: r["worst"] for r in run("'Poles by worst active alarm' B")}
    assert worst == {"p-000001": 3, "p-000002": 2, "p-000003": 3}
    positions = {r["pole"]: (r["lat"], r["lon"]) for r in run("'Poles by worst active alarm' A")}
    assert positions["p-000002"] == (52.38, 4.90)
    assert {r["district"]: r["active"] for r in run("'Active alarms by district'")} == {"north": 4, "south": 2}
    active = run("'Active alarms (worst first)'")
    assert sorted((r["pole"], r["kind"], r["severity"]) for r in active) == [
        ("p-000001", "leakage", "critical"), ("p-000001", "leakage", "warning"),
        ("p-000001", "pole_offline", "warning"), ("p-000002", "flood", "warning"),
        ("p-000003", "pole_offline", "warning"), ("p-000003", "tilt", "critical")]
    acked = {r["pole"]: (r["acked_by"], r["ack_note"]) for r in active}
    assert acked["p-000002"] == ("alice", "crew sent") and acked["p-000001"] == (None, None)
    assert {r["value"] for r in run("variable pole")} == {"p-000001", "p-000002", "p-000003"}


# --- provisioning through the Grafana HTTP API (request shape only: no Grafana server here) -----------
def test_provision_request_shape(fake_grafana: str) -> None:
    from grafana_client import GrafanaApi

    api = GrafanaApi.from_url(fake_grafana, credential="tok-123")
    ds = grafana.datasource_definition("http://influxdb:8086", "lampwatch", "influx-token")
    uids = grafana.provision(api, datasource=ds)
    assert uids == [d["uid"] for d in BOARDS]
    reqs = FakeGrafana.requests
    assert all(auth == "Bearer tok-123" for _, _, auth, _ in reqs)
    assert [(m, p) for m, p, _, _ in reqs] == [
        ("GET", f"/api/datasources/uid/{grafana.DS_UID}"), ("POST", "/api/datasources"),
        ("GET", f"/api/folders/{grafana.FOLDER_UID}"), ("POST", "/api/folders"),
        *[("POST", "/api/dashboards/db")] * len(BOARDS)]
    assert reqs[1][3]["secureJsonData"] == {"httpHeaderValue1": "Token influx-token"}
    assert reqs[3][3] == {"title": grafana.FOLDER_TITLE, "uid": grafana.FOLDER_UID}
    for (_, _, _, body), board in zip(reqs[4:], BOARDS, strict=True):
        assert body["overwrite"] is True and body["folderUid"] == grafana.FOLDER_UID
        assert body["dashboard"] == json.loads(json.dumps(board))
