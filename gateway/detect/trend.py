"""Slow faults found while they are still small: signed CUSUMs of a pole's tilt against its installed
baseline, in units of the pole's own noise.

A pole that starts to lean (a failing foundation, a vehicle strike that bent it) moves by hundredths of
a degree per sample. The catalog's tiers speak at 2 and 5 degrees; by then the lean has been visible for
hours. Per pole, two one-sided CUSUMs of the standardised deviation from the baseline the tilt rule
judges against (the installed one: inventory, birth or ``set_pole``; else learned as the median of the
first readings, :mod:`contract.levels`)::

    z = (tilt - baseline) / sigma
    U <- min(max(0, U + z - k), cap);   D <- min(max(0, D - z - k), cap)
    tilt_trend while max(U, D) >= h (clears at h/2)

``sigma`` is the pole's own reading-to-reading noise (``E|x_t - x_t-1| = 2 sigma / sqrt(pi)`` for a
standing pole, learnt as an EW mean of the steps, each step winsorised at ``clip_sigma`` sigmas so a
knock or a jump teaches nothing, not learnt while the tilt rule holds a tier nor from a frozen reading
(repeated ``frozen_n`` times in a row or more: it adds nothing to the sums either); never under ``floor`` x
the catalog's noise, the catalog's noise until ``warm_n`` steps are learnt). ``k`` is ``k_sigma``
against an installed baseline and ``k_learned`` against a learned one (a median of 10 readings is
itself off by ~0.4 sigma, one in a thousand by 1.2). Against an exact baseline the two-sided false rate
of ``k = 1, h = 10`` is ~1e-9 per sample (Siegmund's approximation); a steady ramp of ``r`` sigma per
sample is flagged after about ``k/r + sqrt(2h/r)`` samples.

One inclinometer cannot tell a lean from a sensor drifting (the same slow ramp in the same noise), so
the alarm says both: "pole leaning or tilt sensor drifting". A baseline that is wrong says the same,
truthfully: the pole does not stand as recorded.

State: per pole both sums, the previous reading, its repeat run, the learned step mean and its count (not in the state
file: after a restart they build up again). Pure numpy; it reads the tilt rule's own conditions
(reading and the baseline at that moment, in processing order), so a batch gives what one reading at a
time gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract.catalog import BY_NAME
from gateway.detect.state import Col, Columns, FleetState, occurrence_rank
from gateway.detect.types import AlarmSpec, Conditions, Tier, levels

_STEP_TO_SIGMA = math.sqrt(math.pi) / 2.0  # sigma = E|step| x sqrt(pi) / 2 for independent noise


@dataclass(frozen=True, slots=True)
class TrendParams:
    k_sigma: float = 1.0  # slack against an installed baseline, in the pole's own noise
    k_learned: float = 2.5  # ... against a learned baseline (its own error is ~0.4 noise)
    h_sigma: float = 10.0  # evidence: max(U, D) >= h raises tilt_trend (noise x samples)
    cap_h: float = 3.0  # the sums are capped at cap_h x h, so a lean that is fixed clears in bounded time
    floor: float = 0.5  # the noise used is never under this share of the catalog's tilt noise ...
    warm_n: int = 24  # ... and is the catalog's until this many steps are learnt
    a_noise: float = 0.01  # EW rate of the learned step mean (1/n before)
    clip_sigma: float = 4.0  # a step beyond this many sigmas (x sqrt 2) is learnt as that
    frozen_n: int = 2  # a reading repeated this many times in a row (and on) adds nothing, teaches nothing


def trend_specs() -> tuple[AlarmSpec, ...]:
    m = BY_NAME["tilt_deg"]
    return (AlarmSpec("tilt_trend", "tilt_trend", m.name,
                      (Tier("warning", "pole leaning or tilt sensor drifting: its tilt moves steadily away "
                                       "from the installed baseline, still under the 2-degree tier (CUSUM "
                                       "in units of the pole's own noise)", fast=True),),
                      raise_n=1, raise_ms=0, clear_n=3, unit="noise x samples", ref_label="limit",
                      ref_unit="noise x samples", decimals=1),)


class TrendState(Columns):
    up = Col(np.float64, 0.0)  # CUSUM of the tilt above the baseline, in noise units beyond the slack
    down = Col(np.float64, 0.0)  # ... and below it
    last = Col(np.float64, np.nan)  # previous tilt reading
    step = Col(np.float64, 0.0)  # EW mean of |reading - previous reading| (winsorised)
    steps = Col(np.int32, 0)  # steps learnt
    run = Col(np.int32, 0)  # times in a row the reading repeated the one before


class TrendRule:
    """Conditions for :func:`trend_specs`; ``baseline(rows)`` gives the tilt baseline per row (NaN: none)."""

    def __init__(self, state: FleetState, params: TrendParams = TrendParams()) -> None:
        self.state, self.params = state, params
        self.noise = BY_NAME["tilt_deg"].noise
        self.h = params.h_sigma
        self.specs = trend_specs()
        self.st = TrendState(state)

    def evaluate(self, rows: np.ndarray, ts: np.ndarray, x: np.ndarray, baseline: np.ndarray,
                 tier: np.ndarray | None = None, installed: np.ndarray | None = None) -> Conditions:
        """One entry per tilt reading in processing order (device-time order per pole), each with the
        baseline the tilt rule judged it against at that moment (the rule's own conditions carry both),
        ``tier``, the rule's hold level then (while a tier already speaks, the trend raises nothing new:
        a knock-down is the tilt rule's, not also a trend) and ``installed``, whether that baseline is
        the installed one (default: yes)."""
        ok = ~np.isnan(x) & ~np.isnan(baseline)
        tier = np.zeros(len(rows), np.int8) if tier is None else tier
        installed = np.ones(len(rows), np.bool_) if installed is None else installed
        rows, ts, x, baseline, tier, installed = rows[ok], ts[ok], x[ok], baseline[ok], tier[ok], installed[ok]
        if len(rows) == 0:
            return Conditions.empty()
        rank = occurrence_rank(rows)
        parts = []
        for r in range(int(rank.max()) + 1):
            sel = np.flatnonzero(rank == r)
            parts.append(self._round(rows[sel], ts[sel], x[sel], baseline[sel], tier[sel], installed[sel]))
        return Conditions.concat(parts)

    def sigma(self, rows: np.ndarray) -> np.ndarray:
        """The noise each row's readings are judged in (deg)."""
        st, p = self.st, self.params
        learnt = st.step[rows] * _STEP_TO_SIGMA
        return np.maximum(np.where(st.steps[rows] >= p.warm_n, learnt, self.noise), p.floor * self.noise)

    def _round(self, rows: np.ndarray, ts: np.ndarray, x: np.ndarray, base: np.ndarray, tier: np.ndarray,
               installed: np.ndarray) -> Conditions:
        st, p = self.st, self.params
        sigma = self.sigma(rows)
        z = (x - base) / sigma
        k = np.where(installed, p.k_sigma, p.k_learned)
        cap = p.cap_h * self.h
        prev = st.last[rows]
        # a frozen sensor (the same reading again and again) says nothing about the pole: its readings add
        # nothing to the sums, and its steps of zero would shrink the learnt noise until the live readings
        # after a repair looked like a trend (a live sensor repeats twice in a row now and then, at its
        # resolution; the stuck rule speaks for a frozen one)
        run = np.where(x == prev, st.run[rows] + 1, 0)
        st.run[rows] = run
        live = run < p.frozen_n
        up = np.where(live, np.clip(st.up[rows] + z - k, 0.0, cap), st.up[rows])
        down = np.where(live, np.clip(st.down[rows] - z - k, 0.0, cap), st.down[rows])
        st.up[rows], st.down[rows] = up, down
        # the pole's own noise, from its steps (a knock teaches nothing: winsorised, and not while a tier holds)
        learn = ~np.isnan(prev) & (tier == 0) & live
        n = st.steps[rows]
        step = np.minimum(np.abs(x - prev), p.clip_sigma * math.sqrt(2.0) * sigma)
        rate = np.maximum(1.0 / (n + 1.0), p.a_noise)
        st.step[rows] = np.where(learn, st.step[rows] + rate * (np.nan_to_num(step) - st.step[rows]), st.step[rows])
        st.steps[rows] = n + learn
        st.last[rows] = x
        s = np.maximum(up, down)
        trig, hold = levels(s, ">=", (self.h,), (0.5 * self.h,))
        trig[tier > 0] = 0
        return Conditions(rows, np.zeros(len(rows), np.int64), trig, hold, s, np.full(len(rows), self.h),
                          np.minimum(s / self.h, 1.0), ts)

    def cusum(self, pole: str) -> float | None:
        """The larger of the pole's two sums (noise x samples beyond the slack)."""
        r = self.state.find(pole)
        return None if r is None else float(max(self.st.up[r], self.st.down[r]))

    def noise_of(self, pole: str) -> float | None:
        """The noise the pole's tilt is judged in (deg)."""
        r = self.state.find(pole)
        return None if r is None else float(self.sigma(np.array([r]))[0])
