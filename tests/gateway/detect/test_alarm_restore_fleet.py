"""Regression: restoring the alarms of a fleet larger than the initial array capacity after a restart.

A gateway killed while 100 poles had active alarms crashed on restart (the restore loop kept a
reference to arrays that ensure() had just replaced), which stalled ingestion until an operator
deleted the state file. Found by the full-size gateway-kill drill.
"""

from __future__ import annotations

from pathlib import Path

from contract.readings import Reading
from gateway.detection import DetectionStage
from gateway.pipeline import Outcome

T0 = 1_800_000_000_000


def test_alarms_of_200_poles_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "alarms.json")
    stage = DetectionStage(state_path=path, clock=lambda: T0 / 1000)
    readings = [Reading(f"p-{i:04d}", "north", "b", 1, T0, {"smoke": 1.0}) for i in range(200)]
    stage(Outcome(readings=readings))
    assert len(stage.active()) == 200
    stage.close()
    again = DetectionStage(state_path=path, clock=lambda: T0 / 1000)
    assert {a.pole for a in again.active()} == {f"p-{i:04d}" for i in range(200)}
    again.close()
