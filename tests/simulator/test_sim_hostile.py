from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.models import Telemetry
from gateway.decode import MAX_PAYLOAD_BYTES, decode_telemetry
from simulator.city import City, CityConfig
from simulator.hostile import (
    ACCEPTED_KINDS,
    DEFAULT_NOW_MS,
    EXPECTED_REASONS,
    HOSTILE_KINDS,
    hostile_message,
    hostile_messages,
    is_valid_publish_topic,
)

CITY = City(CityConfig(seed=4, poles=30, districts=3))


def _decode(topic: str, payload: bytes, now: int = DEFAULT_NOW_MS):  # type: ignore[no-untyped-def]
    return decode_telemetry(topic, payload, now_ms=now)


def test_every_kind_covered_and_every_refused_kind_is_rejected_with_its_reason() -> None:
    msgs = hostile_messages(np.random.default_rng(1), 20 * len(HOSTILE_KINDS), CITY)
    assert {k for _, _, k in msgs} == set(HOSTILE_KINDS)
    for topic, payload, kind in msgs:
        assert is_valid_publish_topic(topic), topic
        d = _decode(topic, payload)
        if kind in ACCEPTED_KINDS:
            assert not d.rejects and d.readings, kind
            Telemetry.model_validate_json(payload)
        else:
            assert d.rejects and not d.readings, (kind, payload[:200])
            assert {r.reason for r in d.rejects} <= EXPECTED_REASONS[kind], (kind, d.rejects[0].detail)
            assert all(r.detail for r in d.rejects)


def test_specific_attacks_are_really_in_the_payload_or_topic() -> None:
    msgs = hostile_messages(np.random.default_rng(2), 60 * len(HOSTILE_KINDS), CITY)
    by = {k: [(t, p) for t, p, kk in msgs if kk == k] for k in HOSTILE_KINDS}
    assert all(len(p) > MAX_PAYLOAD_BYTES for _, p in by["huge"])
    assert all(p.count(b"[") + p.count(b"{") > 4_000 for _, p in by["deep_nesting"])
    assert all(any(x in p for x in (b"NaN", b"Infinity", b"nan", b"inf", b"1e999")) for _, p in by["nan_inf"])
    for _, p in by["bad_utf8"]:
        with pytest.raises(UnicodeDecodeError):
            p.decode("utf-8")
    injected = b"".join(p for _, p in by["injection_payload"]).decode()
    for ch in ("+", "#", ",", "=", " ", '\\"', "\\n"):
        assert ch in injected, ch
    topic_levels = "".join(t for t, _ in by["injection_topic"])
    for ch in (",", "=", " ", '"'):
        assert ch in topic_levels, ch
    for t, p in by["pole_mismatch"]:
        assert json.loads(p)["pole"] not in t.split("/")
    for _, p in by["future_ts"]:
        assert json.loads(p)["samples"][0]["ts"] > DEFAULT_NOW_MS + 5 * 60_000


def test_publish_topic_rule() -> None:
    assert is_valid_publish_topic("lampwatch/v1/a/p-1,x=1 y/telemetry")
    for bad in ("", "a/+/b", "a/#", "a\x00b", "a\nb"):
        assert not is_valid_publish_topic(bad)


def test_same_rng_same_messages() -> None:
    a = hostile_messages(np.random.default_rng(9), 40, CITY)
    b = hostile_messages(np.random.default_rng(9), 40, CITY)
    c = hostile_messages(np.random.default_rng(10), 40, CITY)
    assert a == b and a != c


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError):
        hostile_message("nope", np.random.default_rng(0), CITY, CITY.poles[0])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(HOSTILE_KINDS),
       now=st.integers(1_000_000_000_000, 4_000_000_000_000))
def test_no_exception_escapes_the_decoder(seed: int, kind: str, now: int) -> None:
    rng = np.random.default_rng(seed)
    (topic, payload, k), = hostile_messages(rng, 1, CITY, now_ms=now, kinds=(kind,))
    assert is_valid_publish_topic(topic)
    d = _decode(topic, payload, now)
    assert bool(d.rejects) is (k not in ACCEPTED_KINDS)


def test_time_window_attacks_are_out_of_the_window_of_a_gateway_ahead_of_the_simulated_city() -> None:
    # a demo starts its city a day back: a "future" timestamp a few hours past the city's time is in the
    # past for the gateway, so a valid reading the dedup stage counted as a duplicate (the demo's lost=1)
    wall, sim = DEFAULT_NOW_MS, DEFAULT_NOW_MS - 86_400_000
    kinds = ("future_ts", "stale_ts")

    def admitted(clock_ms: int | None) -> int:
        msgs = hostile_messages(np.random.default_rng(3), 3000, CITY, now_ms=sim, clock_ms=clock_ms, kinds=kinds)
        return sum(bool(_decode(t, p, wall).readings) for t, p, _ in msgs)

    assert admitted(wall) == 0
    assert admitted(None) > 0  # judged against the city's clock, some get through: the test can fail
