"""Alarm policy: latency, minimum duration, escalation, de-duplication, restart."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract import topics
from contract.models import Alert
from contract.readings import Reading
from gateway.detect.alarms import AlarmPolicy, explain
from gateway.detect.rules import AlarmSpec, Conditions, Tier
from gateway.detection import STATE_VERSION, DetectionStage, alerts_of, read_state
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000


class Feed:
    def __init__(self, state_path: str | None = None, t: int = T0) -> None:
        self.now = [t / 1000]
        self.published: list[tuple[str, bytes, bool]] = []
        self.stage = DetectionStage(state_path=state_path, clock=lambda: self.now[0], spatial=None,
                                    stream=False, publish=lambda *msg: self.published.append(msg))
        self.t = t
        self.seq = 0

    def __call__(self, pole: str = "p-1", dt_ms: int = 1000, **values: float) -> list[dict[str, Any]]:
        self.seq += 1
        self.t += dt_ms
        self.now[0] += dt_ms / 1000
        r = Reading(pole, "north", "b", self.seq, self.t, values)
        return alerts_of(self.stage(Outcome(readings=[r])))


# --- latency -------------------------------------------------------------------------------------------
def test_leakage_step_to_35_ma_is_raised_on_the_first_sample() -> None:
    f = Feed()
    for k in range(20):  # a live sensor wavers (twenty identical readings would be a stuck one)
        assert f(leakage_current_ma=2.0 + 0.01 * (k % 4)) == []
    (a,) = f(leakage_current_ma=35.0)
    assert (a["kind"], a["severity"], a["state"], a["value"]) == ("leakage", "critical", "raised", 35.0)


def test_smoke_is_raised_on_the_first_sample() -> None:
    f = Feed()
    f(smoke=0.0)
    (a,) = f(smoke=1.0)
    assert (a["kind"], a["severity"], a["state"]) == ("smoke", "critical", "raised")


def test_flood_critical_is_immediate_but_warning_waits() -> None:
    f = Feed()
    assert f(water_level_cm=6.0) == []
    (a,) = f(water_level_cm=6.0)
    assert a["severity"] == "warning"
    g = Feed()
    (b,) = g(water_level_cm=16.0)
    assert b["severity"] == "critical"


def test_minimum_duration_by_time_when_samples_are_sparse() -> None:
    f = Feed()
    assert f(cabinet_temp_c=61.0, dt_ms=70_000) == []
    (a,) = f(cabinet_temp_c=61.0, dt_ms=70_000)  # 70 s since onset >= 60 s, only the 2nd sample
    assert (a["kind"], a["severity"]) == ("overheat", "warning")


# --- escalation and de-duplication ------------------------------------------------------------------------
def test_escalation_updates_the_same_alarm_key_and_keeps_raised_at() -> None:
    f = Feed()
    (w,) = f(leakage_current_ma=16.0)  # the leakage warning is raised on its first sample
    assert f(leakage_current_ma=16.0) == []  # held: no second raise
    (c,) = f(leakage_current_ma=31.0)
    assert (w["key"], w["severity"]) == ("leakage", "warning")
    assert (c["key"], c["severity"], c["state"]) == ("leakage", "critical", "raised")
    (active,) = f.stage.active()
    assert active.key == "leakage" and active.severity == "critical"
    assert active.raised_at == T0 + 1000 and active.ts == T0 + 3000
    assert f.stage.counters()["alarms_escalated_leakage"] == 1
    assert [json.loads(p)["severity"] for t, p, _r in f.published] == ["warning", "critical"]
    assert {t for t, _p, _r in f.published} == {topics.alert("north", "p-1", "leakage")}


def test_a_leakage_warning_is_raised_on_its_first_sample_and_a_flood_warning_on_its_second() -> None:
    f = Feed()
    (a,) = f(leakage_current_ma=15.5)  # a leak past half the RCD trip level: one 5-minute sample may be all
    assert (a["key"], a["severity"], a["state"]) == ("leakage", "warning", "raised")  # there is before 30 mA
    assert f(water_level_cm=6.0) == []  # the other fast-path warning tiers still confirm on a second sample
    (b,) = f(water_level_cm=6.0)
    assert (b["key"], b["severity"]) == ("flood", "warning")


def test_a_held_condition_raises_once() -> None:
    f = Feed()
    got = [a for _ in range(50) for a in f(smoke=1.0)]
    assert len(got) == 1
    assert f.stage.counters()["alarms_raised_smoke"] == 1


def test_deescalation_then_clear() -> None:
    f = Feed()
    f(leakage_current_ma=40.0)
    got = [a for _ in range(3) for a in f(leakage_current_ma=20.0)]
    assert [(a["state"], a["severity"]) for a in got] == [("raised", "warning")]
    got = [a for _ in range(5) for a in f(leakage_current_ma=5.0)]
    assert [(a["state"], a["severity"]) for a in got] == [("cleared", "warning")]
    assert f.stage.active() == []


# --- publication -------------------------------------------------------------------------------------------
def test_every_change_is_published_retained_as_alert_json() -> None:
    f = Feed()
    f(leakage_current_ma=31.2)
    for _ in range(3):
        f(leakage_current_ma=1.0)
    assert len(f.published) == 2
    (t1, p1, r1), (t2, p2, r2) = f.published
    assert r1 and r2 and t1 == t2 == "lampwatch/v1/north/p-1/alert/leakage"
    raised, cleared = Alert.model_validate_json(p1), Alert.model_validate_json(p2)
    assert raised.explain == "leakage current at or past the 30 mA RCD trip level: shock risk (31.2 mA)"
    assert (raised.state, raised.raised_at, raised.cleared_at) == ("raised", T0 + 1000, None)
    assert (cleared.state, cleared.raised_at, cleared.cleared_at) == ("cleared", T0 + 1000, T0 + 4000)


def test_alert_points_follow_the_schema() -> None:
    f = Feed()
    f.t += 0
    pts = f.stage(Outcome(readings=[Reading("p-1", "north", "b", 1, T0, {"smoke": 1.0})]))
    (p,) = pts
    assert p.measurement == "alerts"
    assert dict(p.tags) == {"district": "north", "pole": "p-1", "kind": "smoke", "severity": "critical"}
    assert set(p.fields) == {"state", "active", "level", "metric", "value", "score", "explain", "key", "acked",
                             "shelved_until"}
    assert (p.fields["acked"], p.fields["shelved_until"]) == (0, 0)  # the people's part: not yet
    assert (p.fields["active"], p.fields["level"]) == (1, 3)
    assert T0 * 1_000_000 <= p.ts_ns < (T0 + 1) * 1_000_000


def test_publish_failure_is_counted_not_raised() -> None:
    def boom(_t: str, _p: bytes, _r: bool) -> None:
        raise ConnectionError("broker gone")

    stage = DetectionStage(clock=lambda: T0 / 1000, spatial=None, stream=False, publish=boom)
    pts = stage(Outcome(readings=[Reading("p-1", "north", "b", 1, T0, {"smoke": 1.0})]))
    assert len(pts) == 1 and stage.counters()["alarm_publish_errors"] == 1


# --- restart ---------------------------------------------------------------------------------------------
def test_alarm_survives_a_restart_and_clears_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "detect.json")
    f = Feed(path)
    f(leakage_current_ma=16.0)
    f(leakage_current_ma=16.0)
    f.stage.set_pole("p-1", "north", tilt_baseline_deg=0.7)
    f.stage.close()
    assert not list(tmp_path.glob(".*.tmp"))

    g = Feed(path, t=f.t)  # a new gateway process
    (a,) = g.stage.active()
    assert (a.pole, a.key, a.severity, a.raised_at) == ("p-1", "leakage", "warning", T0 + 1000)
    assert g.stage.rules.baseline("p-1", "tilt_deg") == pytest.approx(0.7)
    assert g(leakage_current_ma=14.0) == []  # hysteresis survives: 14 > 12 holds the alarm
    got = [x for _ in range(6) for x in g(leakage_current_ma=1.0)]
    assert [(x["state"], x["key"]) for x in got] == [("cleared", "leakage")]
    assert g.stage.active() == []
    g.stage.close()
    h = Feed(path, t=g.t)
    assert h.stage.active() == []
    assert h.stage.counters()["alarms_cleared_leakage"] == 1


def test_changes_are_saved_at_once_without_close(tmp_path: Path) -> None:
    path = tmp_path / "detect.json"
    f = Feed(str(path))
    f(smoke=1.0)  # no close(): the change itself starts a save (off the message path) ...
    f.stage.flush()  # ... which lands without one
    doc = read_state(path)
    assert [(x["entity"], x["key"], x["level"]) for x in doc["alarms"]] == [("p-1", "smoke", 1)]
    assert Feed(str(path)).stage.active()[0].key == "smoke"


def test_a_damaged_state_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "detect.json"
    path.write_text("{not json")
    f = Feed(str(path))
    assert f.stage.active() == []
    assert f.stage.counters()["state_load_errors"] == 1
    assert (tmp_path / "detect.json.corrupt").read_text() == "{not json"
    f(smoke=1.0)
    f.stage.flush()
    assert json.loads(path.read_text())["v"] == STATE_VERSION


def test_restart_gives_every_pole_a_grace_period_before_offline(tmp_path: Path) -> None:
    path = str(tmp_path / "d.json")
    f = Feed(path)
    f(leakage_current_ma=1.0)
    f.stage.close()
    late = f.t + 3_600_000  # the gateway was down for an hour
    g = Feed(path, t=late)
    assert alerts_of(g.stage.tick(late)) == []
    (a,) = alerts_of(g.stage.tick(late + 200_000))
    assert a["key"] == "pole_offline"


# --- the policy on its own ---------------------------------------------------------------------------------
SPEC = AlarmSpec("x", "x", None, (Tier("warning", "w"), Tier("critical", "c", fast=True)),
                 raise_n=3, raise_ms=0, clear_n=2)


def _cond(rows: list[int], trig: list[int], hold: list[int], ts: list[int]) -> Conditions:
    n = len(rows)
    return Conditions(np.array(rows, np.int64), np.zeros(n, np.int64), np.array(trig, np.int8),
                      np.array(hold, np.int8), np.arange(n, dtype=np.float64), np.full(n, np.nan),
                      np.ones(n), np.array(ts, np.int64))


def test_policy_batch_with_repeats_equals_one_step_per_condition() -> None:
    rng = np.random.default_rng(7)
    n = 400
    rows = rng.integers(0, 5, n).tolist()
    trig = rng.choice([0, 0, 1, 1, 2], n).tolist()
    hold = [max(t, int(h)) for t, h in zip(trig, rng.integers(0, 3, n), strict=True)]
    ts = list(range(n))
    batch = AlarmPolicy([SPEC]).step(_cond(rows, trig, hold, ts))
    one = AlarmPolicy([SPEC])
    single = [t for i in range(n) for t in one.step(_cond([rows[i]], [trig[i]], [hold[i]], [ts[i]]))]
    key = lambda t: (t.row, t.ts_ms, t.change, t.level)  # noqa: E731
    assert len(batch) > 10
    assert sorted(map(key, batch)) == sorted(map(key, single))


def test_policy_restore_by_name() -> None:
    p = AlarmPolicy([SPEC])
    p.step(_cond([3], [2], [2], [T0]))
    saved = p.export(lambda r: ("north", f"p-{r}"))
    q = AlarmPolicy([SPEC])
    assert q.restore(saved, lambda _d, e: int(e[2:])) == 1
    assert q.level(3, "x") == 2
    assert q.restore([{"key": "gone", "district": "n", "entity": "p-1", "level": 1}], lambda _d, _e: 0) == 0


def test_explain_formats_value_and_reference() -> None:
    spec = AlarmSpec("tilt", "tilt", "tilt_deg", (Tier("warning", "pole leans"),), unit="deg",
                     ref_label="baseline", ref_unit="deg", decimals=2)
    assert explain(spec, 1, 5.6, 0.5) == "pole leans (5.6 deg, baseline 0.5 deg)"
    assert explain(spec, 1, 3.0, float("nan"), cleared=True) == "cleared: pole leans (3 deg)"


def test_an_alarm_storm_is_saved_at_most_once_per_interval_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    f = Feed(str(path))
    f(pole="p-1", smoke=1.0)  # saved at once
    f(pole="p-2", smoke=1.0, dt_ms=100)  # 0.1 s later: held back
    f.stage.flush()
    assert [x["entity"] for x in read_state(path)["alarms"]] == ["p-1"]
    f(pole="p-3", leakage_current_ma=1.0, dt_ms=1000)  # the next call after the interval saves it
    f.stage.flush()
    assert sorted(x["entity"] for x in read_state(path)["alarms"]) == ["p-1", "p-2"]


def test_a_state_file_that_cannot_be_written_is_said_counted_and_retried(tmp_path: Path) -> None:
    """The saver thread must not die on a disk error, nor hide it: the stage keeps detecting, says why
    (``state_error``: the gateway's ``state_save_failed`` alarm), and the next save after the disk is
    back writes everything, the alarms raised meanwhile included."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be")
    path = blocker / "d.json"
    f = Feed(str(path))
    assert [a["key"] for a in f(pole="p-1", smoke=1.0)] == ["smoke"]
    f.stage.flush()
    assert f.stage.state_error is not None and "cannot save alarm state" in f.stage.state_error
    assert f.stage.counters()["state_save_errors"] >= 1
    assert [a["key"] for a in f(pole="p-2", smoke=1.0, dt_ms=2000)] == ["smoke"]  # still detecting
    blocker.unlink()  # the operator frees the disk
    f(pole="p-3", leakage_current_ma=1.0, dt_ms=2000)
    f.stage.flush()
    assert f.stage.state_error is None
    doc = read_state(path)
    assert sorted(x["entity"] for x in doc["alarms"]) == ["p-1", "p-2"]
    f.stage.close()


def test_save_now_while_the_saver_is_writing_does_not_deadlock(tmp_path: Path) -> None:
    """``save()`` waits for the saver thread's write; the saver takes the stage's lock to record how the
    write went, so waiting for it while holding that lock would hang (it did, in this session's first
    version, whenever a background write was still running)."""
    f = Feed(str(tmp_path / "d.json"))
    slow_once = [True]
    real_write = f.stage._write

    def slow_write(snap: Any) -> None:
        if slow_once[0]:
            slow_once[0] = False
            time.sleep(0.5)  # the background write of the change below is still running ...
        real_write(snap)

    f.stage._write = slow_write  # type: ignore[method-assign]
    f(smoke=1.0)  # an alarm change: a background save starts
    done = threading.Event()
    saver = threading.Thread(target=lambda: (f.stage.save(), done.set()), daemon=True)
    saver.start()  # ... when save() is called
    saver.join(timeout=20)
    assert done.is_set(), "save() hung while the background write was running"
    assert [x["key"] for x in read_state(tmp_path / "d.json")["alarms"]] == ["smoke"]
    f.stage.close()


def test_a_timed_rise_unreported_for_hours_restarts_instead_of_completing() -> None:
    """Held-out seed 3015: a drift condition pending (30 min wait) went unreported through the unlit day; its
    first report at dusk must not complete the wait that began in the morning."""
    from gateway.detect.alarms import PEND_GAP_MS

    spec = AlarmSpec("sensor_drift.x", "sensor_drift", "x", (Tier("warning", "drift"),), raise_n=30,
                     raise_ms=30 * 60_000, clear_n=3)
    pol = AlarmPolicy([spec])
    minute = 60_000

    def cond(t_ms: int) -> Conditions:
        one = np.ones(1, np.int8)
        return Conditions(np.zeros(1, np.int64), np.zeros(1, np.int64), one, one, np.ones(1), np.ones(1),
                          np.ones(1), np.array([t_ms], np.int64))

    for t in range(0, 21, 5):  # pending from 0 to 20 min, then no report for 8.6 h
        assert pol.step(cond(t * minute)) == []
    dusk = 20 * minute + 8 * 60 * minute + 36 * minute
    assert dusk - 20 * minute > PEND_GAP_MS
    assert pol.step(cond(dusk)) == [], "a rise pending since the morning completed on its first report at dusk"
    assert pol.level(0, spec.key) == 0
    # the wait restarts at dusk: it completes 30 min of reports later
    out = []
    for t in range(5, 31, 5):
        out += pol.step(cond(dusk + t * minute))
    assert [x.change for x in out] == ["raised"] and out[0].ts_ms == dusk + 30 * minute
    # a short gap (one lost report) still completes on the next report, as before
    pol2 = AlarmPolicy([spec])
    for t in (0, 5, 10, 15):
        pol2.step(cond(t * minute))
    assert [x.change for x in pol2.step(cond(30 * minute))] == ["raised"]
