"""Pure gateway core: decode, dedup, batcher, spool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import topics
from contract.errors import SpoolFull
from contract.readings import Point
from gateway.batcher import Batcher
from gateway.decode import decode_telemetry
from gateway.dedup import SeqTracker
from gateway.spool import Spool

NOW = 1_800_000_000_000
TOPIC = topics.telemetry("north", "p-1")


def msg(samples: list[dict[str, object]], pole: str = "p-1") -> bytes:
    return json.dumps({"v": 1, "pole": pole, "boot": "b", "samples": samples}).encode()


def test_partial_sample_keeps_good_values_and_rejects_bad_ones() -> None:
    d = decode_telemetry(TOPIC, msg([{"seq": 1, "ts": NOW, "m": {"leakage_current_ma": 3.0, "noise_db": -5.0,
                                                                     "foo_bar": 1.0}}]), now_ms=NOW)
    assert [r.values for r in d.readings] == [{"leakage_current_ma": 3.0}]
    assert sorted(r.reason for r in d.rejects) == ["out_of_range", "unknown_metric"]
    assert d.rejected_samples == 0 and "noise_db=-5.0" in next(r.detail for r in d.rejects
                                                                 if r.reason == "out_of_range")


def test_time_window_is_enforced_per_sample() -> None:
    d = decode_telemetry(TOPIC, msg([{"seq": 1, "ts": NOW + 301_000, "m": {"tilt_deg": 1.0}},
                                     {"seq": 2, "ts": NOW + 299_000, "m": {"tilt_deg": 1.0}},
                                     {"seq": 3, "ts": NOW - 31 * 86_400_000, "m": {"tilt_deg": 1.0}}]), now_ms=NOW)
    assert [r.seq for r in d.readings] == [2]
    assert [(r.reason, r.seq) for r in d.rejects] == [("ts_future", 1), ("ts_past", 3)]


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=int(os.environ.get("LAMPWATCH_FUZZ_EXAMPLES", "1500")), deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"v": st.just(1), "pole": st.sampled_from(["p-1", "p-2", "p+1", ""]),
                           "boot": st.text(max_size=5),
                           "samples": st.lists(st.fixed_dictionaries(
                               {"seq": st.integers(-2, 2**64), "ts": st.integers(0, 2 * NOW),
                                "m": st.dictionaries(st.sampled_from(["tilt_deg", "smoke", "x", "noise_db"]),
                                                     st.floats() | st.integers() | st.text(max_size=3))}),
                               max_size=3)}).map(lambda v: json.dumps(v).encode()),
), st.sampled_from([TOPIC, "lampwatch/v1/north/p-1/status", "lampwatch/v1/no rth/p-1/telemetry", "x"]))
def test_decoder_never_raises_and_accounts_for_every_sample(payload: bytes, topic: str) -> None:
    d = decode_telemetry(topic, payload, now_ms=NOW)
    assert d.readings or d.rejects
    for r in d.rejects:
        assert r.reason and r.detail
    for r in d.readings:
        assert r.values and r.pole == "p-1"


def test_dedup_window_duplicates_gaps_and_late_fill() -> None:
    t = SeqTracker(window=8)
    assert [t.check("a", s) for s in (1, 2, 2, 5)] == ["new", "new", "duplicate", "new"]
    assert t.missing("a") == 2
    assert t.check("a", 3) == "new" and t.check("a", 4) == "new" and t.missing("a") == 0
    assert t.check("a", 4) == "duplicate"
    assert t.check("a", 100) == "new" and t.check("a", 50) == "late"  # older than the window: accepted
    assert t.check("b", 100) == "new"  # poles are independent


def test_batcher_flushes_on_size_and_age() -> None:
    b: Batcher[int] = Batcher(max_items=3, max_age_s=1.0)
    assert b.add(1, 0.0) is None and b.add(2, 0.1) is None
    assert b.add(3, 0.2) == [1, 2, 3]
    assert b.add(4, 5.0) is None and b.due(5.9) is None and b.due(6.0) == [4] and len(b) == 0
    assert b.add(5, 7.0, weight=10) == [5]  # weight counts points, not messages


def test_spool_is_durable_ordered_and_bounded(tmp_path: Path) -> None:
    p = tmp_path / "spool.sqlite"
    s = Spool(p, max_bytes=4000)
    batches = [[Point("telemetry", (("pole", f"p-{i}"),), {"x": float(i), "s": "q\""}, i)] for i in range(5)]
    for b in batches:
        s.append(b)
    s.close()
    s = Spool(p, max_bytes=4000)  # reopened as after a crash
    assert s.depth == 5 and s.points == 5
    got = []
    while (head := s.peek()) is not None:
        got.append(head[1])
        s.pop(head[0])
    assert got == batches and s.depth == 0 and s.nbytes == 0
    big = [Point("telemetry", (("pole", "p"),), {"x": 1.0}, i) for i in range(200)]
    with pytest.raises(SpoolFull):
        s.append(big)
    s.close()


def test_spool_watch_levels() -> None:
    from gateway.spool import SpoolWatch

    w = SpoolWatch(warn_after_s=30, critical_fraction=0.5)
    assert w.update(0, 0, 0, 100) is None
    assert w.update(1, 10, 5, 100) is None  # just started: not yet an alarm
    assert w.update(31, 10, 5, 100) == 2  # held for 30 s: warning
    assert w.update(32, 10, 60, 100) == 3  # half the bound: critical
    assert w.update(33, 10, 60, 100) is None
    assert w.update(40, 0, 0, 100) == 0  # drained: cleared


def test_device_evictions_are_summed_per_pole_and_boot() -> None:
    from gateway.pipeline import Pipeline

    pl = Pipeline()

    def send(pole: str, boot: str, seq: int, evicted: int) -> None:
        body = json.dumps({"v": 1, "pole": pole, "boot": boot, "evicted": evicted,
                           "samples": [{"seq": seq, "ts": NOW, "m": {"tilt_deg": 1.0}}]}).encode()
        pl.telemetry(topics.telemetry("north", pole), body, NOW)

    send("p-1", "b1", 1, 5)
    send("p-1", "b1", 2, 7)  # since-boot counter grew by 2
    send("p-2", "b1", 1, 3)
    send("p-1", "b2", 3, 1)  # rebooted: a new since-boot count
    assert pl.counts["device_evictions_reported"] == 7 + 3 + 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyzuv"), st.integers(0, 300)), max_size=200))
def test_the_running_gap_total_is_the_sum_of_every_window(checks: list[tuple[str, str, int]]) -> None:
    t = SeqTracker(window=64, fp_window=8, max_boots=2)  # small: windows slide and boots are evicted
    for pole, boot, seq in checks:
        t.check(pole, seq, boot=boot)
        assert t.total_missing() == sum(w.missing for boots in t._poles.values() for w in boots.values()) >= 0
