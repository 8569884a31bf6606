"""The forwarder (outbox -> publish window -> ack), pure logic over a real outbox file and a recording
publish function in place of the link."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.forwarder import Forwarder
from edge.outbox import Outbox

POLE, BOOT, TOPIC = "p-000001", "b0", "lampwatch/v1/north/p-000001/telemetry"


class Wire:
    """Stands in for MqttLink.publish: records what was sent, hands out packet ids, can refuse."""

    def __init__(self) -> None:
        self.sent: dict[int, list[int]] = {}  # mid -> seqs carried, in send order
        self.refuse = False
        self._mid = 0

    def publish(self, topic: str, payload: bytes) -> int | None:
        assert topic == TOPIC
        if self.refuse:
            return None
        self._mid += 1
        doc = json.loads(payload)
        assert doc["pole"] == POLE and doc["boot"] == BOOT
        self.sent[self._mid] = [s["seq"] for s in doc["samples"]]
        return self._mid


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "o.sqlite", sync="off")
    for i in range(6):
        ob.append(1_700_000_000_000 + i, {"tilt_deg": float(i)}, BOOT)
    yield ob
    ob.close()


def _fwd(ob: Outbox, wire: Wire, window: int = 2, max_samples: int = 1) -> Forwarder:
    return Forwarder(ob, wire.publish, pole=POLE, boot_id=BOOT, topic=TOPIC, window=window,
                     max_samples=max_samples, max_message_bytes=64 * 1024)


def test_pump_sends_oldest_first_within_the_window_and_acks_free_it(outbox: Outbox) -> None:
    wire = Wire()
    f = _fwd(outbox, wire)
    f.pump()
    assert list(wire.sent.values()) == [[0], [1]] and f.inflight == 2  # the window is full
    f.pump()
    assert len(wire.sent) == 2  # nothing more until an ack
    assert f.settle(1, 0, "Success") is True
    assert outbox.pending_seqs() == [1, 2, 3, 4, 5]
    f.pump()
    assert list(wire.sent.values())[-1] == [2] and f.inflight == 2
    assert f.counts["acked"] == 1 and f.counts["messages_sent"] == 3


def test_a_backlog_goes_several_samples_per_message(outbox: Outbox) -> None:
    wire = Wire()
    f = _fwd(outbox, wire, window=8, max_samples=4)
    f.pump()
    assert list(wire.sent.values()) == [[0, 1, 2, 3], [4, 5]]
    for mid in list(wire.sent):
        f.settle(mid, 0, "Success")
    assert outbox.depth == 0 and f.counts["acked"] == 6 and f.inflight == 0


def test_a_retryable_refusal_resends_from_the_oldest_and_a_final_one_drops(outbox: Outbox) -> None:
    wire = Wire()
    f = _fwd(outbox, wire)
    f.pump()
    assert f.settle(1, 0x97, "Quota exceeded") is True  # retryable: kept, and sent again
    assert outbox.pending_seqs() == [0, 1, 2, 3, 4, 5] and f.counts["retry"] == 1
    f.pump()
    assert list(wire.sent.values())[-1] == [0]
    assert f.settle(2, 135, "Not authorized") is True  # seq 1 refused for good: dropped and counted
    assert 1 not in outbox.pending_seqs() and f.counts["denied"] == 1


def test_a_refused_publish_keeps_everything_for_later_and_foreign_acks_are_not_ours(outbox: Outbox) -> None:
    wire = Wire()
    f = _fwd(outbox, wire)
    wire.refuse = True  # paho said no (not connected, queue full)
    f.pump()
    assert wire.sent == {} and f.inflight == 0 and outbox.depth == 6
    assert f.settle(42, 0, "Success") is False  # a status or command ack: the agent's business
    wire.refuse = False
    f.pump()
    assert list(wire.sent.values()) == [[0], [1]]
