"""Duplicate and gap tracking per pole (pure).

Sequence numbers are per pole and monotonic across reboots (the edge persists them), so state is
keyed by pole alone. For each pole we keep the highest sequence seen and a bitmap of the last
``window`` sequences: bit i set means ``high - i`` was seen. A sequence inside the window that is
already set is a duplicate (dropped before the store; even if one slipped through, the store write is
idempotent). A sequence older than the window is accepted: it is a late replay from a long outage,
and its write, keyed by device time, overwrites nothing but itself.

Gaps: ``missing`` = sequences skipped over and not (yet) filled by a late arrival. A late arrival
inside the window decrements it, so a reordered stream ends with zero missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["new", "duplicate", "late"]


@dataclass(slots=True)
class _Pole:
    high: int
    bits: int  # bit i: sequence high - i seen
    missing: int = 0
    duplicates: int = 0


class SeqTracker:
    def __init__(self, window: int = 4096) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._mask = (1 << window) - 1
        self._poles: dict[str, _Pole] = {}

    def check(self, pole: str, seq: int) -> Verdict:
        st = self._poles.get(pole)
        if st is None:
            self._poles[pole] = _Pole(seq, 1)
            return "new"
        if seq > st.high:
            shift = seq - st.high
            st.missing += shift - 1 if shift - 1 < self.window else self.window
            st.bits = ((st.bits << shift) | 1) & self._mask if shift < self.window else 1
            st.high = seq
            return "new"
        age = st.high - seq
        if age >= self.window:
            return "late"
        bit = 1 << age
        if st.bits & bit:
            st.duplicates += 1
            return "duplicate"
        st.bits |= bit
        st.missing = max(0, st.missing - 1)
        return "new"

    def missing(self, pole: str) -> int:
        st = self._poles.get(pole)
        return st.missing if st else 0

    def total_missing(self) -> int:
        return sum(p.missing for p in self._poles.values())

    def total_duplicates(self) -> int:
        return sum(p.duplicates for p in self._poles.values())

    def __len__(self) -> int:
        return len(self._poles)
