"""Maintenance windows: per pole, up to ``maintenance_slots`` device-time windows in which an open
cabinet door is the plan, not an alarm (``door_open`` rules are quiet inside one)."""

from __future__ import annotations

import numpy as np

from gateway.detect.state import NO_TS, Col, Columns, FleetState


class MaintenanceState(Columns):
    start = Col(np.int64, NO_TS, "slots")  # window start (device ms), NO_TS = free slot
    end = Col(np.int64, NO_TS, "slots")  # window end (exclusive)

    def __init__(self, fleet: FleetState, slots: int) -> None:
        self.slots = slots
        super().__init__(fleet)


class Maintenance:
    def __init__(self, fleet: FleetState, slots: int) -> None:
        self.fleet = fleet
        self.st = MaintenanceState(fleet, slots)

    def add(self, pole: str, district: str, start_ms: int, end_ms: int) -> None:
        """Add a maintenance window [start, end) in device time: an open door is expected then."""
        if end_ms <= start_ms:
            raise ValueError("a maintenance window must end after it starts")
        r = self.fleet.row(pole, district)
        s, e = self.st.start[r], self.st.end[r]
        now = self.fleet.last_ts[r]
        free = np.flatnonzero((e == NO_TS) | (e <= now))
        slot = int(free[0]) if len(free) else int(np.argmin(e))  # full: replace the soonest-ending
        s[slot], e[slot] = start_ms, end_ms

    def clear(self, pole: str) -> None:
        r = self.fleet.find(pole)
        if r is not None:
            self.st.start[r] = NO_TS
            self.st.end[r] = NO_TS

    def windows(self, pole: str) -> list[tuple[int, int]]:
        r = self.fleet.find(pole)
        if r is None:
            return []
        s, e = self.st.start[r], self.st.end[r]
        return sorted((int(a), int(b)) for a, b in zip(s, e, strict=True) if b != NO_TS)

    def windows_of_rows(self, n: int) -> dict[int, list[tuple[int, int]]]:
        """:meth:`windows` of every one of the first ``n`` rows that has any, by row (a copy: a state save
        takes it under the stage's lock)."""
        s, e = self.st.start[:n], self.st.end[:n]
        return {int(r): sorted((int(a), int(b)) for a, b in zip(s[r], e[r], strict=True) if b != NO_TS)
                for r in np.flatnonzero((e != NO_TS).any(axis=1))}

    def active(self, rows: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Whether each sample (row, device time) falls inside one of its pole's windows."""
        return np.any((ts[:, None] >= self.st.start[rows]) & (ts[:, None] < self.st.end[rows]), axis=1)
