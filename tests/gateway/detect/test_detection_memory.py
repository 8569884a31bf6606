"""Memory bounds of the detection stage that must not change a decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.readings import Reading
from gateway.detect.engine import STREAM_METRICS, STREAM_STRIDE
from gateway.detect.state import N_METRICS
from gateway.detect.stream import StreamDetector
from gateway.detect.types import Conditions
from gateway.detection import DetectionStage
from gateway.pipeline import Outcome


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
    # the previous gateway wrote its stream state without the layout key
    with np.load(old_path.with_name("old.json.stream.npz")) as z:
        saved = {k: z[k] for k in z.files}
    assert "series_stride" in saved
    del saved["series_stride"]
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
