"""Memory bounds of the detection stage that must not change a decision."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.readings import Reading
from gateway.detect.state import N_METRICS
from gateway.detect.stream import StreamDetector
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
    assert stage.stream.capacity == N_METRICS * stage.state.capacity
