"""Layer 1: the stuck-sensor check (a reading that has not changed for longer than it plausibly could)."""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.catalog import BY_NAME
from contract.readings import Reading
from gateway.detect.rules import RuleParams, repeat_prior, stuck_metrics
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000
STEP = 60_000
PARAMS = RuleParams()
N = PARAMS.stuck_min_n  # a series that never repeated itself is stuck after this many identical readings


class Pole:
    def __init__(self) -> None:
        self.t = T0
        self.stage = DetectionStage(clock=lambda: self.t / 1000, spatial=None, stream=False)
        self.rng = np.random.default_rng(3)

    def send(self, humidity: float) -> list[dict[str, Any]]:
        self.t += STEP
        r = Reading("p-1", "north", "b", self.t // STEP, self.t, {"humidity_pct": humidity})
        return [a for a in alerts_of(self.stage(Outcome(readings=[r]))) if a["kind"] == "sensor_stuck"]

    def warm(self) -> None:
        for k in range(PARAMS.stuck_warm + 5):  # never the same twice: a repeat rate of 0
            assert self.send(40.0 + 0.1 * (k % 300)) == []


def test_eligible_metrics_vary_by_catalog() -> None:
    names = {m.name for m in stuck_metrics()}
    assert "humidity_pct" in names and "illuminance_lux" in names
    assert "water_level_cm" in names  # constant-shaped, but a safety channel with sensor noise
    assert not names & {"door_open", "smoke", "backhaul_up", "dimming_pct"}
    assert 0 < repeat_prior(BY_NAME["humidity_pct"]) < 0.1


def test_stuck_at_exactly_n_identical_readings_and_any_change_clears() -> None:
    p = Pole()
    p.warm()
    for _ in range(N - 1):  # just below N: nothing
        assert p.send(55.5) == []
    (a,) = p.send(55.5)  # the N-th identical reading
    assert (a["state"], a["key"], a["severity"]) == ("raised", "sensor_stuck.humidity_pct", "warning")
    assert p.send(55.5) == []  # still stuck: no new alert
    (c,) = p.send(55.6)  # any change clears at once
    assert c["state"] == "cleared"


def test_no_stuck_condition_while_warming_up() -> None:
    p = Pole()
    for _ in range(5):
        p.send(round(60 + p.rng.normal(0, 3.0), 1))
    assert all(p.send(55.5) == [] for _ in range(3 * N))


def test_a_series_that_often_repeats_needs_a_longer_run() -> None:
    p = Pole()
    for k in range(PARAMS.stuck_warm + 60):  # repeats itself every other reading
        p.send(50.0 + 0.1 * (k // 2))
    limit = int(p.stage.rules.stuck_limit(np.array([0.5]))[0])
    assert limit > N
    assert all(p.send(42.0) == [] for _ in range(limit - 1))
    (a,) = p.send(42.0)
    assert a["state"] == "raised"


def test_a_saturated_reading_is_not_stuck() -> None:
    p = Pole()
    p.warm()
    assert all(p.send(100.0) == [] for _ in range(3 * N))  # humidity pinned at the top of its range


class Lamp:
    """A 40 W lamp (rated 40 W, 230 V) at full power: the driver draws 0.18 A +- 2 mA, read to 0.01 A."""

    def __init__(self) -> None:
        self.t = T0
        self.stage = DetectionStage(clock=lambda: self.t / 1000, spatial=None, stream=False)
        self.stage.set_pole("p-1", "north", rated_power_w=40.0, nominal_voltage_v=230.0)
        self.rng = np.random.default_rng(5)

    def send(self, current: float, power: float, dim: float = 100.0) -> list[dict[str, Any]]:
        self.t += STEP
        r = Reading("p-1", "north", "b", self.t // STEP, self.t,
                    {"lamp_current_a": current, "lamp_power_w": round(power + self.rng.normal(0, 0.4), 2),
                     "dimming_pct": dim})
        return [a for a in alerts_of(self.stage(Outcome(readings=[r])))
                if a["kind"] == "sensor_stuck" and a["metric"] == "lamp_current_a"]

    def warm(self) -> None:
        for k in range(PARAMS.stuck_warm + 5):  # a current that changes at every reading (0.17 .. 0.19)
            assert self.send(0.17 + 0.01 * (k % 3), 40.0) == []


def test_a_steady_lamp_current_below_its_resolution_is_not_stuck() -> None:
    """Held-out seeds 4009 and 4018: a 40 W lamp at full power read 0.18 A for 30 readings at dusk and was
    called a stuck sensor. Its power wavered by a watt: not enough to move the current by one step."""
    lamp = Lamp()
    lamp.warm()
    assert [a for _ in range(PARAMS.stuck_max_n + 10) for a in lamp.send(0.18, 40.0)] == []


def test_a_lamp_current_frozen_while_its_power_moves_is_stuck() -> None:
    """The same reading while the driver's power halves (dimmed to 50 %: 0.09 A) is a frozen sensor."""
    lamp = Lamp()
    lamp.warm()
    for _ in range(PARAMS.stuck_max_n):
        assert lamp.send(0.18, 40.0) == []
    got = [a for _ in range(3) for a in lamp.send(0.18, 20.0, dim=50.0)]
    assert [(a["state"], a["key"]) for a in got] == [("raised", "sensor_stuck.lamp_current_a")]
