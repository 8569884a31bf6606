"""When is a threshold crossed: one definition for the pole (edge.safety) and its gateway (gateway.detect).

A metric's thresholds of one kind are *tiers* in ascending severity (leakage 15 mA warning, 30 mA
critical). For a comparable value ``x`` (see :func:`comparable`):

* tier ``i`` *triggers* when ``x >= trigger_i`` (op ``>=``; ``x <= trigger_i`` for ``<=``);
* tier ``i`` *holds* while ``x > clear_i`` (``x < clear_i`` for ``<=``): it is gone at ``x <= clear_i``,
  the clear level itself included;
* ``trig`` is the highest tier that triggers, ``hold`` the highest tier that holds (at least ``trig``);
  NaN gives (0, 0): no evidence either way;
* a level that persists from one reading to the next follows :func:`next_level`: it rises to ``trig`` at
  once and steps down only to the highest tier not yet past its clear level (hysteresis, no flapping).

Comparison by ``relative_to``: ``absolute`` the reading; ``nominal``/``rated`` the reading as a factor of
the reference; ``baseline`` the *absolute* deviation from the pole's installed baseline (a pole leaning
2 degrees the other way leans as much). A baseline not configured is learned as the median of the
first :data:`BASELINE_LEARN_N` readings (:func:`learned_baseline`), robust to one bad first reading.

Works on numpy arrays (the gateway judges a whole batch at once) and on plain floats (the pole).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Readings whose median becomes a learned installed baseline (pole and gateway alike).
BASELINE_LEARN_N = 10


def comparable(x: Any, relative_to: str, ref: Any = None) -> Any:
    """The value a threshold is compared with (NaN where the reference is missing)."""
    if relative_to == "absolute":
        return x
    if ref is None:
        return np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        if relative_to == "baseline":
            return np.abs(np.subtract(x, ref))
        if relative_to in ("nominal", "rated"):
            return np.divide(x, ref)
    raise ValueError(f"unknown relative_to {relative_to!r}")


def tier_levels(x: Any, op: str, triggers: Sequence[float], clears: Sequence[float]) -> tuple[Any, Any]:
    """(trig, hold) of ``x`` against tiers in ascending severity; int8 arrays shaped like ``x``."""
    if op not in (">=", "<="):
        raise ValueError(f"unknown op {op!r}")
    xa = np.asarray(x, np.float64)
    trig = np.zeros(xa.shape, np.int8)
    hold = np.zeros(xa.shape, np.int8)
    with np.errstate(invalid="ignore"):
        for i, (v, c) in enumerate(zip(triggers, clears, strict=True)):
            t, h = (xa >= v, xa > c) if op == ">=" else (xa <= v, xa < c)
            trig[t] = i + 1
            hold[h] = i + 1
    return trig, np.maximum(trig, hold)


def next_level(current: Any, trig: Any, hold: Any) -> Any:
    """The level after one reading: up to ``trig`` at once, down only past each tier's clear level."""
    return np.maximum(trig, np.minimum(current, hold))


def learned_baseline(first_readings: Sequence[float]) -> float | None:
    """The installed baseline from a pole's first readings (None until there are enough)."""
    vals = [float(v) for v in first_readings if np.isfinite(v)]
    if len(vals) < BASELINE_LEARN_N:
        return None
    return float(np.median(vals[:BASELINE_LEARN_N]))
