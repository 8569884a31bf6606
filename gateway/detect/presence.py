"""Presence: a pole is offline when it has been silent for ``offline_k`` x its reporting interval (at
least ``min_silence_ms``), or when it said so (its Last Will or a clean shutdown). A reading or a
birth / online status is proof of life and clears ``pole_offline`` at once.

Silence is judged on the gateway's clock (``arrival_ms``), so a pole with a wrong clock is still
heard; time the gateway itself could not listen is excused (:meth:`Presence.excuse`).
"""

from __future__ import annotations

import numpy as np

from gateway.detect.params import RuleParams
from gateway.detect.state import NO_TS, Col, Columns, FleetState
from gateway.detect.types import AlarmSpec, Conditions, Tier


def offline_spec(params: RuleParams) -> AlarmSpec:
    return AlarmSpec("pole_offline", "pole_offline", None,
                     (Tier("warning", "pole silent: no reading for longer than "
                                      f"{params.offline_k:g} x its reporting interval", fast=True),),
                     raise_n=1, raise_ms=0, clear_n=1, unit="s", ref_label="limit", ref_unit="s",
                     decimals=0)


class PresenceState(Columns):
    said_offline = Col(np.bool_, False)  # the pole's last status was "offline"


class Presence:
    def __init__(self, fleet: FleetState, params: RuleParams, spec: int) -> None:
        self.fleet, self.params, self.spec = fleet, params, spec
        self.st = PresenceState(fleet)

    def interval_ms(self, rows: np.ndarray) -> np.ndarray:
        """Reporting interval: announced, else learned from device times, else the default."""
        f, p = self.fleet, self.params
        interval = np.where(np.isnan(f.interval_ms[rows]), f.interval_ew[rows], f.interval_ms[rows])
        return np.where(np.isnan(interval), p.default_interval_ms, interval)

    def silence_limit_ms(self, rows: np.ndarray) -> np.ndarray:
        p = self.params
        return np.maximum(p.offline_k * self.interval_ms(rows), p.min_silence_ms)

    def heard(self, rows: np.ndarray, ts: np.ndarray) -> Conditions:
        """Readings from ``rows``: proof of life, a clear condition for each."""
        self.st.said_offline[rows] = False
        n = len(rows)
        zero = np.zeros(n, np.int8)
        return Conditions(rows, np.full(n, self.spec, np.int64), zero, zero, np.full(n, np.nan),
                          np.full(n, np.nan), np.zeros(n), ts)

    def silence(self, now_ms: int) -> Conditions:
        """Offline conditions for every pole heard at least once (gateway clock ``now_ms``)."""
        f = self.fleet
        rows = np.flatnonzero(f.arrival_ms[: f.n] != NO_TS).astype(np.int64)
        if len(rows) == 0:
            return Conditions.empty()
        silent_ms = (now_ms - f.arrival_ms[rows]).astype(np.float64)
        limit = self.silence_limit_ms(rows)
        off = (silent_ms > limit) | self.st.said_offline[rows]
        lvl = off.astype(np.int8)
        return Conditions(rows, np.full(len(rows), self.spec, np.int64), lvl, lvl.copy(),
                          np.maximum(silent_ms, 0.0) / 1000.0, limit / 1000.0, off.astype(np.float64),
                          np.full(len(rows), now_ms, np.int64))

    def status(self, r: int, state: str, ts_ms: int, arrival_ms: int) -> Conditions:
        """A status message from row ``r``: ``offline`` raises pole_offline at once; ``birth`` /
        ``online`` clears it and counts as being heard."""
        off = state == "offline"
        self.st.said_offline[r] = off
        if not off:
            self.fleet.arrival_ms[r] = arrival_ms
        lvl = np.array([int(off)], np.int8)
        return Conditions(np.array([r], np.int64), np.array([self.spec], np.int64), lvl, lvl.copy(),
                          np.array([np.nan]), np.array([np.nan]), lvl.astype(np.float64),
                          np.array([ts_ms], np.int64))

    def excuse(self, ms: int) -> None:
        """Time the gateway could not hear anyone (it was down, or had lost its broker) is not silence:
        every heard pole's last arrival moves ``ms`` later. A pole already past its limit stays past it
        (its offline alarm neither clears nor flaps); one within it keeps what it had left."""
        if ms <= 0:
            return
        arr = self.fleet.arrival_ms[: self.fleet.n]
        arr[arr != NO_TS] += int(ms)
