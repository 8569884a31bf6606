"""Memory bounds of the detection stage that must not change a decision."""

from __future__ import annotations

import copy
import json
import os
import tracemalloc
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.readings import Reading
from gateway import detection
from gateway.detect import state
from gateway.detect.engine import STREAM_METRICS, STREAM_STRIDE
from gateway.detect.spatial import DRIFT_SAVED
from gateway.detect.state import N_METRICS, NO_TS, Batch, Reserve
from gateway.detect.stream import StreamDetector
from gateway.detect.types import Conditions
from gateway.detection import DetectionStage
from gateway.pipeline import Outcome
from tests.servers import need_linux


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_stream_scores_do_not_depend_on_the_initial_capacity(capacity: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    small, sized = StreamDetector(capacity=1), StreamDetector(capacity=capacity)
    for step in range(80):
        idx = rng.integers(0, 2500, 40)
        x = rng.normal(10, 2, 40).astype(np.float32)
        t = 1.7e9 + step * 10.0 + rng.uniform(0, 1, 40)
        assert np.array_equal(small.update(idx, x, t), sized.update(idx, x, t), equal_nan=True)


def test_the_stream_grows_in_step_with_the_fleet_rows() -> None:
    stage = DetectionStage(spatial=None)
    readings = [Reading(f"p-{i}", "north", "b", 1, 1_700_000_000_000, {"supply_voltage_v": 230.0})
                for i in range(200)]
    stage(Outcome(readings=readings))
    assert stage.stream is not None
    assert stage.state.capacity == 256
    assert stage.stream.capacity == STREAM_STRIDE * stage.state.capacity


class WideStream(StreamDetector):
    """The previous series layout, one slot per catalog metric (``row * N_METRICS + col``): the reference
    for the layout with slots for the streamed metrics only."""

    def __init__(self, cols: np.ndarray, capacity: int) -> None:
        super().__init__(capacity=capacity)
        self.cols = cols

    def update(self, series_idx: np.ndarray, values: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(series_idx, np.int64)
        return super().update(idx // STREAM_STRIDE * N_METRICS + self.cols[idx % STREAM_STRIDE], values, t)


def _wide(stage: DetectionStage) -> WideStream:
    assert stage.stream is not None
    wide = WideStream(stage.det.stream_cols(), N_METRICS * stage.state.capacity)
    stage.det.stream = wide
    return wide


T0 = 1_700_000_000_000
KITS = (STREAM_METRICS, STREAM_METRICS[::2], (*STREAM_METRICS[1::3], "lamp_power_w"), ("supply_voltage_v",))


def _feed(seed: int, poles: int, steps: int) -> list[list[Reading]]:
    """Readings of ``poles`` poles of mixed sensor kits, 10 s apart, with spikes and steps: enough samples
    (past the warm-up) for anomalies to be raised and cleared."""
    rng = np.random.default_rng(seed)
    kit = rng.integers(0, len(KITS), poles)
    base = rng.uniform(1, 100, (poles, len(STREAM_METRICS) + 1))
    names = (*STREAM_METRICS, "lamp_power_w")
    out = []
    for i in range(steps):
        batch = []
        for p in rng.permutation(poles):
            vals = {}
            for m in KITS[kit[p]]:
                j = names.index(m)
                v = base[p, j] * (1 + rng.normal(0, 0.01))
                if rng.random() < 0.01:
                    v *= 3  # a spike
                vals[m] = float(v)
            batch.append(Reading(f"p-{p}", f"d{p % 3}", "b", i, T0 + i * 10_000 + int(p), vals))
        out.append(batch)
    return out


def _same_conditions(a: Conditions, b: Conditions) -> None:
    for f in ("rows", "spec", "trig", "hold", "value", "ref", "score", "ts"):
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 10))
def test_slots_for_streamed_metrics_only_decide_as_a_slot_per_catalog_metric(seed: int, poles: int) -> None:
    new, ref = DetectionStage(clock=lambda: T0 / 1000), DetectionStage(clock=lambda: T0 / 1000)
    _wide(ref)
    scored = 0
    for i, batch in enumerate(_feed(seed, poles, 70)):
        now = T0 + i * 10_000
        (ca, da), (cb, db) = new.det.readings(batch, now), ref.det.readings(batch, now)
        _same_conditions(ca, cb)  # every layer's conditions, the anomaly scores among them
        _same_conditions(da, db)
        scored += int(((ca.spec >= new.det._anomaly_off) & ~np.isnan(ca.score)).sum())
        assert new.det.step(ca, da) == ref.det.step(cb, db)
    assert scored > 0  # past the warm-up: the streaming layer scored
    assert new.active() == ref.active()


def test_a_state_file_of_the_previous_layout_restores_every_series(tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old = DetectionStage(state_path=str(old_path), clock=lambda: T0 / 1000, background_save=False)
    new = DetectionStage(state_path=str(new_path), clock=lambda: T0 / 1000, background_save=False)
    wide = _wide(old)
    feed = _feed(5, 10, 80)
    for batch in feed[:70]:
        old(Outcome(readings=batch))
        new(Outcome(readings=batch))
    old.save()
    new.save()
    # the previous gateway wrote its stream state as state_dict's arrays, without a layout key
    saved = wide.state_dict()
    assert len(saved["n"]) == wide.capacity
    np.savez(old_path.with_name("old.json.stream.npz"), **saved)  # type: ignore[arg-type]
    again = DetectionStage(state_path=str(old_path), clock=lambda: T0 / 1000, background_save=False)
    cont = DetectionStage(state_path=str(new_path), clock=lambda: T0 / 1000, background_save=False)
    assert again.stream is not None and cont.stream is not None and new.stream is not None
    a, b = again.stream.state_dict(), new.stream.state_dict()
    used = new.state.n * STREAM_STRIDE
    for k in a:
        if k != "params":
            assert np.array_equal(a[k][:used], b[k][:used], equal_nan=True), k
    for batch in feed[70:]:  # and both go on deciding alike
        assert again(Outcome(readings=batch)) == cont(Outcome(readings=batch))


grow_steps = st.lists(st.tuples(st.integers(1, 300), st.integers(0, 2**31)), min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(grow_steps, st.sampled_from([np.float64, np.int64, np.int8, np.bool_]), st.sampled_from([(), (3,), (2, 5)]),
       st.booleans(), st.integers(1, 4))
def test_growing_in_place_keeps_what_it_holds_and_fills_new_rows(steps: list[tuple[int, int]], dtype: type,
                                                                  tail: tuple[int, ...], zero: bool,
                                                                  ahead: int) -> None:
    """Reserve.grow against the allocate-and-copy it replaces (``np.full`` of the new size, old rows copied),
    in reservations (every size reserved, ``ahead`` times the rows: some growths outgrow theirs) and not."""
    fill = 0 if zero else {np.float64: np.nan, np.int64: NO_TS, np.int8: -1, np.bool_: True}[dtype]
    dt = np.dtype(dtype)
    for min_bytes in (0, 1 << 40):
        with patch.object(state, "RESERVE_MIN_BYTES", min_bytes), patch.object(state, "RESERVE_AHEAD", ahead):
            res, arr, ref, cap = Reserve(), None, None, 0
            for add, seed in steps:
                new_cap = cap + add
                arr = res.grow(arr, cap, new_cap, tail, dt, fill)
                fresh = np.full((new_cap, *tail), fill, dt)
                if ref is not None:
                    fresh[:cap] = ref
                ref, cap = fresh, new_cap
                assert arr.shape == ref.shape and arr.dtype == ref.dtype
                assert np.array_equal(arr, ref, equal_nan=True)
                rng = np.random.default_rng(seed)  # write some rows, as the tables do
                rows = rng.integers(0, cap, 5)
                val = rng.integers(-100, 100, (5, *tail)).astype(dt)
                arr[rows] = val
                ref[rows] = val
            snap = copy.deepcopy(res), copy.deepcopy(arr)
            assert np.array_equal(snap[1], ref, equal_nan=True)  # a deep copy holds the rows in use
            again = snap[0].grow(snap[1], cap, cap + 1, tail, dt, fill)  # and grows on its own
            assert np.array_equal(again[:cap], ref, equal_nan=True)


def _resident(a: np.ndarray) -> int:
    """Bytes of ``a``'s pages the kernel backs with memory (/proc/self/pagemap, bit 63: present)."""
    page = os.sysconf("SC_PAGE_SIZE")
    addr = a.__array_interface__["data"][0]
    p0, p1 = addr // page, (addr + a.nbytes - 1) // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(p0 * 8)
        raw = np.frombuffer(f.read((p1 - p0 + 1) * 8), np.uint64)
    return int((raw >> np.uint64(63)).sum()) * page


def test_reserved_and_spare_rows_are_not_resident() -> None:
    """What the in-place growth is for: rows reserved ahead and zero-filled spare rows cost no memory, and a
    growth within the reservation moves nothing."""
    need_linux("/proc/self/pagemap")
    res = Reserve()
    a = res.grow(None, 0, 1 << 16, (256,), np.dtype(np.float64), np.nan)  # 128 MiB of NaN: resident
    b = res.grow(a, 1 << 16, 1 << 17, (256,), np.dtype(np.float64), np.nan)
    assert b.__array_interface__["data"][0] == a.__array_interface__["data"][0]  # in place
    assert _resident(b) >= b.nbytes * 0.99
    z = Reserve().grow(None, 0, 1 << 17, (256,), np.dtype(np.float32), 0)  # 128 MiB of zeros
    z[:16] = 1.0
    assert _resident(z) < 1 << 20
    stream = StreamDetector(capacity=1 << 20)  # 1,048,576 series (218 MB), 100 of them written
    stream.update(np.arange(100), np.ones(100, np.float32), np.full(100, 1.7e9))
    assert _resident(stream._s) < 1 << 20


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 4000), st.integers(0, 2**32 - 1))
def test_a_full_save_written_a_slice_at_a_time_restores_every_row(slice_bytes: int, seed: int) -> None:
    """The saver writes the streaming detector's rows from the live detector, ``STREAM_SAVE_BYTES`` at a
    time: whatever the slice, the restored detector holds the same rows (bit for bit) and scores alike."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, patch.object(detection, "STREAM_SAVE_BYTES", slice_bytes):
        path = Path(tmp) / "s.json"
        a = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
        feed = _feed(seed, 6, 75)
        for batch in feed[:65]:
            a(Outcome(readings=batch))
        a.save()
        b = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
        assert a.stream is not None and b.stream is not None
        n_series = a.state.n * STREAM_STRIDE  # the used rows, not the spare capacity, are saved
        assert b.stream.capacity == n_series < a.stream.capacity
        assert a.stream._s[:n_series].tobytes() == b.stream._s.tobytes()
        for batch in feed[65:]:  # the streaming layer goes on scoring alike (other rules' state is not saved)
            _same_conditions(a.det._anomalies(Batch.from_readings(a.state, batch)),
                             b.det._anomalies(Batch.from_readings(b.state, batch)))


def test_a_stream_file_of_another_row_layout_warms_up_again(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    a = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    for batch in _feed(1, 3, 5):
        a(Outcome(readings=batch))
    a.save()
    npz = path.with_name("s.json.stream.npz")
    with np.load(npz) as z:
        saved = {k: z[k] for k in z.files}
    saved["row_layout"] = np.array("another layout")
    np.savez(npz, **saved)  # type: ignore[arg-type]
    b = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    assert b.stream is not None and b.state.n == 3  # the registry is back, the stream learns again
    assert int(b.stream.state_dict()["n"].max()) == 0


def test_a_full_save_leaves_out_the_rows_of_poles_registered_after_its_copy(tmp_path: Path) -> None:
    """The stream's rows are written after the snapshot was copied: a pole that registered in between is
    not in the saved registry, so its row is not saved, not handed with its learned state to whichever
    pole takes that row after a restart."""
    path = tmp_path / "s.json"
    a = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    feed = _feed(3, 4, 30)
    for batch in feed:
        a(Outcome(readings=[r for r in batch if r.pole != "p-3"]))
    with a._lock:
        snap = a._snapshot(full=True)
    for batch in feed:  # p-3 registers after the copy and learns
        a(Outcome(readings=[r for r in batch if r.pole == "p-3"]))
    assert a.stream is not None and a.state.n == 4
    a._write(snap)
    b = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    assert b.stream is not None and b.state.n == 3
    n = b.stream.state_dict()["n"]
    assert int(n[:3 * STREAM_STRIDE].max()) > 0  # the saved poles' series are back
    assert len(n) == 3 * STREAM_STRIDE  # the late pole's row is not saved: fresh when the stream grows to it


def test_the_learned_rows_are_saved_on_their_own_slower_cadence(tmp_path: Path) -> None:
    """The pole table every ``save_every_s``, the learned rows every ``learned_save_every_s``: between
    two learned saves the stream file holds what was learned at the last one."""
    path = tmp_path / "s.json"
    clock = [T0 / 1000]
    a = DetectionStage(state_path=str(path), clock=lambda: clock[0], background_save=False, save_every_s=10,
                       learned_save_every_s=100)
    npz = path.with_name("s.json.stream.npz")
    seen = []
    for batch in _feed(4, 3, 30):  # 10 s apart: a table save each batch, a learned save every tenth
        clock[0] += 10
        a(Outcome(readings=batch))
        n = None
        if npz.exists():
            with np.load(npz) as z:
                n = int(z["rows"][:, 2].view(np.int32).max())  # samples the saved rows had seen
        seen.append((json.loads(path.read_bytes())["saved_at"], n))
    assert len({t for t, _ in seen}) == 30  # the table: every save
    assert [n for _t, n in seen] == [None] * 9 + [10] * 10 + [20] * 10 + [30]  # the learned rows: every 100 s


def test_the_learned_rows_go_back_to_their_poles_by_name(tmp_path: Path) -> None:
    """The learned rows may be older than the pole table, which may have started afresh in another order
    (a damaged file set aside): each pole gets its own row back, a pole the file lacks starts fresh."""
    path = tmp_path / "s.json"
    a = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    feed = _feed(5, 4, 30)
    for batch in feed:
        a(Outcome(readings=[r for r in batch if r.pole != "p-3"]))
    a.save()  # learned rows of p-0 .. p-2, in that order
    learned = {p: a.stream._s[r * STREAM_STRIDE:(r + 1) * STREAM_STRIDE].copy()  # type: ignore[union-attr]
               for r, p in enumerate(a.state.poles)}
    path.unlink()
    path.with_name("s.json.recent.json").unlink(missing_ok=True)
    b = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    for batch in feed[:1]:  # the table afresh (its first save: the table only), p-3 first, the others reversed
        b(Outcome(readings=sorted(batch, key=lambda r: r.pole, reverse=True)))
    assert json.loads(path.read_bytes())["poles"]["pole"] == ["p-3", "p-2", "p-1", "p-0"]
    c = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    assert c.stream is not None and c.state.poles[:4] == ["p-3", "p-2", "p-1", "p-0"]
    for r, p in enumerate(c.state.poles):
        got = c.stream._s[r * STREAM_STRIDE:(r + 1) * STREAM_STRIDE]
        if p in learned:
            assert got.tobytes() == learned[p].tobytes(), p
        else:
            assert not got.any(), "a pole the file lacks starts fresh"


def _city_stage(path: Path, poles: int = 40, ticks: int = 150) -> DetectionStage:
    """A stage fed a simulated city with faults (alarms raised, drift judged, baselines installed by
    births), with two maintenance windows."""
    from gateway.pipeline import Pipeline
    from simulator.city import City, CityConfig
    from simulator.faults import random_faults
    from simulator.signals import SignalModel
    from simulator.stream import TelemetryStream, birth_messages

    step_ms = 300_000
    city = City(CityConfig(seed=7, poles=poles))
    stream = TelemetryStream(city, SignalModel(city, 7), random_faults(city, 7, T0, T0 + ticks * step_ms, rate=3.0),
                             T0, step_ms, 7)
    clock = [T0]
    stage = DetectionStage(state_path=str(path), clock=lambda: clock[0] / 1000, background_save=False,
                           save_every_s=1e12, save_min_interval_s=1e12)
    pipe = Pipeline()
    for topic, payload in birth_messages(stream, T0 - step_ms):
        stage(pipe.status(topic, payload, T0 - step_ms))
    for r in (0, 3):
        stage.det.rules.set_maintenance(stage.state.poles[r], stage.state.pole_district[r], T0 + r, T0 + 86_400_000)
    for _ in range(ticks):
        clock[0] = stream.now_ms + 500
        batch = Outcome()
        for topic, payload in stream.tick():
            if topic.endswith("/status"):
                stage(pipe.status(topic, payload, clock[0]))
            else:
                batch.readings.extend(pipe.telemetry(topic, payload, clock[0]).readings)
        stage(batch)
        stage.tick(clock[0])
    return stage


def _pole_tables(stage: DetectionStage) -> dict[str, np.ndarray]:
    """What the pole table saves, as the live arrays hold it."""
    n, th = stage.state.n, stage.det.rules.thresholds.st
    out = {k: getattr(stage.state, k)[:n].copy() for k in ("rated_w", "rated_learned", "nominal_v", "interval_ms",
                                                           "interval_ew", "last_ts", "arrival_ms")}
    out |= {k: getattr(th, k)[:n].copy() for k in ("base", "base_given", "mean_m", "mean_w", "mean_t")}
    out["said_offline"] = stage.det.rules.presence_.st.said_offline[:n].copy()
    out["maint"] = stage.det.rules.maint.st.end[:n].copy()
    return out


def _v1_poles(stage: DetectionStage) -> list[dict[str, object]]:
    """The pole records of a version-1 state file (one object per pole), made from the live state: the
    reference the version-2 columns replace."""
    f, th, rules = stage.state, stage.det.rules.thresholds, stage.det.rules
    out: list[dict[str, object]] = []
    for r, pole in enumerate(f.poles):
        d: dict[str, object] = {"pole": pole, "district": f.pole_district[r]}
        for name in ("rated_w", "nominal_v", "interval_ms", "interval_ew"):
            if not np.isnan(getattr(f, name)[r]):
                d[name] = float(getattr(f, name)[r])
        base = {str(th._base_names[i]): float(th.st.base[r, i]) for i in range(len(th._base_names))
                if not np.isnan(th.st.base[r, i])}
        if base:
            d["baseline"] = base
            given = [nm for i, nm in enumerate(th._base_names)
                     if not np.isnan(th.st.base[r, i]) and th.st.base_given[r, i]]
            if given:
                d["baseline_installed"] = given
        means = {nm: [float(th.st.mean_m[r, i]), float(th.st.mean_w[r, i]), int(th.st.mean_t[r, i])]
                 for i, nm in enumerate(th._mean_names) if th.st.mean_t[r, i] != NO_TS}
        if means:
            d["means"] = means
        if f.last_ts[r] != NO_TS:
            d["last_ts"] = int(f.last_ts[r])
        if rules.presence_.st.said_offline[r]:
            d["said_offline"] = True
        if f.arrival_ms[r] != NO_TS:
            d["arrival_ms"] = int(f.arrival_ms[r])
        if rules.maintenance(pole):
            d["maintenance"] = [list(w) for w in rules.maintenance(pole)]
        out.append(d)
    return out


def _same_tables(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_the_state_document_is_written_a_column_at_a_time_and_restores_the_pole_tables(tmp_path: Path) -> None:
    """The saver writes the pole table a column at a time from the copies taken under the lock: the bytes
    are those ``json.dumps`` of the whole document makes, and a fresh stage restores the same tables,
    alarms and document. A version-1 file (one object per pole) of the same state restores them too."""
    stage = _city_stage(tmp_path / "s.json")
    with stage._lock:
        view = stage.det.export_view()
    doc = view.doc()
    assert doc["v"] == 2 and len(doc["poles"]["pole"]) == stage.state.n
    assert len(stage.active()) > 0 and len(doc["alarms"]) == len(stage.active())
    assert list(doc["poles"]["maintenance"]) == [stage.state.poles[0], stage.state.poles[3]]
    extra = {"saved_at": 5, "counts": {"state_saves": 2}}
    out = bytearray()
    detection.write_view(view, out.extend, extra)
    assert bytes(out) == json.dumps({**doc, **extra}, separators=(",", ":")).encode()
    tables = _pole_tables(stage)
    assert int((tables["mean_t"] != NO_TS).sum()) > 0 and int(tables["base_given"].sum()) > 0
    fresh = DetectionStage(clock=lambda: T0 / 1000, background_save=False)
    fresh.det.restore(json.loads(bytes(out)), heard_ms=T0)
    assert json.dumps(fresh.det.export()) == json.dumps(doc)  # NaN too (NaN != NaN as floats)
    _same_tables(_pole_tables(fresh), tables)
    assert fresh.active() == stage.active()
    v1 = DetectionStage(clock=lambda: T0 / 1000, background_save=False)
    v1.det.restore(json.loads(json.dumps({**doc, "v": 1, "poles": _v1_poles(stage)})), heard_ms=T0)
    _same_tables(_pole_tables(v1), tables)
    assert json.dumps(v1.det.export()) == json.dumps(doc)


def test_a_damaged_pole_table_is_refused_whole() -> None:
    stage = DetectionStage(clock=lambda: T0 / 1000, background_save=False)
    with pytest.raises(ValueError, match="rated_w"):
        stage.det.restore({"v": 2, "poles": {"pole": ["p-1", "p-2"], "district": ["d", "d"], "rated_w": [1.0]}},
                          heard_ms=T0)
    with pytest.raises(ValueError, match="version"):
        stage.det.restore({"v": 3}, heard_ms=T0)


@pytest.mark.parametrize("slice_bytes", [64, 3000, 4 << 20])
def test_the_drift_state_is_saved_as_rows_and_restored_by_pole_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_bytes: int) -> None:
    """A full save writes the poles' drift state as binary rows, a slice at a time, for the poles of its
    snapshot; a restart puts every value back on the pole of that name. A state file of the JSON drift
    entries (before) restores the same arrays."""
    monkeypatch.setattr(detection, "STREAM_SAVE_BYTES", slice_bytes)
    path = tmp_path / "s.json"
    a = _city_stage(path)
    assert a.spatial is not None
    dst, n = a.spatial.dst, a.state.n
    assert int((dst.dt[:n] != NO_TS).sum()) > 100  # drift judged on most poles x metrics
    a.save()
    b = DetectionStage(state_path=str(path), clock=lambda: T0 / 1000, background_save=False)
    assert b.spatial is not None and b.state.poles == a.state.poles
    for k in DRIFT_SAVED.names or ():
        assert np.array_equal(getattr(b.spatial.dst, k)[:n], getattr(dst, k)[:n], equal_nan=True), k
    # the same state as a file of the JSON drift entries restores the same arrays
    doc = json.loads(path.read_bytes())
    names = a.spatial.drift_names()
    doc["spatial"] += [{"pole": a.state.poles[r], "district": a.state.pole_district[r], "metric": names[j],
                        "drift": [float(dst.dz[r, j]), float(dst.du[r, j]), float(dst.dw[r, j]),
                                  float(dst.dlearn[r, j]), int(dst.dt[r, j]), float(dst.dch[r, j]),
                                  float(dst.dcl[r, j]), float(dst.dn[r, j])]}
                       for r, j in zip(*np.nonzero(dst.dt[:n] != NO_TS), strict=True)]
    old = tmp_path / "old" / "s.json"
    old.parent.mkdir()
    old.write_text(json.dumps(doc))
    c = DetectionStage(state_path=str(old), clock=lambda: T0 / 1000, background_save=False)
    assert c.spatial is not None
    for k in DRIFT_SAVED.names or ():
        assert np.array_equal(getattr(c.spatial.dst, k)[:n], getattr(dst, k)[:n], equal_nan=True), k
    b._closed = c._closed = True


def test_drift_rows_go_back_by_name_and_skip_what_is_gone(tmp_path: Path) -> None:
    a = _city_stage(tmp_path / "s.json")
    assert a.spatial is not None
    n, names = a.state.n, a.spatial.drift_names()
    rows = a.spatial.drift_rows(0, n)
    fresh = DetectionStage(clock=lambda: T0 / 1000, background_save=False)
    assert fresh.spatial is not None
    for r in (5, 2):  # registered in another order; the others not at all
        fresh.state.row(a.state.poles[r], a.state.pole_district[r])
    saved = np.concatenate([rows[:, ::-1], rows[:, :1]], axis=1)  # metrics in another order, and one more
    saved = np.concatenate([saved, saved[:1]])  # a pole this gateway never registered
    got = fresh.spatial.restore_drift([*a.state.poles, "p-unknown"], [*names[::-1], "no_such_metric"], saved)
    assert got == 2
    for r, fr in ((5, 0), (2, 1)):
        back = fresh.spatial.drift_rows(fr, fr + 1)[0]
        for k in DRIFT_SAVED.names or ():
            assert np.array_equal(back[k], rows[r][k], equal_nan=True), k
    assert int((rows["dt"] != NO_TS).sum()) > 0
    with pytest.raises(ValueError, match="shape"):
        fresh.spatial.restore_drift(a.state.poles, names, rows[:-1])
    a._closed = True


def test_a_save_copies_a_few_hundred_bytes_a_pole_not_the_detector(tmp_path: Path) -> None:
    """What the worker copies under the lock for a save is the document's few per-pole columns: a deep
    copy of the detector (every fleet table, ~4 KB a pole) made each save add ~150 MB to the gateway's
    high-water mark at 30,000 poles. The drift rows are copied later, a slice at a time."""
    poles = 3000
    stage = DetectionStage(state_path=str(tmp_path / "s.json"), clock=lambda: T0 / 1000, background_save=False,
                           save_every_s=1e12, save_min_interval_s=1e12)
    rng = np.random.default_rng(5)
    for i in range(3):  # quiet poles: what a save copies of alarms is sized by the alarms, not the fleet
        stage(Outcome(readings=[Reading(f"p-{p}", f"d{p % 5}", "b", i, T0 + i * 10_000 + p,
                                        {"supply_voltage_v": float(rng.normal(230, 1)), "cabinet_temp_c": 30.0,
                                         "leakage_current_ma": 1.0, "tilt_deg": 0.5})
                                for p in range(poles)]))
    assert len(stage.active()) < poles / 100
    tables = sum(t.nbytes for t in stage.state.tables)
    tracemalloc.start()
    try:
        with stage._lock:
            snap = stage._snapshot(True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tables / poles > 1500  # what a deep copy would have copied, at the least
    assert peak / poles < 300, f"{peak / poles:.0f} bytes a pole copied for a save"
    stage._write(snap)
    assert json.loads((tmp_path / "s.json").read_bytes())["poles"]["pole"][-1] == stage.state.poles[-1]
