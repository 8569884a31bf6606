"""The encoder caches each series' escaped ``measurement,tags`` prefix and each key order's escaped ``key=``
strings: its lines must be byte-identical to the encoder before (``reference_encode`` below, that code
verbatim, with its own key-order cache), cached or not."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import schema
from contract.catalog import METRICS
from contract.readings import Point, Reading
from ingest import lineprotocol
from ingest.lineprotocol import _ESC_MEASUREMENT, _esc, _field, encode, encode_many

_REF_ORDERS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}


def reference_encode(p: Point) -> str:
    """``ingest.lineprotocol.encode`` as it was before the per-series prefix cache."""
    parts = [p.measurement.translate(_ESC_MEASUREMENT)]
    for k, v in p.tags:
        if k and v:
            parts.append(f"{_esc(k)}={_esc(v)}")
    fields = []
    f = p.fields
    keys = tuple(f)
    order = _REF_ORDERS.get(keys)
    if order is None:
        order = tuple((k, _esc(k)) for k in sorted(keys))
        if len(_REF_ORDERS) < 10_000:
            _REF_ORDERS[keys] = order
    for k, ek in order:
        val: Any = f[k]
        t = type(val)
        if t is float:
            if val - val != 0.0:
                continue
            r = repr(val)
            fields.append(f"{ek}={r[:-2] if r.endswith('.0') else r}")
        elif t is int:
            fields.append(f"{ek}={val}i")
        else:
            one = _field(k, val)
            if one is not None:
                fields.append(one)
    if not fields:
        raise ValueError(f"point for {p.measurement!r} has no writable field")
    return f"{','.join(parts)} {','.join(fields)} {p.ts_ns}"


hostile = st.text(st.sampled_from("ab ,=\\\"\n\t\r#é"), max_size=6)
measurements = st.one_of(st.sampled_from(["telemetry", "status", "alert"]), hostile)
tag_sets = st.lists(st.tuples(st.one_of(st.sampled_from(["district", "pole"]), hostile),
                              st.one_of(st.sampled_from(["north", "p-1", "p-2"]), hostile)), max_size=3)
field_values = st.one_of(st.floats(), st.integers(-(2**63), 2**63 - 1), st.booleans(), hostile)
points = st.builds(lambda m, tags, fields, ts: Point(m, tuple(sorted(tags)), fields, ts), measurements, tag_sets,
                   st.dictionaries(st.one_of(st.sampled_from(["a", "b"]), hostile), field_values, max_size=4),
                   st.integers(0, 2**62))


def _same(p: Point) -> None:
    try:
        ref = reference_encode(p)
    except ValueError:
        with pytest.raises(ValueError):
            encode(p)
        return
    assert encode(p) == ref


@settings(max_examples=400)
@given(st.lists(points, min_size=1, max_size=8))
def test_cached_prefix_lines_equal_the_reference(batch: list[Point]) -> None:
    for p in batch + batch:  # the second round hits the cache for every series
        _same(p)


@given(st.lists(points, min_size=1, max_size=8))
def test_without_room_in_the_cache_lines_still_equal_the_reference(batch: list[Point]) -> None:
    saved = lineprotocol._MAX_PREFIXES
    lineprotocol._PREFIXES.clear()
    lineprotocol._MAX_PREFIXES = 0
    try:
        for p in batch + batch:
            _same(p)
        assert not lineprotocol._PREFIXES
    finally:
        lineprotocol._MAX_PREFIXES = saved


@given(st.lists(st.tuples(st.from_regex(r"p-[0-9]{1,4}", fullmatch=True), st.sampled_from(["north", "a b,c"]),
                          st.dictionaries(st.sampled_from([m.name for m in METRICS]),
                                          st.floats(-1e6, 1e6, allow_nan=False), min_size=1)), min_size=1))
def test_a_telemetry_batch_is_byte_identical(rows: list[tuple[str, str, dict[str, float]]]) -> None:
    pts = [schema.telemetry_point(Reading(pole, d, "b", i, 1_700_000_000_000 + i, v))
           for i, (pole, d, v) in enumerate(rows)]
    assert encode_many(pts + pts) == "\n".join(reference_encode(p) for p in pts + pts).encode()
