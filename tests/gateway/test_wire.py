"""The msgspec fast path (contract.wire) against the documented pydantic schema (contract.models.Telemetry).

The fast path may only *accept*: whatever it accepts, pydantic must accept with the same content (values
of the same type and bits), and a message it refuses goes to pydantic, which then gives the verdict
and the reason. So the decoder's decisions (accept, or reject with which reason and detail) are those of
the pydantic path alone, which ``test_decode_is_decision_identical`` checks end to end.
"""

from __future__ import annotations

import json
import math
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contract import topics, wire
from contract.catalog import RANGES, admits
from contract.models import Telemetry
from gateway import decode as decode_mod
from gateway.decode import decode_telemetry

NOW = 1_800_000_000_000
TOPIC = topics.telemetry("north", "p-1")
EXAMPLES = int(os.environ.get("LAMPWATCH_FUZZ_EXAMPLES", "1500"))

# strings that sit on the patterns' edges: a trailing newline ("$" in Python's re matches before it),
# upper case, unicode digits, separators, empty, too long
edge_text = st.sampled_from(["p-1", "p-1\n", "P-1", "p-\u0661", "p+1", "", "p" * 64, "p" * 65, "b", "b\n", "B-9",
                             "tilt_deg", "tilt_deg\n", "Tilt", "x", "_x", "a" * 64, "a" * 65, "\u00e9t\u00e9"])
numbers = st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.sampled_from([0, -0.0, 1, 1e308, 2**63 - 1,
                                                                                2**63, 10**400]))
value = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=3))
sample = st.fixed_dictionaries(
    {"seq": st.one_of(st.integers(-2, 2**64), st.sampled_from([1.0, True, "1"])),
     "ts": st.one_of(st.integers(NOW - 10**12, NOW + 10**12), st.sampled_from([946_684_799_999, 946_684_800_000,
                                                                              4_102_444_800_000, 4_102_444_800_001,
                                                                              1.8e12]))},
    optional={"m": st.dictionaries(st.one_of(edge_text, st.sampled_from(["tilt_deg", "smoke", "noise_db"])), value,
                                   max_size=4),
              "extra": st.just(1)})
message = st.fixed_dictionaries(
    {"pole": edge_text, "boot": edge_text, "samples": st.lists(sample, max_size=3)},
    optional={"v": st.sampled_from([1, 2, 1.0, True, "1"]), "evicted": st.one_of(st.integers(-2, 5), st.just(1.5)),
              "more": st.just(0)})


def _render(v: object) -> bytes:
    # allow_nan: NaN/Infinity literals are not JSON; both decoders must refuse them
    return json.dumps(v, allow_nan=True).encode()


def _same(a: float, b: float) -> bool:
    return type(a) is type(b) and (math.copysign(1, a) == math.copysign(1, b)) and (a == b or (a != a and b != b))


valid_sample = st.fixed_dictionaries(
    {"seq": st.integers(0, 2**63 - 1), "ts": st.integers(NOW - 10**9, NOW),
     "m": st.dictionaries(st.sampled_from(["tilt_deg", "smoke", "noise_db", "leakage_current_ma"]),
                          st.floats(-1e6, 1e6) | st.integers(-100, 100), min_size=1, max_size=4)})
valid = st.fixed_dictionaries({"pole": st.just("p-1"), "boot": st.sampled_from(["b", "3f2a-9"]),
                               "samples": st.lists(valid_sample, min_size=1, max_size=3)},
                              optional={"v": st.just(1), "evicted": st.integers(0, 5)})


@st.composite
def one_field_off(draw: st.DrawFn) -> dict[str, object]:
    """A valid message with one field (top level, one sample's, or one metric name) made an edge case."""
    m = draw(valid)
    where = draw(st.sampled_from(["pole", "boot", "v", "evicted", "seq", "ts", "metric", "value", "extra"]))
    s = m["samples"][0]  # type: ignore[index]
    if where in ("pole", "boot"):
        m[where] = draw(edge_text)
    elif where in ("v", "evicted"):
        m[where] = draw(st.sampled_from([0, 1, 2, -1, 1.0, 1.5, True, None, "1"]))
    elif where in ("seq", "ts"):
        s[where] = draw(st.one_of(st.sampled_from([-1, 2**63 - 1, 2**63, 1.0, True, None, "1", 946_684_799_999,
                                                   4_102_444_800_001]), numbers))
    elif where == "metric":
        s["m"][draw(edge_text)] = 1.0
    elif where == "value":
        s["m"]["tilt_deg"] = draw(value)
    else:
        (m if draw(st.booleans()) else s)["zz"] = 1
    return m  # type: ignore[no-any-return]


payloads = st.one_of(
    valid.map(_render),
    one_field_off().map(_render),
    message.map(_render),
    st.binary(max_size=200),
    # near-valid: a real message with bytes cut off, or with a key repeated (at the top, in a sample, in m)
    message.map(lambda m: _render(m)[:-1]),
    st.builds(lambda m, at: _render(m).replace(*at, 1), valid,
              st.sampled_from([(b'{"pole"', b'{"pole":"p-2","pole"'), (b'{"seq"', b'{"seq":0,"seq"'),
                               (b'"m": {', b'"m": {"tilt_deg": 1.0, '), (b'"m": {', b'"m": {"x": 1.0, "x": 2.0, ')])),
    st.builds(lambda k, v: b'{"pole":"p-1","boot":"b","samples":[{"seq":1,"ts":1800000000000,"m":{"%s":%s}}]}'
              % (k.encode(), v.encode()), st.sampled_from(["tilt_deg", "x", "tilt_deg\\n", "Tilt"]),
              st.sampled_from(["1", "1.5e3", "-0", "1e400", "-1e400", "NaN", "true", "\"1\"", "99999999999999999999",
                               "1" * 400])),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(payloads)
def test_fast_path_accepts_only_what_pydantic_accepts_with_the_same_content(payload: bytes) -> None:
    got = wire.decode_telemetry(payload)
    try:
        ref: Telemetry | None = Telemetry.model_validate_json(payload)
    except ValidationError:
        ref = None
    if got is None:
        return  # refused by the fast path: pydantic judges it (whatever it decides is the decision)
    fast, clean = got
    assert ref is not None, f"msgspec accepted what pydantic refuses: {payload!r}"
    # "clean" promises the decoder's per-value loop would keep every value: each known and admitted
    assert clean == all(k in RANGES and admits(RANGES[k], v) for s in fast.samples for k, v in s.m.items())
    assert (fast.pole, fast.boot, fast.evicted_n) == (ref.pole, ref.boot, ref.evicted)
    assert len(fast.samples) == len(ref.samples)
    for fs, rs in zip(fast.samples, ref.samples, strict=True):
        assert (fs.seq, fs.ts) == (rs.seq, rs.ts) and type(fs.seq) is type(rs.seq) is int
        assert list(fs.m) == list(rs.m)  # same keys in the same order (the dedup fingerprint hashes it)
        assert all(_same(fs.m[k], rs.m[k]) for k in fs.m)
    assert fast.members() == decode_mod._members(ref)


def test_fast_path_takes_the_simulators_messages() -> None:
    """The fast path really is the path: lampwatch's own telemetry never falls back to pydantic."""
    from bench.hotpath import render

    msgs = render(200, 1)
    got = [wire.decode_telemetry(p) for _t, p in msgs]
    assert msgs and all(g is not None and g[1] for g in got)  # accepted, and clean: no per-value loop


@settings(max_examples=EXAMPLES, deadline=None)
@given(payloads)
def test_decode_is_decision_identical(payload: bytes) -> None:
    """``decode_telemetry`` with the fast path gives exactly what the pydantic-only path gives: the same
    readings (values, types, order) and the same rejects (reason, detail, seq)."""
    fast = decode_telemetry(TOPIC, payload, now_ms=NOW)
    saved = wire.decode_telemetry
    decode_mod.wire.decode_telemetry = lambda _p: None  # type: ignore[assignment]
    try:
        slow = decode_telemetry(TOPIC, payload, now_ms=NOW)
    finally:
        decode_mod.wire.decode_telemetry = saved  # type: ignore[assignment]
    assert fast.evicted == slow.evicted
    assert [(r.reason, r.detail, r.seq, r.whole_sample) for r in fast.rejects] == \
        [(r.reason, r.detail, r.seq, r.whole_sample) for r in slow.rejects]
    assert [(r.pole, r.district, r.boot, r.seq, r.ts_ms) for r in fast.readings] == \
        [(r.pole, r.district, r.boot, r.seq, r.ts_ms) for r in slow.readings]
    for a, b in zip(fast.readings, slow.readings, strict=True):
        assert list(a.values) == list(b.values) and all(_same(a.values[k], b.values[k]) for k in a.values)
