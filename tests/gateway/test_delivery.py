"""The delivery core's pure parts (docs/delivery.md): acks in order once durable, dedup by (pole, boot,
seq) with conflicts, bounded dead letters, duplicate JSON keys, and the output stage's bisection, spool
and hold logic against an in-memory sink (the real-server proofs are the drills in tests/simulator/drills/)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.errors import StoreError, StoreRejected
from contract.models import DeadLetter
from contract.readings import Point
from gateway import deadletter
from gateway.acks import AckTracker
from gateway.decode import Reject, decode_telemetry
from gateway.dedup import SeqTracker, fingerprint
from gateway.output import Batch, Output
from gateway.pipeline import Pipeline
from gateway.spool import Spool

NOW = 1_750_000_000_000
TOPIC = "lampwatch/v1/north/p-1/telemetry"


def _msg(seq: int, ts: int, boot: str = "b1", **m: float) -> bytes:
    return json.dumps({"v": 1, "pole": "p-1", "boot": boot, "samples": [{"seq": seq, "ts": ts, "m": m}]}).encode()


def test_acks_are_released_in_arrival_order_and_only_once_delivered() -> None:
    sent: list[int] = []
    a = AckTracker(lambda mid, _qos: sent.append(mid))
    t = [a.track(mid, 1) for mid in (10, 11, 12, 13)]
    assert a.delivered([t[1], t[2]]) == 0 and sent == []  # the oldest is not durable yet
    assert a.delivered([t[0]]) == 3 and sent == [10, 11, 12]
    q0 = a.track(14, 0)  # QoS 0 needs no PUBACK but keeps its place
    assert a.delivered([q0, t[3]]) == 2 and sent == [10, 11, 12, 13] and a.pending() == 0


def test_acks_released_together_go_out_as_one_call_in_order() -> None:
    single: list[tuple[int, int]] = []
    many: list[list[int]] = []
    a = AckTracker(lambda mid, qos: single.append((mid, qos)), send_many=many.append)
    t = [a.track(mid, qos) for mid, qos in ((10, 1), (11, 0), (12, 1), (13, 2), (14, 1))]
    assert a.delivered([t[4], t[2]]) == 0 and many == []  # nothing releasable before the oldest
    assert a.delivered([t[0], t[1]]) == 3 and many == [[10, 12]] and single == []  # QoS 0 keeps its place
    assert a.delivered([t[3]]) == 2 and many == [[10, 12], [14]] and single == [(13, 2)]  # QoS 2: one by one
    assert a.pending() == 0 and a.acked == 5


def test_dedup_keys_on_boot_and_tells_conflicts_from_duplicates() -> None:
    t = SeqTracker(window=64, fp_window=16)
    fa, fb = fingerprint(1, {"x": 1.0}), fingerprint(2, {"x": 1.0})
    assert t.check("p", 5, boot="a", fp=fa) == "new"
    assert t.check("p", 5, boot="a", fp=fa) == "duplicate"  # a redelivery
    assert t.check("p", 5, boot="a", fp=fb) == "conflict"  # same identity, other content
    assert t.check("p", 5, boot="b", fp=fb) == "new"  # a reboot restarted the sequence
    assert t.check("p", 0, boot="b", fp=fa) == "new" and t.missing("p") == 0
    assert t.check("p", 5, boot="a", fp=fa) == "duplicate"  # the old boot is still remembered
    assert fingerprint(1, {"x": 1.0, "y": 2.0}) != fingerprint(1, {"x": 2.0, "y": 1.0})  # names count
    assert fingerprint(1, {"x": 1.0}) == fingerprint(1, {"x": 1.0}) != fingerprint(2, {"x": 1.0})


def test_pipeline_stores_a_rebooted_devices_samples_and_refuses_conflicts_loudly() -> None:
    p = Pipeline()
    first = [p.telemetry(TOPIC, _msg(s, NOW + s, "boot-a", tilt_deg=1.0), NOW) for s in range(5)]
    assert sum(len(o.readings) for o in first) == 5
    reboot = [p.telemetry(TOPIC, _msg(s, NOW + 100 + s, "boot-b", tilt_deg=1.0), NOW) for s in range(5)]
    assert sum(len(o.readings) for o in reboot) == 5 and p.counts["duplicates"] == 0
    forgot = p.telemetry(TOPIC, _msg(2, NOW + 999, "boot-a", tilt_deg=2.0), NOW)
    assert not forgot.readings and [r.reason for r in forgot.rejects] == ["seq_conflict"]
    again = p.telemetry(TOPIC, _msg(2, NOW + 2, "boot-a", tilt_deg=1.0), NOW)
    assert not again.readings and not again.rejects and p.counts["duplicates"] == 1
    # the conflicting sample is a refused sample, not a refused value: every sample sent is accounted
    # for as accepted, rejected or duplicate (the demo's and the drills' "lost" are built on that)
    c = p.counts
    assert (c["samples_accepted"], c["samples_rejected"], c["values_rejected"], c["conflicts"]) == (10, 1, 0, 1)
    assert c["samples_accepted"] + c["samples_rejected"] + c["duplicates"] == 12


def test_duplicate_json_keys_are_refused() -> None:
    body = _msg(1, NOW, tilt_deg=1.0).replace(b'"tilt_deg"', b'"leakage_current_ma": 25, "leakage_current_ma"')
    d = decode_telemetry(TOPIC, body.replace(b"1.0", b"0.0"), now_ms=NOW)
    assert [r.reason for r in d.rejects] == ["duplicate_key"] and not d.readings
    spaced = (b'{ "v" : 1 , "pole" : "p-1", "boot": "b", "samples": [ {"seq": 1, "ts": %d, '
              b'"m": {"tilt_deg": 1}} ] }' % NOW)
    assert decode_telemetry(TOPIC, spaced, now_ms=NOW).readings  # whitespace is not a duplicate
    status = b'{"v":1,"pole":"p-1","district":"north","state":"online","ts":%d,"state":"offline"}' % NOW
    out = Pipeline().status("lampwatch/v1/north/p-1/status", status, NOW)
    assert out.status is None and [r.reason for r in out.rejects] == ["bad_status"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300_000) | st.text(alphabet='"\\\x00\u2028é', max_size=130_000).map(str.encode),
       st.text(max_size=2000))
def test_a_dead_letter_is_small_whatever_the_input(payload: bytes, topic: str) -> None:
    rejects = [Reject("unknown_metric", "x" * 400 + '"\\', topic, payload, whole_sample=False)] * 3200
    dl = deadletter.build(rejects, NOW, 7)
    body = dl.model_dump_json()
    assert len(body.encode()) < 8192  # the broker's max_packet_size is 270,336
    back = DeadLetter.model_validate_json(body)
    assert back.size == len(payload) and back.rejects == {"unknown_metric": 3200} and back.quarantine == 7


class _Sink:
    """An in-memory store that refuses points whose field ``bad`` is set, or everything while down."""

    name = "memory"

    def __init__(self) -> None:
        self.points: dict[tuple[str, int], Point] = {}
        self.down = False
        self.writes = 0

    def write(self, points: Sequence[Point]) -> None:
        self.writes += 1
        if self.down:
            raise StoreError("down")
        bad = [p for p in points if p.fields.get("bad")]
        for p in points:  # InfluxDB 1.x: a partial write stores the good lines
            if not p.fields.get("bad"):
                self.points[(p.measurement, p.ts_ns)] = p
        if bad:
            raise StoreRejected(f"partial write: field type conflict dropped={len(bad)}")

    def close(self) -> None:
        pass


def _pts(n: int, bad: set[int] = frozenset()) -> list[Point]:  # type: ignore[assignment]
    return [Point("telemetry", (("pole", "p"),), {"x": 1.0, "bad": i in bad}, i) for i in range(n)]


def _output(tmp: Path, sink: _Sink, **kw: object) -> tuple[Output, list[int], list[tuple[Point, str]]]:
    delivered: list[int] = []
    refused: list[tuple[Point, str]] = []
    out = Output(sink, Spool(tmp / "spool.sqlite", **kw),  # type: ignore[arg-type]
                 delivered=delivered.extend, on_store_rejected=refused.extend, retry_s=0.05)
    out.start()
    return out, delivered, refused


def _until(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_output_bisects_a_refused_batch_and_stores_the_rest(tmp_path: Path) -> None:
    sink = _Sink()
    out, delivered, refused = _output(tmp_path, sink)
    assert out.put(Batch(_pts(1000, {17, 600}), [1, 2, 3]), timeout=1)
    _until(lambda: delivered == [1, 2, 3])
    out.stop()
    assert sorted(p.ts_ns for p, _why in refused) == [17, 600] and "field type conflict" in refused[0][1]
    assert len(sink.points) == 998 and out.stats["stored_points"] == 998
    assert out.stats["store_rejected_points"] == 2 and sink.writes < 60  # bisection, not 1,000 writes


def test_output_spools_while_the_store_is_down_and_holds_acks_when_the_spool_is_full(tmp_path: Path) -> None:
    sink = _Sink()
    sink.down = True
    out, delivered, _ = _output(tmp_path, sink, max_bytes=6000)
    assert out.put(Batch(_pts(20), [1]), timeout=1)
    _until(lambda: delivered == [1])  # spooled = durable = acknowledged
    assert out.spool.points == 20
    assert out.put(Batch([Point("telemetry", (), {"x": 1.0}, 10_000 + i) for i in range(200)], [2]), timeout=1)
    time.sleep(0.3)
    assert delivered == [1]  # the spool is full: held, not acknowledged, not dropped
    sink.down = False
    _until(lambda: delivered == [1, 2])
    _until(lambda: out.spool.depth == 0)
    out.stop()
    assert len(sink.points) == 220


def test_an_unexpected_error_in_the_output_thread_is_loud(tmp_path: Path) -> None:
    sink = _Sink()
    failed = threading.Event()

    def boom(_ids: list[int]) -> None:
        raise RuntimeError("ack path broken")

    out = Output(sink, Spool(tmp_path / "s.sqlite"), delivered=boom,  # type: ignore[arg-type]
                 set_health=lambda k, v: failed.set() if k == "output" and v else None)
    out.start()
    out.put(Batch(_pts(1), [1]), timeout=1)
    assert failed.wait(5) and out.failed and "ack path broken" in out.failed
