"""The alarm policy keeps an active alarm's fields in a dict instead of dense (rows, rules) arrays: it
must decide exactly as the dense policy did (``dense_alarms_ref.DenseAlarmPolicy``, the code before)."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.detect import state
from gateway.detect.alarms import AlarmPolicy
from gateway.detect.rules import AlarmSpec, Conditions, Tier
from tests.gateway.detect.dense_alarms_ref import DenseAlarmPolicy

SPECS = (
    AlarmSpec("a", "kind_a", "m", (Tier("warning", "a warn"), Tier("critical", "a crit", fast=True)),
              raise_n=2, raise_ms=5_000, clear_n=2, unit="V", ref_label="ref"),
    AlarmSpec("b", "kind_b", None, (Tier("warning", "b warn"),), raise_n=3, raise_ms=0, clear_n=1),
    AlarmSpec("c", "kind_c", "m", (Tier("info", "c info", fast=True), Tier("warning", "c warn"),
                                   Tier("critical", "c crit")), raise_n=1, raise_ms=60_000, clear_n=3),
)

finite = st.floats(-1e6, 1e6, allow_nan=False)
cond = st.tuples(st.integers(0, 40), st.integers(0, len(SPECS) - 1), st.integers(0, 3), st.integers(0, 3),
                 st.one_of(finite, st.just(float("nan"))), st.one_of(finite, st.just(float("nan"))),
                 st.floats(0, 1), st.integers(0, 4_000))
batches = st.lists(st.lists(cond, max_size=30), min_size=1, max_size=12)


def _conditions(batch: list[tuple[int, int, int, int, float, float, float, int]], t0: int) -> Conditions:
    if not batch:
        return Conditions.empty()
    rows, spec, trig, hold, value, ref, score, dt = zip(*batch, strict=True)
    ts = t0 + np.cumsum(np.asarray(dt, np.int64))
    return Conditions(np.asarray(rows, np.int64), np.asarray(spec, np.int64), np.asarray(trig, np.int8),
                      np.asarray(hold, np.int8), np.asarray(value, np.float64), np.asarray(ref, np.float64),
                      np.asarray(score, np.float64), ts)


def _same(a: object, b: object) -> bool:
    """Equal field by field, NaN equal to NaN (repr spells every float exactly)."""
    return repr(a) == repr(b)


def _name(row: int) -> tuple[str, str]:
    return "d", f"p{row}"


@settings(max_examples=150, deadline=None)
@given(batches, st.sampled_from([1, 4, 64]), st.booleans())
def test_same_transitions_active_and_export_as_the_dense_policy(feed: list[list[tuple]], capacity: int,
                                                               in_place: bool) -> None:
    """Also with every array growing in place in a reservation (``in_place``), as large fleets' arrays do."""
    with patch.object(state, "RESERVE_MIN_BYTES", 0 if in_place else state.RESERVE_MIN_BYTES):
        _same_as_dense(feed, capacity)


def _same_as_dense(feed: list[list[tuple]], capacity: int) -> None:
    new, ref = AlarmPolicy(SPECS, capacity=capacity), DenseAlarmPolicy(SPECS, capacity=capacity)
    t0 = 1_700_000_000_000
    for batch in feed:
        c = _conditions(batch, t0)
        t0 += 10_000
        assert _same(new.step(c), ref.step(c))
        assert _same(new.active(), ref.active())
        assert new.counts == ref.counts
        for row in range(0, 41, 7):
            for s in SPECS:
                assert new.level(row, s.key) == ref.level(row, s.key)
        assert (new.engaged(41, len(SPECS)) == ref.engaged(41, len(SPECS))).all()
    saved = new.export(_name)
    assert _same(saved, ref.export(_name))
    rows = {f"p{r}": r for r in range(41)}
    new2, ref2 = AlarmPolicy(SPECS), DenseAlarmPolicy(SPECS)
    assert new2.restore(saved, lambda _d, e: rows[e]) == ref2.restore(saved, lambda _d, e: rows[e])
    assert _same(new2.active(), ref2.active())
    c = _conditions([(r, k, 0, 0, 1.0, 2.0, 0.5, 1) for r in range(0, 41, 3) for k in range(len(SPECS))], t0)
    assert _same(new2.step(c), ref2.step(c))
    assert _same(new2.active(), ref2.active())


def test_the_dense_fields_are_gone() -> None:
    """What the change was for: per (row, rule) cell only level and the two counters (int8 here), and the
    pending times (since, last seen) only for the rules with a raise_ms (a and c)."""
    p = AlarmPolicy(SPECS, capacity=1024)
    assert sum(a.nbytes for a in p._a.values()) == 1024 * (len(SPECS) * (1 + 1 + 1) + 2 * 2 * 8)


def test_counters_reach_a_long_minimum_duration() -> None:
    """A rule asking for more samples than int8 holds keeps int32 counters and still raises on time."""
    spec = AlarmSpec("long", "kind_l", None, (Tier("warning", "long"),), raise_n=300, raise_ms=0, clear_n=200)
    p = AlarmPolicy((spec,))
    seen = []
    for i in range(301):
        seen += p.step(Conditions(np.array([0]), np.array([0]), np.array([1], np.int8), np.array([1], np.int8),
                                  np.array([1.0]), np.array([np.nan]), np.array([1.0]), np.array([i], np.int64)))
    assert [t.ts_ms for t in seen] == [299]
