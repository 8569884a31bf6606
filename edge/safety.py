"""The safety fast path's decision (pure): has a critical metric crossed one of its thresholds?

Rules come from the catalog (``absolute`` thresholds as they are; ``baseline`` ones — tilt — as the
absolute deviation from the pole's installed baseline, configured or else learned as the median of its
first readings). A local override (``set_thresholds``) replaces a metric's rules by one trigger level,
keeping the catalog's hysteresis gap and first severity. Each metric has a level: 0 = normal, k = its
k-th rule (ascending) raised. When a tier triggers and when it clears is :mod:`contract.levels`, the same
definition the gateway's rules use, so a pole and its gateway agree on every crossing. Any level change
is a crossing, which the agent publishes at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contract.catalog import BY_NAME, CRITICAL, Op, Threshold
from contract.levels import BASELINE_LEARN_N, comparable, learned_baseline, next_level, tier_levels


@dataclass(frozen=True, slots=True)
class Rule:
    op: Op
    trigger: float
    clear: float
    severity: str

    def hit(self, x: float) -> bool:
        return x >= self.trigger if self.op == ">=" else x <= self.trigger

    def cleared(self, x: float) -> bool:
        return x <= self.clear if self.op == ">=" else x >= self.clear


@dataclass(frozen=True, slots=True)
class Crossing:
    metric: str
    value: float
    old_level: int
    new_level: int


def _rules(ts: Iterable[Threshold]) -> tuple[Rule, ...]:
    usable = [t for t in ts if t.relative_to in ("absolute", "baseline")]
    # ascending severity order: for '>=' rules higher triggers are worse, for '<=' lower ones are
    usable.sort(key=lambda t: t.value if t.op == ">=" else -t.value)
    return tuple(Rule(t.op, t.value, t.clear, t.severity) for t in usable)


class SafetyMonitor:
    def __init__(self, metrics: Iterable[str] = CRITICAL, *, tilt_baseline: float | None = None,
                 overrides: Mapping[str, float] | None = None) -> None:
        self._catalog: dict[str, tuple[Rule, ...]] = {}
        self._relative: dict[str, bool] = {}
        for name in metrics:
            m = BY_NAME[name]
            if not m.critical:
                continue
            self._catalog[name] = _rules(m.thresholds)
            self._relative[name] = any(t.relative_to == "baseline" for t in m.thresholds)
        self.rules: dict[str, tuple[Rule, ...]] = dict(self._catalog)
        self.levels: dict[str, int] = {n: 0 for n in self.rules}
        self.baselines: dict[str, float] = {}
        self._first: dict[str, list[float]] = {}  # readings a baseline is being learned from
        self._lock = threading.Lock()  # commands (network thread) vs checks (sampler thread)
        if tilt_baseline is not None and "tilt_deg" in self.rules:
            self.baselines["tilt_deg"] = tilt_baseline
        for name, value in (overrides or {}).items():
            self.set_threshold(name, value)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.rules)

    def set_threshold(self, name: str, value: float) -> None:
        """Replace ``name``'s rules by one trigger level; ``ValueError`` when not applicable."""
        base = self._catalog.get(name)
        if not base:
            raise ValueError(f"{name} is not checked on this pole (checked: {', '.join(self.rules)})")
        m = BY_NAME[name]
        if not (m.lo <= value <= m.hi):
            raise ValueError(f"{name} threshold {value} outside [{m.lo}, {m.hi}]")
        first = base[0]
        gap = first.trigger - first.clear
        with self._lock:
            self.rules[name] = (Rule(first.op, value, value - gap, first.severity),)
            self.levels[name] = min(self.levels[name], 1)

    def effective(self, name: str, value: float) -> float:
        """The value the rules see: the deviation from the baseline for baseline-relative metrics (NaN
        while the baseline is still being learned from the first readings)."""
        if not self._relative.get(name):
            return value
        base = self.baselines.get(name)
        if base is None:
            first = self._first.setdefault(name, [])
            if len(first) < BASELINE_LEARN_N:
                first.append(value)
            learned = learned_baseline(first)
            if learned is None:
                return float("nan")
            base = self.baselines[name] = learned
            del self._first[name]
        return float(comparable(value, "baseline", base))

    def check(self, values: Mapping[str, float]) -> list[Crossing]:
        with self._lock:
            return self._check(values)

    def _check(self, values: Mapping[str, float]) -> list[Crossing]:
        out = []
        for name, v in values.items():
            rules = self.rules.get(name)
            if rules is None:
                continue
            x = self.effective(name, v)
            cur = self.levels[name]
            trig, hold = tier_levels(x, rules[0].op, [r.trigger for r in rules], [r.clear for r in rules])
            new = int(next_level(cur, trig, hold))
            if new != cur:
                self.levels[name] = new
                out.append(Crossing(name, v, cur, new))
        return out
