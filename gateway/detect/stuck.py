"""Stuck sensor: a reading identical to the previous ones for longer than this series plausibly
repeats itself.

The repeat rate is learned per pole x metric (from the catalog's noise and decimals at first,
:func:`repeat_prior`) from finished runs that were not called stuck: a stuck sensor cannot teach
itself that repeats are normal. On a safety channel the prior counts as ``stuck_prior_n_safety``
learned transitions (elsewhere the first finished run replaces it), so a few hours of a sensor
drifting into its range edge (runs of 0.00 that end) cannot teach the pole that a dead sensor's
reading is normal. A run is stuck when it is less likely than ``exp(-stuck_nats)``
(within ``[stuck_min_n, stuck_max_n]`` readings). A value at the edge of the valid range is saturated,
not stuck - except on a safety channel, where a dead sensor reads its range edge (a water-level sensor
reads 0) and its own learned repeat rate says whether resting there is normal for it. A reading that a
safety rule already holds at alarm level is explained and not also called stuck.

The lamp's current is judged against its driver's power (:meth:`Stuck.current_explained`): a steady
lamp's current is steadier than its reading's resolution (a 40 W lamp draws 0.18 A +- 2 mA, read to 0.01 A:
it reads 0.18 for hours), so a run of it is evidence only once the power moved since the run began by
more than ``stuck_current_quanta`` steps of current would carry (at the pole's nominal voltage). Held-out
seeds 4009 and 4018 raised ``sensor_stuck`` on such a lamp at full power at dusk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract.catalog import INDEX, METRICS, Metric, repeat_prior
from gateway.detect.params import RuleParams
from gateway.detect.state import Col, Columns, FleetState
from gateway.detect.types import AlarmSpec, Conditions, Tier


def stuck_metrics(metrics: Sequence[Metric] = METRICS) -> tuple[Metric, ...]:
    """The metrics the catalog's detection hints name as stuck candidates (``Detect.stuck``: a live
    sensor of it wavers, so an unchanged reading for too long is a stuck sensor)."""
    return tuple(m for m in metrics if m.detect.stuck)


def stuck_specs(params: RuleParams = RuleParams(), metrics: Sequence[Metric] = METRICS
                ) -> tuple[AlarmSpec, ...]:
    return tuple(
        AlarmSpec(f"sensor_stuck.{m.name}", "sensor_stuck", m.name,
                  (Tier("warning", f"{m.description} has not changed at all for longer than a live sensor "
                                   "plausibly repeats itself: stuck sensor"),),
                  raise_n=1, raise_ms=0, clear_n=1, unit="readings", ref_label="limit", ref_unit="readings",
                  decimals=0)
        for m in stuck_metrics(metrics))


class StuckState(Columns):
    last = Col(np.float64, np.nan, "n")  # previous reading
    run = Col(np.int32, 0, "n")  # identical readings in a row, the last one included
    p = Col(np.float64, np.nan, "n")  # learned P(reading == previous reading)
    seen = Col(np.int32, 0, "n")  # transitions learned from
    power0 = Col(np.float64, np.nan)  # the lamp power when the lamp current's run began (NaN: unknown)

    def __init__(self, fleet: FleetState, n: int) -> None:
        self.n = n
        super().__init__(fleet)


class Stuck:
    """One stuck-sensor rule per :func:`stuck_metrics`; spec ``spec0 + j`` for the j-th."""

    def __init__(self, fleet: FleetState, params: RuleParams, metrics: Sequence[Metric], spec0: int) -> None:
        self.params, self.spec0 = params, spec0
        sm = stuck_metrics(metrics)
        self.metrics = sm
        self.specs = stuck_specs(params, metrics)
        self.cols = np.array([INDEX[m.name] for m in sm], np.int64)
        self.prior = np.array([repeat_prior(m) for m in sm], np.float64)
        self.lo = np.array([m.lo for m in sm], np.float64)
        self.hi = np.array([m.hi for m in sm], np.float64)
        self.lamp_slots = np.array([j for j, m in enumerate(sm) if m.name in ("lamp_current_a", "lamp_power_w")],
                                   np.int64)
        names = [m.name for m in sm]
        self.current_slot = names.index("lamp_current_a") if "lamp_current_a" in names else -1
        self.current_quantum = 10.0 ** -sm[self.current_slot].decimals if self.current_slot >= 0 else np.nan
        self.safety = np.array([m.safety_channel for m in sm], np.bool_)
        self.warm = np.where(self.safety, params.stuck_warm_safety, params.stuck_warm).astype(np.int64)
        self.prior_n = np.where(self.safety, params.stuck_prior_n_safety, 0).astype(np.int64)
        self.st = StuckState(fleet, len(sm))

    def limit(self, p_eq: np.ndarray) -> np.ndarray:
        """Identical readings in a row that make a series with repeat rate ``p_eq`` stuck: the run is
        less likely than ``exp(-stuck_nats)``, within [stuck_min_n, stuck_max_n]."""
        p = self.params
        with np.errstate(divide="ignore"):
            n = 1.0 + np.ceil(p.stuck_nats / -np.log(np.clip(p_eq, 0.0, 0.999)))
        return np.clip(np.nan_to_num(n, nan=p.stuck_max_n, posinf=p.stuck_min_n), p.stuck_min_n,
                       p.stuck_max_n).astype(np.int64)

    def frozen(self, n_rows: int) -> np.ndarray:
        """Bool (pole rows ``< n_rows``) x (stuck metrics): the reading has repeated itself for at least the
        series' stuck limit (a run less likely than ``exp(-stuck_nats)`` for a live sensor of it), whether or
        not the rule judges it now (a dimmed lamp's power, a reading a rule explains): the reading is no
        evidence about the world. A series repeating itself more often than ``stuck_p_max`` never is."""
        st = self.st  # grown with the fleet registry: every row < n_rows is there
        pe = np.where(np.isnan(st.p[:n_rows]), self.prior, st.p[:n_rows])
        return np.asarray((st.run[:n_rows] >= self.limit(pe)) & (pe <= self.params.stuck_p_max))

    def current_explained(self, rows: np.ndarray, power: np.ndarray, volts: np.ndarray) -> np.ndarray:
        """Per sample: whether the lamp current's run is explained by a driver whose power has not moved
        since the run began by what ``stuck_current_quanta`` steps of current carry at ``volts`` (an
        unreported power now: explained; no power at the run's start: None of this applies, NaN)."""
        p0 = self.st.power0[rows]
        limit = self.params.stuck_current_quanta * self.current_quantum * volts
        with np.errstate(invalid="ignore"):
            still = ~(np.abs(power - p0) > limit)  # NaN power now: still
        return np.where(np.isnan(p0), np.nan, still.astype(np.float64))

    def evaluate(self, rows: np.ndarray, ts: np.ndarray, vals: np.ndarray, explained: np.ndarray,
                 power: np.ndarray | None = None) -> Conditions:
        """One sample per row; ``explained`` (samples x stuck metrics) marks readings another rule
        accounts for; ``power``: the samples' lamp power (the lamp current's run starts remember it)."""
        if len(self.cols) == 0:
            return Conditions.empty()
        st, p = self.st, self.params
        x = vals[:, self.cols]
        has = ~np.isnan(x)
        last, run = st.last[rows], st.run[rows]
        pe = np.where(np.isnan(st.p[rows]), self.prior, st.p[rows])
        nn = st.seen[rows]
        seen = has & ~np.isnan(last)
        same = seen & (x == last)
        # a run is learnt when it ends (its run - 1 repeats, then the change), and only if it was not
        # called stuck: the run being judged is never evidence about the series' usual repeat rate
        learn = seen & ~same & (run < self.limit(pe))
        rate = np.maximum(1.0 / np.maximum(nn + self.prior_n + run, 1), p.stuck_a_eq)
        after = 1.0 - (1.0 - pe) * (1.0 - rate) ** np.maximum(run - 1, 0)
        pe = np.where(learn, after * (1.0 - rate), pe)
        nn = nn + np.where(learn, run, 0)
        run = np.where(has, np.where(same, run + 1, 1), run).astype(np.int32)
        if power is not None and self.current_slot >= 0:  # a new run of the current: the power it began at
            j = self.current_slot
            begins = has[:, j] & ~same[:, j]
            st.power0[rows] = np.where(begins, power, st.power0[rows])
        st.last[rows] = np.where(has, x, last)
        st.run[rows], st.p[rows], st.seen[rows] = run, pe, nn
        limit = self.limit(pe)
        judged = has & (nn + self.prior_n >= self.warm) & (pe <= p.stuck_p_max) & ~explained
        ii, jj = np.nonzero(judged)
        xv = x[ii, jj]
        inside = self.safety[jj] | ((xv > self.lo[jj]) & (xv < self.hi[jj]))
        stuck = (run[ii, jj] >= limit[ii, jj]) & inside
        lvl = stuck.astype(np.int8)
        return Conditions(rows[ii], self.spec0 + jj.astype(np.int64), lvl, lvl.copy(),
                          run[ii, jj].astype(np.float64), limit[ii, jj].astype(np.float64),
                          stuck.astype(np.float64), ts[ii])
