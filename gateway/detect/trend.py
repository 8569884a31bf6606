"""Slow faults found while they are still small: a CUSUM of a pole's lean beyond its installed baseline.

A pole that starts to lean (a failing foundation, a vehicle strike that bent it) moves by hundredths of
a degree per sample. The catalog's tiers speak at 2 and 5 degrees; by then the lean has been visible for
hours. Per pole, a one-sided CUSUM on the deviation from the baseline the tilt rule judges against
(installed, else learned as the median of the first readings, :mod:`contract.levels`)::

    d = |tilt - baseline|;   S <- min(max(0, S + d - k), cap);   tilt_trend while S >= h (clears at h/2)

``k`` (the slack) and ``h`` (the evidence) are multiples of the catalog's sensor noise for tilt
(``k_noise``, ``h_noise``): the noise of a standing pole never accumulates (it must exceed ``k`` on
every sample), a steady lean of ``r`` degrees per sample is flagged after about ``k/r + sqrt(2h/r)``
samples — before a lean of ``2 - k`` degrees for any ``r`` the tier does not already see on its first
samples. ``tilt_trend`` is a ``warning``: "this pole is leaning beyond its installation and the lean
is growing or holding". A baseline that is wrong by more than ``k`` says the same, truthfully: the
pole does not stand as recorded.

State: one float per pole (``S``). Pure numpy; it reads the tilt rule's own conditions (reading and the
baseline at that moment, in processing order), so a batch gives what one reading at a time gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.catalog import BY_NAME
from gateway.detect.state import Col, Columns, FleetState, occurrence_rank
from gateway.detect.types import AlarmSpec, Conditions, Tier, levels


@dataclass(frozen=True, slots=True)
class TrendParams:
    k_noise: float = 4.0  # slack: deviations below k = k_noise x sensor noise never add up
    h_noise: float = 40.0  # evidence: S >= h = h_noise x sensor noise raises tilt_trend
    cap_h: float = 3.0  # S is capped at cap_h x h, so a lean that is fixed clears in bounded time


def trend_specs() -> tuple[AlarmSpec, ...]:
    m = BY_NAME["tilt_deg"]
    return (AlarmSpec("tilt_trend", "tilt_trend", m.name,
                      (Tier("warning", "pole leaning steadily beyond its installed baseline, still under "
                                       "the 2-degree tier (CUSUM of the lean)", fast=True),),
                      raise_n=1, raise_ms=0, clear_n=3, unit="deg x samples", ref_label="limit",
                      ref_unit="deg x samples", decimals=2),)


class TrendState(Columns):
    cusum = Col(np.float64, 0.0)  # one-sided CUSUM of |tilt - baseline| beyond the allowance


class TrendRule:
    """Conditions for :func:`trend_specs`; ``baseline(rows)`` gives the tilt baseline per row (NaN: none)."""

    def __init__(self, state: FleetState, params: TrendParams = TrendParams()) -> None:
        self.state, self.params = state, params
        noise = BY_NAME["tilt_deg"].noise
        self.k, self.h = params.k_noise * noise, params.h_noise * noise
        self.specs = trend_specs()
        self.st = TrendState(state)

    def evaluate(self, rows: np.ndarray, ts: np.ndarray, x: np.ndarray, baseline: np.ndarray,
                 tier: np.ndarray | None = None) -> Conditions:
        """One entry per tilt reading in processing order (device-time order per pole), each with the
        baseline the tilt rule judged it against at that moment (the rule's own conditions carry both)
        and ``tier``, the rule's hold level then: while a tier already speaks, the trend raises nothing
        new (a knock-down is the tilt rule's, not also a trend)."""
        ok = ~np.isnan(x) & ~np.isnan(baseline)
        tier = np.zeros(len(rows), np.int8) if tier is None else tier
        rows, ts, x, baseline, tier = rows[ok], ts[ok], x[ok], baseline[ok], tier[ok]
        if len(rows) == 0:
            return Conditions.empty()
        rank = occurrence_rank(rows)
        parts = []
        for r in range(int(rank.max()) + 1):
            sel = np.flatnonzero(rank == r)
            parts.append(self._round(rows[sel], ts[sel], x[sel], baseline[sel], tier[sel]))
        return Conditions.concat(parts)

    def _round(self, rows: np.ndarray, ts: np.ndarray, x: np.ndarray, base: np.ndarray, tier: np.ndarray
               ) -> Conditions:
        s = self.st.cusum
        new = np.clip(s[rows] + np.abs(x - base) - self.k, 0.0, self.params.cap_h * self.h)
        s[rows] = new
        trig, hold = levels(new, ">=", (self.h,), (0.5 * self.h,))
        trig[tier > 0] = 0
        return Conditions(rows, np.zeros(len(rows), np.int64), trig, hold, new, np.full(len(rows), self.h),
                          np.minimum(new / self.h, 1.0), ts)

    def cusum(self, pole: str) -> float | None:
        r = self.state.find(pole)
        return None if r is None else float(self.st.cusum[r])
