"""A lamp's readings against each other: the broken sensor is named, a real lamp or mains fault is not."""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.readings import Reading
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000
STEP = 300_000


def _run(bad: Any, n: int = 30) -> list[tuple[str, str]]:
    """One lit pole (rated 100 W, 230 V, full power); ``bad(k, values)`` changes sample ``k``'s readings."""
    t = [T0]
    stage = DetectionStage(clock=lambda: t[0] / 1000, spatial=None, stream=False)
    stage.set_pole("p-1", "north", rated_power_w=100.0, nominal_voltage_v=230.0)
    rng = np.random.default_rng(1)
    out: list[tuple[str, str]] = []
    for k in range(n):
        t[0] += STEP
        v = 230.0 + float(rng.normal(0, 1.5))
        pw = 100.0 + float(rng.normal(0, 0.4))
        vals = {"lamp_power_w": pw, "supply_voltage_v": v, "power_factor": 0.95, "dimming_pct": 100.0,
                "lamp_current_a": pw / (v * 0.95)}
        if k >= 10:
            bad(k, vals)
        vals = {m: round(x, 3) for m, x in vals.items()}
        r = Reading("p-1", "north", "b", k + 1, t[0], vals)
        out += [(str(a["key"]), str(a["state"])) for a in alerts_of(stage(Outcome(readings=[r])))]
    return [k for k, st in out if st == "raised"]


def test_a_power_sensor_reading_standby_on_a_lit_lamp_is_the_sensor_not_the_lamp() -> None:
    def stuck_low(k: int, v: dict[str, float]) -> None:
        v["lamp_power_w"] = 0.36  # the current still says ~100 W
    raised = _run(stuck_low)
    assert "sensor_physics.lamp_power_w" in raised
    assert "lamp_failure" not in raised


def test_a_real_lamp_failure_is_the_lamp() -> None:
    def dead(k: int, v: dict[str, float]) -> None:
        v["lamp_power_w"] = 0.36
        v["lamp_current_a"] = 0.36 / (v["supply_voltage_v"] * 0.95)  # the driver draws nothing
    raised = _run(dead)
    assert "lamp_failure" in raised
    assert not [k for k in raised if k.startswith("sensor_")]


def test_a_drifting_voltage_sensor_is_the_sensor_and_a_real_surge_is_the_mains() -> None:
    def drift(k: int, v: dict[str, float]) -> None:
        v["supply_voltage_v"] *= 1.0 + 0.02 * (k - 9)  # the reading walks up; current and power do not move
    raised = _run(drift)
    assert "sensor_physics.supply_voltage_v" in raised
    assert "voltage_high" not in raised

    def surge(k: int, v: dict[str, float]) -> None:
        v["supply_voltage_v"] *= 1.2
        v["lamp_current_a"] /= 1.2  # a constant-power driver draws less current at a higher voltage
    raised = _run(surge)
    assert "voltage_high" in raised
    assert not [k for k in raised if k.startswith("sensor_")]


def test_a_surge_of_one_five_minute_sample_is_raised() -> None:
    def one(k: int, v: dict[str, float]) -> None:
        if k == 12:
            v["supply_voltage_v"] *= 1.18
            v["lamp_current_a"] /= 1.18
    assert _run(one) == ["voltage_high"]
