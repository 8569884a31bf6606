"""``Batch.from_readings`` scatters every value at once: the batch must equal the one the previous body
(one numpy item assignment per value, kept below as the reference) built, for any readings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.catalog import INDEX, METRICS
from contract.readings import Reading
from gateway.detect.state import N_METRICS, Batch, FleetState


def reference_from_readings(state: FleetState, readings: Sequence[Reading]) -> Batch:
    n = len(readings)
    if n == 0:
        return Batch.empty()
    mat = np.full((n, N_METRICS), np.nan)
    ts = np.empty(n, np.int64)
    rows = np.empty(n, np.int64)
    row_of = state.row
    for i, r in enumerate(readings):
        rows[i] = row_of(r.pole, r.district)
        ts[i] = r.ts_ms
        for name, v in r.values.items():
            c = INDEX.get(name)
            if c is not None:
                mat[i, c] = v
    return Batch(rows, ts, mat)


names = st.one_of(st.sampled_from([m.name for m in METRICS]), st.sampled_from(["unknown_x", "other"]))
values = st.one_of(st.floats(), st.integers(-10**6, 10**6), st.booleans())
readings = st.builds(lambda pole, district, seq, ts, vals: Reading(pole, district, "b", seq, ts, vals),
                     st.sampled_from(["p-1", "p-2", "p-3", "p-4"]), st.sampled_from(["north", "south"]),
                     st.integers(0, 100), st.integers(0, 2**40), st.dictionaries(names, values, max_size=8))


@settings(max_examples=300)
@given(st.lists(st.lists(readings, max_size=12), min_size=1, max_size=4))
def test_batch_equals_the_per_value_reference(calls: list[list[Reading]]) -> None:
    ours, ref = FleetState(capacity=1), FleetState(capacity=1)
    for rs in calls:
        a, b = Batch.from_readings(ours, rs), reference_from_readings(ref, rs)
        assert a.values.dtype == b.values.dtype and a.values.shape == b.values.shape
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.ts, b.ts)
        assert np.array_equal(a.values, b.values, equal_nan=True)
        assert ours.poles == ref.poles and ours.pole_district == ref.pole_district
        assert np.array_equal(ours.district, ref.district)
