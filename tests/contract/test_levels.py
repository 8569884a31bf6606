"""contract.levels: one definition of a threshold crossing, and the pole and the gateway agree on it."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.catalog import BY_NAME
from contract.levels import BASELINE_LEARN_N, comparable, learned_baseline, next_level, tier_levels
from contract.readings import Reading
from edge.safety import SafetyMonitor
from gateway.detect.rules import Rules
from gateway.detect.state import Batch, FleetState

LEAK = BY_NAME["leakage_current_ma"]


def test_tiers_trigger_inclusive_and_clear_at_the_clear_level() -> None:
    trig, hold = tier_levels(np.array([14.9, 15.0, 12.0, 12.01, 30.0, 25.0, math.nan]), ">=",
                             (15.0, 30.0), (12.0, 25.0))
    assert trig.tolist() == [0, 1, 0, 0, 2, 1, 0]
    assert hold.tolist() == [1, 1, 0, 1, 2, 1, 0]  # 12.0 is the clear level itself: gone
    trig, hold = tier_levels(0.84, "<=", (0.85,), (0.88,))
    assert (int(trig), int(hold)) == (1, 1)


def test_next_level_rises_at_once_and_steps_down_past_each_clear() -> None:
    lvl = 0
    seen = []
    for x in (16.0, 31.0, 27.0, 20.0, 12.5, 12.0):
        t, h = tier_levels(x, ">=", (15.0, 30.0), (12.0, 25.0))
        lvl = int(next_level(lvl, t, h))
        seen.append(lvl)
    assert seen == [1, 2, 2, 1, 1, 0]


def test_baseline_deviation_is_absolute_and_learned_from_a_median() -> None:
    assert float(comparable(0.5, "baseline", 2.5)) == 2.0
    assert float(comparable(0.9, "nominal", 1.0)) == 0.9
    assert math.isnan(float(comparable(1.0, "rated", None)))
    first = [1.0] * (BASELINE_LEARN_N - 1)
    assert learned_baseline(first) is None
    assert learned_baseline([40.0, *first]) == 1.0  # one wild first reading does not set the baseline


def _gateway_levels(metric: str, xs: list[float]) -> list[int]:
    """The gateway rule's (trig, hold) per reading, folded by the shared next_level."""
    state = FleetState()
    rules = Rules(state)
    spec = next(i for i, r in enumerate(rules.rules) if r.spec.metric == metric)
    lvl, out = 0, []
    for k, x in enumerate(xs):
        r = Reading("p-1", "north", "b", k + 1, 1_700_000_000_000 + 1000 * k, {metric: x})
        c = rules.evaluate(Batch.from_readings(state, [r]))
        sel = c.spec == spec
        t, h = (int(c.trig[sel][0]), int(c.hold[sel][0])) if sel.any() else (0, 0)
        lvl = int(next_level(lvl, t, h))
        out.append(lvl)
    return out


def _edge_levels(metric: str, xs: list[float]) -> list[int]:
    s = SafetyMonitor([metric])
    out = []
    for x in xs:
        s.check({metric: x})
        out.append(s.levels[metric])
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 11.9, 12.0, 12.1, 14.99, 15.0, 24.9, 25.0, 25.1, 30.0, 45.0]),
                min_size=1, max_size=25))
def test_pole_and_gateway_agree_on_leakage(xs: list[float]) -> None:
    assert _edge_levels("leakage_current_ma", xs) == _gateway_levels("leakage_current_ma", xs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([-1.2, 0.0, 0.5, 1.0, 1.5, 1.51, 2.0, 4.0, 4.01, 5.0, 7.0]),
                min_size=BASELINE_LEARN_N, max_size=BASELINE_LEARN_N + 20))
def test_pole_and_gateway_agree_on_tilt_with_a_learned_baseline(devs: list[float]) -> None:
    xs = [10.0 + d for d in devs]  # baseline learned from the first ten, then signed leans both ways
    xs = [max(x, 0.0) for x in xs]
    assert _edge_levels("tilt_deg", xs) == _gateway_levels("tilt_deg", xs)
