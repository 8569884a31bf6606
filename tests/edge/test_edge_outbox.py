"""The outbox: durable, ordered, bounded, every eviction counted — checked by a state machine."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edge.outbox import Outbox

BOOT = "b0"


def test_append_peek_ack_and_monotonic_seq_across_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    seqs = [ob.append(1_700_000_000_000, {"tilt_deg": 0.5}, BOOT) for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    batch = ob.peek(-1, max_samples=3)
    assert [p.seq for p in batch] == [0, 1, 2]
    # same millisecond: timestamps are made strictly increasing
    assert [json.loads(p.body)["ts"] for p in batch] == [1_700_000_000_000 + i for i in range(3)]
    assert ob.ack([0, 1, 99]) == 2
    ob.close()
    ob = Outbox(tmp_path / "o.sqlite")
    assert ob.pending_seqs() == [2, 3, 4]
    assert ob.append(1_600_000_000_000, {"tilt_deg": 0.5}, "b1") == 5  # ts never goes back either
    assert json.loads(ob.peek(4)[0].body)["ts"] > 1_700_000_000_004
    # one boot per batch
    assert [p.seq for p in ob.peek(-1)] == [2, 3, 4]
    assert [p.seq for p in ob.peek(4)] == [5]
    ob.close()


def test_bounds_evict_oldest_first_and_count(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", max_bytes=2000, max_age_s=10)
    for i in range(40):
        ob.append(1_700_000_000_000 + i * 1000, {"leakage_current_ma": 2.0}, BOOT)
    left = ob.pending_seqs()
    assert left == list(range(40 - len(left), 40))
    assert ob.evicted_session == ob.evicted_total == 40 - len(left) > 0
    assert ob.bytes <= 2000
    n = ob.evict_expired(1_700_000_000_000 + 45_000)  # keeps ts >= 35 s
    assert ob.pending_seqs() == list(range(35, 40))
    assert ob.evicted_total == 35 and n > 0
    ob.close()
    assert Outbox(tmp_path / "o.sqlite").evicted_total == 35


def test_invalid_sample_is_refused_without_using_a_seq(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    with pytest.raises(ValueError):
        ob.append(1_700_000_000_000, {}, BOOT)
    with pytest.raises(ValueError):
        ob.append(1_700_000_000_000, {"tilt_deg": float("nan")}, BOOT)
    assert ob.append(1_700_000_000_000, {"tilt_deg": 1.0}, BOOT) == 0
    ob.close()


class OutboxMachine(RuleBasedStateMachine):
    """Model: the list of unacked, unevicted seqs in order, the acked set, the eviction count."""

    @initialize(max_bytes=st.sampled_from([1500, 4000, 1 << 20]))
    def open(self, max_bytes: int) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "o.sqlite"
        self.max_bytes = max_bytes
        self.ob = Outbox(self.path, max_bytes=max_bytes, max_age_s=100)
        self.pending: list[int] = []
        self.acked: set[int] = set()
        self.issued: list[int] = []
        self.evicted = 0
        self.now = 1_700_000_000_000

    def teardown(self) -> None:
        if hasattr(self, "ob"):
            self.ob.close()
            self.dir.cleanup()

    def _sync_evictions(self) -> None:
        """Whatever left the outbox without an ack must be the oldest pending ones, and counted."""
        actual = self.ob.pending_seqs()
        gone = [s for s in self.pending if s not in set(actual)]
        assert gone == self.pending[: len(gone)], "evicted out of order"
        self.evicted += len(gone)
        self.pending = self.pending[len(gone):]
        assert self.ob.evicted_total == self.evicted

    @rule(n=st.integers(1, 5), dt=st.integers(0, 3000), width=st.integers(1, 6))
    def enqueue(self, n: int, dt: int, width: int) -> None:
        for _ in range(n):
            self.now += dt
            seq = self.ob.append(self.now, {f"m{i}": float(i) for i in range(width)}, "b")
            assert not self.issued or seq > self.issued[-1], "sequence went backwards"
            self.issued.append(seq)
            self.pending.append(seq)
        self._sync_evictions()

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(self.pending), unique=True, max_size=5))
        assert self.ob.ack(chosen) == len(chosen)
        self.acked.update(chosen)
        self.pending = [s for s in self.pending if s not in set(chosen)]

    @rule(age=st.integers(0, 200_000))
    def evict_by_age(self, age: int) -> None:
        self.ob.evict_expired(self.now + age - 100_000)
        self._sync_evictions()

    @rule()
    def crash_and_restart(self) -> None:
        self.ob.close()  # committed state is all that survives
        self.ob = Outbox(self.path, max_bytes=self.max_bytes, max_age_s=100)

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "ob"):
            return
        stored = [p.seq for p in self.ob.peek(-1, max_samples=1000, max_bytes=1 << 30)]
        assert stored == self.pending  # order kept, nothing lost
        assert not (set(stored) & self.acked), "an acked sample would be resent"
        assert self.ob.depth == len(self.pending)
        assert self.ob.bytes <= max(self.max_bytes, max((p.size for p in self.ob.peek(-1)), default=0))


OutboxMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_outbox_state_machine = OutboxMachine.TestCase
