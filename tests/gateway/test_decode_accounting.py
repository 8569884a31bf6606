"""The decoder accounts for everything it is given: every sample of a parsed message is either one
reading or one whole-sample reject, and every value of a stored sample is either in the reading or in
one value-level reject. Nothing is dropped silently and nothing is counted twice.

Messages are generated structurally (valid envelopes around values in range, out of range, unknown
metric names, and device times inside and outside the accepted window), so almost every example parses,
unlike random bytes, which almost never do.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.catalog import METRICS
from gateway.decode import Limits, decode_telemetry

NOW = 1_780_000_000_000
LIM = Limits()
TOPIC = "lampwatch/v1/centre/p-000001/telemetry"
NAMES = [m.name for m in METRICS]
BY = {m.name: m for m in METRICS}

value = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32),
                  st.sampled_from([0.0, 1.0, -1.0, 1e9]))
metric_name = st.one_of(st.sampled_from(NAMES), st.from_regex(r"\Azz_[a-z0-9_]{1,8}\Z"))
ts = st.one_of(st.integers(NOW - LIM.max_past_ms + 1_000, NOW + LIM.max_future_ms - 1_000),  # accepted
               st.integers(NOW + LIM.max_future_ms + 1_000, NOW + 10 * LIM.max_future_ms),  # future
               st.integers(NOW - 2 * LIM.max_past_ms, NOW - LIM.max_past_ms - 1_000))  # past
sample = st.fixed_dictionaries({"ts": ts, "m": st.dictionaries(metric_name, value, min_size=1, max_size=12)})


def _valid(name: str, v: float) -> bool:
    m = BY.get(name)
    return m is not None and m.in_range(v)


@settings(max_examples=300, deadline=None)
@given(samples=st.lists(sample, min_size=1, max_size=8))
def test_every_sample_and_every_value_is_accounted_for(samples: list[dict[str, Any]]) -> None:
    msg = {"v": 1, "pole": "p-000001", "boot": "b-1",
           "samples": [{"seq": i, **s} for i, s in enumerate(samples)]}
    d = decode_telemetry(TOPIC, json.dumps(msg).encode(), now_ms=NOW, limits=LIM)
    by_seq = {r.seq: r for r in d.readings}
    whole = [r for r in d.rejects if r.whole_sample]
    partial = [r for r in d.rejects if not r.whole_sample]
    assert len(by_seq) == len(d.readings), "one reading per sample"
    assert len(d.readings) + len(whole) == len(samples), (d.readings, whole)
    assert {r.seq for r in whole}.isdisjoint(by_seq), "a sample is stored or refused, never both"
    for i, s in enumerate(samples):
        in_window = NOW - LIM.max_past_ms <= s["ts"] <= NOW + LIM.max_future_ms
        good = {k: v for k, v in s["m"].items() if _valid(k, v)}
        refused_values = [r for r in partial if r.seq == i]
        if not in_window:
            assert i not in by_seq
            assert [r.reason for r in whole if r.seq == i] == ["ts_future" if s["ts"] > NOW else "ts_past"]
            assert not refused_values
            continue
        # every value judged once: kept in the reading, or one value-level reject naming it
        assert len(refused_values) == len(s["m"]) - len(good)
        assert all(r.reason == ("out_of_range" if r.detail.split("=")[0] in BY else "unknown_metric")
                   for r in refused_values)
        if good:
            assert by_seq[i].values == good and by_seq[i].ts_ms == s["ts"]
        else:
            assert i not in by_seq
            assert [r.reason for r in whole if r.seq == i] == ["no_valid_values"]


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=400))
def test_bytes_that_do_not_parse_are_one_whole_message_reject(payload: bytes) -> None:
    d = decode_telemetry(TOPIC, payload, now_ms=NOW, limits=LIM)
    # random bytes never form a valid message: refused once, as the whole message, bytes kept for quarantine
    assert not d.readings
    assert [(r.whole_sample, r.seq, r.payload) for r in d.rejects] == [(True, None, payload)]
    assert d.rejects[0].reason in {"bad_utf8", "bad_json", "bad_schema", "duplicate_key", "too_large"}
