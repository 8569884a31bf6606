"""The detection stage as the gateway sees it: batches, state, layer 2, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.catalog import INDEX
from contract.models import Alert, Status
from contract.readings import Point, Reading
from gateway.detect.engine import STREAM_STRIDE
from gateway.detect.state import NO_TS, Batch, FleetState, occurrence_rank
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000


def _fleet_readings(seed: int, poles: int = 30, samples: int = 25) -> list[Reading]:
    """Random telemetry that crosses many thresholds, for many poles, in device-time order."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(poles):
        pole, district = f"p-{i:03d}", f"d{i % 3}"
        t = T0 + int(rng.integers(0, 1000))
        for s in range(samples):
            t += int(rng.integers(500, 40_000))
            v: dict[str, float] = {
                "leakage_current_ma": float(rng.choice([2.0, 14.0, 16.0, 27.0, 35.0], p=[.5, .1, .2, .1, .1])),
                "tilt_deg": float(rng.choice([0.5, 0.6, 3.0, 6.0], p=[.5, .3, .1, .1])),
                "dimming_pct": float(rng.choice([0.0, 50.0, 100.0])),
                "lamp_power_w": float(rng.choice([0.0, 40.0, 60.0, 120.0])),
                "supply_voltage_v": float(rng.choice([230.0, 190.0, 200.0, 266.0])),
                "cabinet_temp_c": float(rng.choice([25.0, 58.0, 62.0, 80.0])),
            }
            if rng.random() < 0.3:
                v["smoke"] = float(rng.random() < 0.3)
                v["door_open"] = float(rng.random() < 0.5)
                v["backhaul_up"] = float(rng.random() < 0.6)
            out.append(Reading(pole, district, "b", s, t, v))
    out.sort(key=lambda r: (r.ts_ms, r.pole))
    return out


def _stage(**kw: Any) -> DetectionStage:
    kw.setdefault("spatial", None)
    kw.setdefault("stream", False)
    return DetectionStage(clock=lambda: T0 / 1000, **kw)


def _key(p: Point) -> tuple[Any, ...]:
    return (p.ts_ns, p.tags, sorted(p.fields.items()))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_vectorised_batch_equals_one_reading_at_a_time(seed: int) -> None:
    readings = _fleet_readings(seed)
    single = _stage()
    one_by_one = [p for r in readings for p in single(Outcome(readings=[r]))]
    batched = _stage()
    shuffled = list(readings)
    np.random.default_rng(seed).shuffle(shuffled)  # the stage orders samples by device time itself
    in_batch = batched(Outcome(readings=shuffled))
    assert len(one_by_one) > 50
    assert sorted(map(_key, in_batch)) == sorted(map(_key, one_by_one))
    assert batched.active() == single.active()
    assert sorted(batched.state.poles) == sorted(single.state.poles)
    rb = batched.state.rows_of(single.state.poles)  # rows differ (first-seen order), poles do not
    n = single.state.n
    # every rule family's typed state, column by column, ends the same
    pairs = list(zip(batched.state.tables, single.state.tables, strict=True))
    assert len(pairs) > 5
    for tb, ts in pairs:
        assert type(tb) is type(ts)
        for col in tb.columns():
            if col.name == "district":  # district indices are first-seen order too: compared by name below
                continue
            assert np.array_equal(col.__get__(tb)[rb], col.__get__(ts)[:n], equal_nan=True), col.name
    assert [batched.state.pole_district[r] for r in rb] == single.state.pole_district


def test_batch_from_long_arrays_equals_batch_from_readings() -> None:
    readings = _fleet_readings(5, poles=4, samples=5)
    state = FleetState()
    b1 = Batch.from_readings(state, readings)
    rows, cols, vals, ts = [], [], [], []
    for r in readings:
        for name, v in r.values.items():
            rows.append(state.find(r.pole))
            cols.append(INDEX[name])
            vals.append(v)
            ts.append(r.ts_ms)
    b2 = Batch.from_arrays(np.array(rows), np.array(cols), np.array(vals), np.array(ts))
    assert np.array_equal(b1.rows, b2.rows) and np.array_equal(b1.ts, b2.ts)
    assert np.array_equal(b1.values, b2.values, equal_nan=True)


def test_fleet_state_grows_by_steps_and_keeps_what_it_holds() -> None:
    st = FleetState(capacity=2)
    rows = [st.row(f"p-{i}", "north") for i in range(70)]
    assert rows == list(range(70)) and st.capacity == 2 + 64 + 64  # an eighth, at least 64 rows a step
    b = Batch.from_arrays(np.arange(70), np.full(70, INDEX["tilt_deg"]), np.arange(70) / 10, np.full(70, T0))
    st.observe(b)
    st.row("p-200", "south")
    assert np.allclose(st.value[:70, INDEX["tilt_deg"]], np.arange(70) / 10)
    assert st.districts == ["north", "south"] and st.district[70] == 1


def test_a_late_sample_never_overwrites_a_newer_value() -> None:
    st = FleetState()
    r = st.row("p-1", "north")
    c = INDEX["leakage_current_ma"]
    st.observe(Batch.from_arrays(np.array([r]), np.array([c]), np.array([5.0]), np.array([T0 + 10])))
    st.observe(Batch.from_arrays(np.array([r]), np.array([c]), np.array([9.0]), np.array([T0])))
    assert st.value[r, c] == 5.0 and st.value_ts[r, c] == T0 + 10
    assert st.last_ts[r] == T0 + 10


def test_occurrence_rank() -> None:
    assert occurrence_rank(np.array([5, 3, 5, 5, 3, 1])).tolist() == [0, 0, 1, 2, 1, 0]
    assert occurrence_rank(np.array([], np.int64)).tolist() == []


def test_status_birth_registers_the_pole_and_its_interval() -> None:
    s = _stage()
    s(Outcome(status=Status(pole="p-9", district="east", state="birth", ts=T0, interval_s=5.0)))
    row = s.state.find("p-9")
    assert row is not None and s.state.pole_district[row] == "east"
    assert s.rules.silence_limit_ms(np.array([row]))[0] == 30_000.0  # max(3 x 5 s, 30 s floor)
    assert s.state.arrival_ms[row] != NO_TS


def test_counters_and_active_alerts_are_contract_models() -> None:
    s = _stage()
    s(Outcome(readings=[Reading("p-1", "north", "b", 1, T0, {"smoke": 1.0, "leakage_current_ma": 40.0})]))
    active = s.active()
    assert all(isinstance(a, Alert) for a in active)
    assert sorted(a.key for a in active) == ["leakage", "smoke"]
    c = s.counters()
    assert c["alarms_raised_smoke"] == 1 and c["alarms_raised_leakage"] == 1 and c["alarms_active"] == 2


def test_empty_outcome_and_rejects_only_produce_nothing() -> None:
    s = _stage()
    assert s(Outcome()) == []
    assert s.tick(T0) == []


def test_layer_2_stream_detector_is_optional_and_persisted(tmp_path: Path) -> None:
    pytest.importorskip("gateway.detect.stream")
    path = tmp_path / "d.json"
    s = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, spatial=None, stream=True)
    assert s.stream is not None
    rng = np.random.default_rng(3)
    got: list[dict[str, Any]] = []
    for i in range(300):
        v = 12.0 + rng.normal(0, 0.2) + (25.0 if i == 250 else 0.0)
        got += alerts_of(s(Outcome(readings=[Reading("p-1", "north", "b", i, T0 + i * 60_000,
                                                     {"ambient_temp_c": v})])))
    assert all(a["kind"] == "anomaly" and a["severity"] == "info" for a in got)
    assert [a["state"] for a in got if a["value"] > 30] == ["raised"]  # a 100-sigma spike is seen
    s.close()
    assert path.with_name("d.json.stream.npz").exists()
    again = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, spatial=None, stream=True)
    assert again.stream is not None
    before = s.stream.state_dict()  # type: ignore[union-attr]
    after = again.stream.state_dict()
    used = s.state.n * STREAM_STRIDE  # the used rows are saved (not the spare capacity)
    assert len(after["n"]) == used and np.array_equal(before["n"][:used], after["n"])
    assert not before["n"][used:].any()
