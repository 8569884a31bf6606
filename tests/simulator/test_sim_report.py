"""The HTML report: self-contained, parses, and draws the expected series; plus the hand-built store
with known answers that the ``score`` tests share."""

from __future__ import annotations

import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from contract import schema
from contract.readings import Point
from gateway.detect.spatial import DISTRICT_POLE
from gateway.detection import alert_point
from ingest.sqlite import SqliteStore
from simulator.alarms_io import alarm_rows, alarms_from_rows
from simulator.faults import Label, write_labels
from simulator.report import build_report

T0 = 1_705_334_400_000  # 2024-01-15T16:00:00Z
STEP = 10_000
HOUR = 3_600_000
POLES = {"p-000001": ("centre", 52.370, 4.900), "p-000002": ("north", 52.380, 4.910),
         "p-000003": ("north", 52.385, 4.905)}


def _alert(pole: str, district: str, kind: str, key: str, metric: str, severity: str, state: str,
           t_ms: int) -> Point:
    from contract.models import Alert

    a = Alert(pole=pole, district=district, key=key, kind=kind, metric=metric, severity=severity, state=state,
              value=1.0, score=None, raised_at=t_ms, cleared_at=t_ms if state == "cleared" else None, ts=t_ms,
              explain="test")
    return alert_point(a)


def build_known_store(folder: Path) -> tuple[Path, Path, dict[str, object]]:
    """Three poles, one hour at 10 s. Labels: a leak on p-000001 (found 3 samples late, escalated
    warning -> critical, cleared), a flood on p-000002 (missed), a malformed-payload label (not scored).
    Alarms: the leak, a tilt on p-000003 matching nothing (false), a district alarm (ignored).

    Known answers: precision 0.5, recall 0.5, latency p50 3 samples, pole-days 3 x 1 h = 0.125,
    false alarms per 1,000 pole-days 1 / 0.125 * 1000 = 8000."""
    db = folder / "lampwatch.sqlite"
    store = SqliteStore(db)
    pts: list[Point] = []
    for pole, (district, _lat, _lon) in POLES.items():
        for k in range(HOUR // STEP):
            t = T0 + k * STEP
            leak = 45.0 if pole == "p-000001" and T0 + 10 * 60_000 <= t < T0 + 40 * 60_000 else 2.0
            pts.append(Point("telemetry", (("district", district), ("pole", pole)),
                             {"leakage_current_ma": leak, "water_level_cm": 0.0, "seq": k}, t * 1_000_000))
    leak_start = T0 + 10 * 60_000
    pts += [
        _alert("p-000001", "centre", "leakage", "leakage", "leakage_current_ma", "warning", "raised",
               leak_start + 3 * STEP),
        _alert("p-000001", "centre", "leakage", "leakage", "leakage_current_ma", "critical", "raised",
               leak_start + 5 * STEP),
        _alert("p-000001", "centre", "leakage", "leakage", "leakage_current_ma", "info", "cleared",
               T0 + 41 * 60_000),
        _alert("p-000003", "north", "tilt", "tilt", "tilt_deg", "warning", "raised", T0 + 50 * 60_000),
        _alert(DISTRICT_POLE, "north", "district_event", "district_event.no2_ugm3", "no2_ugm3", "info", "raised",
               T0 + 20 * 60_000),
    ]
    store.write(pts)
    store.close()
    labels = folder / "labels.csv"
    write_labels(labels, [Label("p-000001", "leakage_current_ma", "leakage", leak_start, T0 + 40 * 60_000),
                          Label("p-000002", "water_level_cm", "flood", T0 + 20 * 60_000, T0 + 30 * 60_000),
                          Label("p-000002", None, "malformed", T0 + 5 * 60_000, T0 + 15 * 60_000)])
    meta: dict[str, object] = {
        "scenario": "known", "start_ms": T0, "end_ms": T0 + HOUR, "step_ms": STEP,
        "poles": [{"pole": p, "district": d, "lat": la, "lon": lo} for p, (d, la, lo) in POLES.items()],
        "throughput": [[0.5 * i, 30 * i] for i in range(20)],
    }
    (folder / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    return db, labels, meta


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def of(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (cls is None or a.get("class") == cls)]


def _parse(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    p.close()
    return p


def test_alarm_pairing_escalation_clearing_and_district_alarms(tmp_path: Path) -> None:
    db, _labels, _ = build_known_store(tmp_path)
    reader = SqliteStore(db, readonly=True)
    rows = alarm_rows(reader.select(schema.ALERTS))
    assert [(a.alarm.pole, a.alarm.kind, a.severity) for a in rows] == [
        ("p-000001", "leakage", "critical"), ("p-000003", "tilt", "warning")]
    leak, tilt = alarms_from_rows(reader.select(schema.ALERTS))
    assert leak.raised_ms == T0 + 10 * 60_000 + 3 * STEP and leak.cleared_ms == T0 + 41 * 60_000
    assert tilt.cleared_ms is None and leak.metric == "leakage_current_ma"
    assert reader.exposure() == (3, 3 * 360, T0, T0 + HOUR - STEP)
    reader.close()


def test_gateway_kind_names_are_mapped_to_label_kinds() -> None:
    rows = [{"pole": "p-1", "kind": "pole_offline", "key": "pole_offline", "state": "raised", "metric": "",
             "severity": "warning", "time": 5_000_000}]
    (a,) = alarms_from_rows(rows)
    assert a.kind == "offline" and a.metric is None and a.raised_ms == 5


def test_report_is_self_contained_and_draws_every_series(tmp_path: Path) -> None:
    db, labels_path, meta = build_known_store(tmp_path)
    from simulator.faults import read_labels

    reader = SqliteStore(db, readonly=True)
    text = build_report(reader, read_labels(labels_path), run_meta=meta)
    reader.close()
    assert "<script" not in text and "http://" not in text and "https://" not in text and "<link" not in text
    doc = _parse(text)
    poles = doc.of("circle", "pole")
    assert len(poles) == 3
    sev = {a["data-pole"]: a["data-severity"] for a in poles}
    assert sev == {"p-000001": "critical", "p-000002": "none", "p-000003": "warning"}
    timelines = doc.of("svg", "timeline")
    assert sorted((a["data-pole"], a["data-kind"]) for a in timelines) == [
        ("p-000001", "leakage"), ("p-000002", "flood")]  # the malformed label is traffic, not drawn
    series = doc.of("polyline", "series")
    assert Counter(a["data-series"] for a in series) == Counter(
        {"leakage_current_ma": 1, "water_level_cm": 1, "stored_per_min": 1, "published_per_s": 1})
    assert len(doc.of("rect", "label-window")) == 2
    alarms = doc.of("rect", "alarm")
    assert [(a["data-pole"], a["data-match"]) for a in alarms] == [("p-000001", "1")]
    bars = {(a["data-kind"], a["data-series"]): int(a["data-value"] or 0) for a in doc.of("rect", "bar")}
    assert bars == {("leakage", "labels"): 1, ("leakage", "detected"): 1, ("flood", "labels"): 1,
                    ("flood", "detected"): 0, ("tilt", "false"): 1}
    leak_series = next(a for a in series if a["data-series"] == "leakage_current_ma")
    assert int(leak_series["data-n"] or 0) > 100
    assert "faults: precision=0.500 recall=0.500 latency_p50_samples=3.0 false_per_1000_pole_days=8000.00" in text
