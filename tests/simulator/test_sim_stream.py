from __future__ import annotations

import hashlib
import json

import pytest

from contract import topics
from contract.catalog import BY_NAME
from contract.models import Telemetry
from gateway.decode import decode_telemetry
from simulator.city import City, CityConfig
from simulator.faults import DELIVERY_KINDS, Fault, labels_csv, random_faults
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream
from tests.simulator.sim_helpers import HOUR, MIN, T0

STEP = 10_000


def _build(seed: int, faults: list[Fault] | None = None, poles: int = 25,
           rate: float = 4.0, kinds: tuple[str, ...] | None = None) -> tuple[TelemetryStream, list[Fault]]:
    city = City(CityConfig(seed=seed, poles=poles, districts=min(3, poles)))
    if faults is None:
        faults = random_faults(city, seed, T0, T0 + 2 * HOUR, rate=rate, kinds=kinds)
    return TelemetryStream(city, SignalModel(city, seed), faults, T0, STEP, seed), faults


def _digest(stream: TelemetryStream, n: int) -> str:
    h = hashlib.sha256()
    for msgs in stream.ticks(n):
        for topic, payload in msgs:
            h.update(topic.encode() + b"\0" + payload + b"\1")
    return h.hexdigest()


def test_same_seed_byte_identical_stream_and_labels_other_seed_differs() -> None:
    a, fa = _build(11)
    b, fb = _build(11)
    c, fc = _build(12)
    assert labels_csv(fa) == labels_csv(fb) and labels_csv(fa) != labels_csv(fc)
    da, db, dc = _digest(a, 200), _digest(b, 200), _digest(c, 200)
    assert da == db and da != dc
    assert a.counters == b.counters


def test_clean_stream_messages_validate_and_match_the_model() -> None:
    stream, _ = _build(3, faults=[])
    city = stream.city
    for k in range(30):
        t = T0 + k * STEP
        msgs = stream.tick()
        assert len(msgs) == len(city)
        values = stream.model.sample(t)
        for i, (topic, payload) in enumerate(msgs):
            p = city.poles[i]
            assert topic == topics.telemetry(p.district, p.pole_id)
            msg = Telemetry.model_validate_json(payload)
            assert msg.pole == p.pole_id and msg.boot == stream.boot(i)
            (s,) = msg.samples
            assert s.seq == k and s.ts == t
            assert list(s.m) == list(p.sensors)
            for name, v in s.m.items():
                assert BY_NAME[name].in_range(v)
                assert v == values[i, list(BY_NAME).index(name)]
            assert b" " not in payload and b"\n" not in payload  # compact
            assert list(json.loads(payload)) == ["v", "pole", "boot", "samples", "evicted"]
            d = decode_telemetry(topic, payload, now_ms=t)
            assert not d.rejects and len(d.readings) == 1
    assert stream.published_samples == 30 * len(city) and stream.expected_rejects == 0


def test_every_message_of_a_faulty_stream_is_accounted_for() -> None:
    """Decoding the whole stream: rejects equal expected_rejects, accepted samples equal
    published_samples + duplicates, and no exception escapes."""
    stream, faults = _build(5, rate=30.0, kinds=(*DELIVERY_KINDS, "leakage", "stuck"))
    kinds = {f.kind for f in faults}
    assert {"dropout", "offline", "duplicate", "malformed", "hostile", "clock_skew"} <= kinds
    rejected = accepted = 0
    for _ in range(720):  # two hours
        now = stream.now_ms
        for topic, payload in stream.tick():
            d = decode_telemetry(topic, payload, now_ms=now)
            if d.rejects:
                rejected += 1
                assert not d.readings and all(r.reason for r in d.rejects)
            else:
                Telemetry.model_validate_json(payload)
            accepted += len(d.readings)
    tail = stream.flush_held()
    for topic, payload in tail:
        accepted += len(decode_telemetry(topic, payload, now_ms=stream.now_ms).readings)
    assert rejected == stream.expected_rejects > 0
    assert accepted == stream.published_samples + stream.duplicates
    assert stream.dropped > 0 and stream.duplicates > 0


def _pole_msgs(stream: TelemetryStream, pole: str, n: int) -> list[list[Telemetry | bytes]]:
    """Per tick, what the pole sent (parsed when valid, raw bytes otherwise)."""
    topic = stream.topics[stream.city.pole(pole).index]
    out: list[list[Telemetry | bytes]] = []
    for msgs in stream.ticks(n):
        got: list[Telemetry | bytes] = []
        for t, p in msgs:
            if t != topic:
                continue
            try:
                got.append(Telemetry.model_validate_json(p))
            except ValueError:
                got.append(p)
        out.append(got)
    return out


def test_offline_sends_nothing_then_reboots_with_a_new_boot_and_monotonic_seq() -> None:
    f = Fault.make("offline", "p-000002", T0 + 10 * STEP, T0 + 20 * STEP)
    stream, _ = _build(1, [f])
    per_tick = _pole_msgs(stream, "p-000002", 30)
    assert all(per_tick[k] == [] for k in range(10, 20))
    before, after = per_tick[9][0], per_tick[20][0]
    assert isinstance(before, Telemetry) and isinstance(after, Telemetry)
    # the edge contract: seq is per pole and persisted, so it carries on across the reboot
    assert before.samples[0].seq == 9 and after.samples[0].seq == 10 and after.boot != before.boot
    seqs = [m.samples[0].seq for msgs in per_tick for m in msgs if isinstance(m, Telemetry)]
    assert seqs == list(range(20))
    assert stream.published_samples == 30 * len(stream.city) - 10


def test_a_rebooted_pole_is_not_dropped_by_the_gateway_dedup() -> None:
    from gateway.dedup import SeqTracker

    f = Fault.make("offline", "p-000002", T0 + 5 * STEP, T0 + 8 * STEP)
    stream, _ = _build(1, [f], poles=4)
    tracker = SeqTracker()
    verdicts = []
    for msgs in stream.ticks(15):
        for _topic, payload in msgs:
            msg = Telemetry.model_validate_json(payload)
            verdicts += [tracker.check(msg.pole, s.seq) for s in msg.samples]
    assert verdicts.count("duplicate") == 0
    assert len(verdicts) == stream.published_samples == 15 * 4 - 3
    assert tracker.missing("p-000002") == 0  # the outage produced no samples: no gap either


def test_dropout_leaves_seq_gaps() -> None:
    f = Fault.make("dropout", "p-000001", T0, T0 + 100 * STEP, magnitude=0.5)
    stream, _ = _build(2, [f])
    per_tick = _pole_msgs(stream, "p-000001", 100)
    seqs = [m.samples[0].seq for msgs in per_tick for m in msgs if isinstance(m, Telemetry)]
    assert 20 < len(seqs) < 80 and seqs == sorted(seqs) and seqs[-1] >= 98 - 1
    assert stream.dropped == 100 - len(seqs)


def test_duplicate_repeats_the_same_bytes() -> None:
    f = Fault.make("duplicate", "p-000003", T0, T0 + 20 * STEP, magnitude=1.0)
    stream, _ = _build(2, [f])
    topic = stream.topics[3]
    for _ in range(20):
        mine = [p for t, p in stream.tick() if t == topic]
        assert len(mine) == 2 and mine[0] == mine[1]
    assert stream.duplicates == 20


@pytest.mark.parametrize(("skew", "rejected"), [(-120_000, False), (90_000, False), (600_000, True)])
def test_clock_skew_shifts_device_time(skew: int, rejected: bool) -> None:
    f = Fault.make("clock_skew", "p-000004", T0, T0 + 10 * STEP, magnitude=skew)
    stream, _ = _build(2, [f])
    topic = stream.topics[4]
    for k in range(10):
        now = stream.now_ms
        (payload,) = [p for t, p in stream.tick() if t == topic]
        assert Telemetry.model_validate_json(payload).samples[0].ts == T0 + k * STEP + skew
        assert bool(decode_telemetry(topic, payload, now_ms=now).rejects) is rejected
    assert stream.expected_rejects == (10 if rejected else 0)


def test_malformed_and_hostile_are_injected_and_counted() -> None:
    faults = [Fault.make("malformed", "p-000005", T0, T0 + 200 * STEP, magnitude=0.5),
              Fault.make("hostile", "p-000006", T0, T0 + 200 * STEP, magnitude=0.5)]
    stream, _ = _build(4, faults)
    reasons: set[str] = set()
    n_rej = 0
    for _ in range(200):
        now = stream.now_ms
        for topic, payload in stream.tick():
            d = decode_telemetry(topic, payload, now_ms=now)
            n_rej += bool(d.rejects)
            reasons |= {r.reason for r in d.rejects}
    assert n_rej == stream.expected_rejects > 40
    assert {"bad_json", "bad_schema", "bad_topic", "too_large", "pole_mismatch"} <= reasons


def test_accepted_values_never_leave_the_catalog_range_under_faults() -> None:
    stream, _ = _build(9, rate=20.0, poles=15)
    n = 0
    for _ in range(300):
        now = stream.now_ms
        msgs = stream.tick()
        n += len(msgs)
        for topic, payload in msgs:
            d = decode_telemetry(topic, payload, now_ms=now)
            if not d.rejects:
                msg = Telemetry.model_validate_json(payload)
                assert all(BY_NAME[k].in_range(v) for s in msg.samples for k, v in s.m.items())
    assert n == stream.published_messages


def test_step_must_be_positive() -> None:
    city = City(CityConfig(poles=2, districts=1))
    with pytest.raises(ValueError):
        TelemetryStream(city, SignalModel(city, 0), [], T0, 0, 0)


def test_now_advances_by_step() -> None:
    stream, _ = _build(1, faults=[], poles=2)
    stream.tick()
    stream.tick()
    assert stream.now_ms == T0 + 2 * STEP and stream.ticks_done == 2
    assert MIN % STEP == 0
