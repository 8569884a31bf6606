"""One safety sensor gone quiet while its pole keeps reporting: ``sensor_dropout.<metric>`` (warning).

A pole that reports its lamp, its air and its radio but no longer its leakage current (a broken cable,
a dead sensor, a driver that stopped answering) is not offline, and no threshold can fire on a value
that never comes: the safety rule is blind. Per pole x safety metric (the catalog's fast-path sensors
and the float safety channels), the metric's own reporting interval is learned from the device times of
its readings (EW; a gap longer than three intervals is not learnt from), so a sensor sampled every
15 min on a pole that reports every minute is judged by its own pace. A sample of the pole without the
metric, more than ``k`` of those intervals after the metric's last reading, raises the alarm; the
metric's next reading clears it. Nothing is judged before the metric has been read twice.

Pure numpy; samples of one pole are taken in device-time order (rounds, as in layer 1).
"""

from __future__ import annotations

import numpy as np

from contract.catalog import INDEX, METRICS, Metric
from gateway.detect.state import NO_TS, Batch, Col, Columns, FleetState, occurrence_rank
from gateway.detect.types import AlarmSpec, Conditions, Tier


def dropout_metrics() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.critical or m.safety_channel)


class DropoutState(Columns):
    prev = Col(np.int64, NO_TS, "n")  # device time of the metric's last reading
    interval = Col(np.float64, np.nan, "n")  # its learned reporting interval (ms)
    flagged = Col(np.bool_, False, "n")  # a dropout condition was reported

    def __init__(self, fleet: FleetState, n: int) -> None:
        self.n = n
        super().__init__(fleet)


class DropoutRule:
    """Conditions for ``specs`` (spec ``j`` = ``metrics[j]``)."""

    def __init__(self, state: FleetState, k: float = 3.0) -> None:
        self.state, self.k = state, k
        self.metrics = dropout_metrics()
        self.cols = np.array([INDEX[m.name] for m in self.metrics], np.int64)
        self.specs = tuple(
            AlarmSpec(f"sensor_dropout.{m.name}", "sensor_dropout", m.name,
                      (Tier("warning", f"{m.description} no longer reported while the pole reports: its "
                                       "safety rule is blind (sensor or its cable)", fast=True),),
                      raise_n=1, raise_ms=0, clear_n=1, unit="s", ref_label="limit", ref_unit="s", decimals=0)
            for m in self.metrics)
        self.st = DropoutState(state, len(self.metrics))

    def evaluate(self, batch: Batch) -> Conditions:
        if len(batch) == 0:
            return Conditions.empty()
        order = np.argsort(batch.ts, kind="stable")
        b = batch.take(order)
        rank = occurrence_rank(b.rows)
        return Conditions.concat([self._round(b.take(np.flatnonzero(rank == r))) for r in range(int(rank.max()) + 1)])

    def _round(self, b: Batch) -> Conditions:
        st = self.st
        rows, ts = b.rows, b.ts
        has = ~np.isnan(b.values[:, self.cols])
        prev, itv, flag = st.prev[rows], st.interval[rows], st.flagged[rows]
        t = ts[:, None]
        seen = prev != NO_TS
        gap = np.where(seen, (t - prev).astype(np.float64), np.nan)
        with np.errstate(invalid="ignore"):
            learn = has & seen & (gap > 0) & (np.isnan(itv) | (gap <= 3.0 * itv))
            itv = np.where(learn, np.where(np.isnan(itv), gap, 0.8 * itv + 0.2 * gap), itv)
            quiet = ~has & seen & ~np.isnan(itv) & (gap > self.k * itv)
        prev = np.where(has, np.maximum(t, prev), prev)
        speak = quiet | (has & flag)  # a dropout, or the reading that ends one
        st.prev[rows], st.interval[rows] = prev, itv
        st.flagged[rows] = (flag & ~has) | quiet
        ii, jj = np.nonzero(speak)
        lvl = quiet[ii, jj].astype(np.int8)
        return Conditions(rows[ii], jj.astype(np.int64), lvl, lvl.copy(), np.nan_to_num(gap[ii, jj]) / 1000.0,
                          self.k * itv[ii, jj] / 1000.0, lvl.astype(np.float64), ts[ii])
