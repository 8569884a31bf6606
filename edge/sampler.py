"""The sampling schedule: which metrics are due when, read through the drivers, checked for safety.

Every metric has its own reporting interval (``report_interval_s`` unless ``intervals`` overrides
it). A tick reads every metric that is due and yields ONE sample holding them. Critical metrics
(catalog ``critical=True``) are additionally read every ``safety_interval_s``; those fast readings
yield a sample only when the :class:`SafetyMonitor` sees a threshold crossing — which is then
published at once instead of at the next reporting interval.

Time is passed in (``step(now)``); the agent's thread drives it with its clock.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edge.drivers import Driver, DriverError
from edge.safety import Crossing, SafetyMonitor

log = logging.getLogger("lampwatch.edge.sampler")


@dataclass(slots=True)
class Tick:
    values: dict[str, float]
    crossings: list[Crossing] = field(default_factory=list)


class Sampler:
    def __init__(self, sensors: Sequence[str], assignment: Mapping[str, Driver],
                 intervals: Mapping[str, float], *, safety: SafetyMonitor, safety_interval_s: float,
                 now: float) -> None:
        self.sensors = tuple(sensors)
        self.assignment = dict(assignment)
        self.intervals = {n: float(intervals[n]) for n in self.sensors}
        self.safety = safety
        self.safety_interval_s = safety_interval_s
        self.fast = tuple(n for n in self.sensors if n in safety.metrics)
        self.next_report = {n: now for n in self.sensors}  # first tick reports everything
        self.next_fast = {n: now for n in self.fast}
        self.counts: Counter[str] = Counter()
        self._now_requested = False
        self._lock = threading.Lock()
        self._last_error = ""

    # --- control (any thread) --------------------------------------------------------------------
    def set_interval(self, interval_s: float, metric: str | None, now: float) -> None:
        if metric is not None and metric not in self.intervals:
            raise ValueError(f"metric {metric!r} is not sampled on this pole")
        with self._lock:
            for n in (self.sensors if metric is None else (metric,)):
                self.intervals[n] = interval_s
                self.next_report[n] = min(self.next_report[n], now + interval_s)

    def request_now(self) -> None:
        with self._lock:
            self._now_requested = True

    def interval(self, metric: str | None = None) -> float:
        """One metric's interval, or the shortest of all."""
        with self._lock:
            return self.intervals[metric] if metric else min(self.intervals.values())

    def next_due(self) -> float:
        with self._lock:
            due = min(self.next_report.values())
            if self.fast:
                due = min(due, min(self.next_fast.values()))
            return due

    # --- the tick (sampler thread) ---------------------------------------------------------------
    def step(self, now: float) -> Tick | None:
        with self._lock:
            if self._now_requested:
                report = list(self.sensors)
                self._now_requested = False
            else:
                report = [n for n in self.sensors if self.next_report[n] <= now]
            fast = [n for n in self.fast if self.next_fast[n] <= now and n not in report]
            for n in report:
                nxt = self.next_report[n] + self.intervals[n]
                self.next_report[n] = nxt if nxt > now else now + self.intervals[n]
            for n in set(fast) | (set(report) & set(self.fast)):
                nxt = self.next_fast[n] + self.safety_interval_s
                self.next_fast[n] = nxt if nxt > now else now + self.safety_interval_s
        if not report and not fast:
            return None
        values = self.read(report + fast, int(now * 1000))
        crossings = self.safety.check({n: v for n, v in values.items() if n in self.safety.rules})
        if crossings:
            self.counts["crossings"] += len(crossings)
            for c in crossings:
                log.warning("safety: %s=%s level %d -> %d", c.metric, c.value, c.old_level, c.new_level)
            return Tick(values, crossings)  # everything read in this tick, published at once
        reported = {n: values[n] for n in report if n in values}
        return Tick(reported) if reported else None

    def read(self, names: Sequence[str], t_ms: int) -> dict[str, float]:
        by_driver: dict[int, tuple[Driver, list[str]]] = {}
        for n in names:
            d = self.assignment[n]
            by_driver.setdefault(id(d), (d, []))[1].append(n)
        out: dict[str, float] = {}
        for d, ns in by_driver.values():
            try:
                got = d.read(ns, t_ms)
            except DriverError as exc:
                self.counts["read_errors"] += 1
                msg = str(exc)
                if msg != self._last_error:  # log each new failure once, not at every tick
                    log.error("sensor read failed: %s", msg)
                    self._last_error = msg
                continue
            except Exception as exc:  # a driver bug must not stop the sampling of the other sensors
                self.counts["read_errors"] += 1
                log.exception("sensor driver crashed: %s", exc)
                continue
            self.counts["values_missing"] += len([n for n in ns if n not in got])
            out.update({n: v for n, v in got.items() if n in ns})
        self.counts["values_read"] += len(out)
        return out
