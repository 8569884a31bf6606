"""What every detection layer hands to the alarm policy: alarm specs with their severity tiers, and
condition reports (one per entity x spec observation) as parallel arrays.

A layer never decides anything: it reports, per sample, the highest tier whose trigger is met
(``trig``) and the highest tier whose clear level is not yet reached (``hold``); the alarm policy
(:mod:`gateway.detect.alarms`) turns that into raised / escalated / cleared alarms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.catalog import Severity
from contract.levels import tier_levels


@dataclass(frozen=True, slots=True)
class Tier:
    severity: Severity
    explain: str
    fast: bool = False  # raised on the first sample (no minimum duration)


@dataclass(frozen=True, slots=True)
class AlarmSpec:
    """One alarm rule: its key (one active alarm per entity x key), kind and severity tiers.

    Level ``i + 1`` is ``tiers[i]``; level 0 is "no alarm". ``ref_label`` names the reference a
    condition carries beside its value (baseline, expected power, district median ...)."""

    key: str
    kind: str
    metric: str | None
    tiers: tuple[Tier, ...]
    raise_n: int = 3  # consecutive samples before a non-fast tier is raised ...
    raise_ms: int = 60_000  # ... or this long since the condition began, whichever comes first
    clear_n: int = 3  # consecutive samples below the clear level before the alarm drops
    unit: str = ""
    ref_label: str = ""
    ref_unit: str = ""
    decimals: int = 2

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError(f"{self.key}: a rule needs at least one tier")
        if self.raise_n < 1 or self.clear_n < 1:
            raise ValueError(f"{self.key}: raise_n and clear_n must be >= 1")


@dataclass(frozen=True, slots=True)
class Conditions:
    """Condition reports, one per (entity row, spec) observation, in processing order."""

    rows: np.ndarray  # int64 entity row (pole row; district index for district rules)
    spec: np.ndarray  # int64 index into the producer's spec table
    trig: np.ndarray  # int8 highest tier whose trigger is met (0 = none)
    hold: np.ndarray  # int8 highest tier not yet past its clear level (>= trig)
    value: np.ndarray  # float64 the reading (in the metric's unit)
    ref: np.ndarray  # float64 reference (baseline, expected, nominal...), NaN if none
    score: np.ndarray  # float64 in [0, 1]
    ts: np.ndarray  # int64 ms

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def empty() -> Conditions:
        z = np.empty(0, np.int64)
        f = np.empty(0, np.float64)
        b = np.empty(0, np.int8)
        return Conditions(z, z, b, b, f, f, f, z)

    @staticmethod
    def concat(parts: Sequence[Conditions]) -> Conditions:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Conditions.empty()
        if len(parts) == 1:
            return parts[0]
        return Conditions(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                            ("rows", "spec", "trig", "hold", "value", "ref", "score", "ts")))


def levels(x: np.ndarray, op: str, trig_at: Sequence[float], clear_at: Sequence[float]
           ) -> tuple[np.ndarray, np.ndarray]:
    """(trig, hold) levels of ``x`` against tiers in ascending order (NaN x gives 0, 0): the shared
    definition of :func:`contract.levels.tier_levels`, which the pole's safety path uses too."""
    trig, hold = tier_levels(np.asarray(x), op, trig_at, clear_at)
    return np.asarray(trig, np.int8), np.asarray(hold, np.int8)
