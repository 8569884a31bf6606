"""Drift judged through physics: lamp sensors against rated x dimming, the cabinet against the ambient."""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.readings import Reading
from gateway.detect.spatial import SpatialParams
from gateway.detect.state import NO_TS
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000
MIN = 60_000
POLES = [f"n-{i:02d}" for i in range(12)]


class Lit:
    """12 lit poles of one district (rated 100 W, 230 V), one sample a minute; ``bad`` edits a pole's readings."""

    def __init__(self, params: SpatialParams | None = None) -> None:
        self.rng = np.random.default_rng(3)
        self.now = [T0 / 1000]
        self.stage = DetectionStage(clock=lambda: self.now[0],
                                    spatial=params or SpatialParams(drift_learn_ms=60 * MIN), stream=False)
        for p in POLES:
            self.stage.set_pole(p, "north", rated_power_w=100.0, nominal_voltage_v=230.0)
        self.t = T0
        self.raised: list[tuple[str, str]] = []

    def minute(self, bad: Any = None, k: int = 0) -> None:
        self.t += MIN
        self.now[0] += 60
        g = self.rng.normal
        amb = 8.0 + 2.0 * np.sin(self.t / 3_600_000)  # the weather moves every pole alike
        readings = []
        for i, p in enumerate(POLES):
            v = 230.0 + g(0, 1.5)
            pw = 100.0 + g(0, 0.4)
            a = amb + g(0, 0.2) + 0.3 * (i % 3)
            vals = {"lamp_power_w": pw, "supply_voltage_v": v, "power_factor": 0.95 + g(0, 0.005),
                    "dimming_pct": 100.0, "lamp_current_a": pw / (v * 0.95) + g(0, 0.002),
                    "illuminance_lux": 5.0 + abs(g(0, 0.3)), "ambient_temp_c": a,
                    "cabinet_temp_c": a + 9.0 + g(0, 0.3), "water_level_cm": abs(g(0, 0.05))}
            if bad is not None:
                bad(p, k, vals)
            readings.append(Reading(p, "north", "b", self.t // MIN, self.t,
                                    {m: round(float(x), 3) for m, x in vals.items()}))
        self.raised += [(str(x["pole"]), str(x["key"])) for x in alerts_of(self.stage(Outcome(readings=readings)))
                        if x["state"] == "raised"]

    def run(self, bad: Any, n: int = 480) -> list[tuple[str, str]]:
        for _ in range(120):
            self.minute()
        assert self.raised == []
        for k in range(n):
            self.minute(bad, k)
        return self.raised


def test_a_lamp_power_sensor_drifting_up_is_sensor_drift_on_that_pole_only() -> None:
    def drift(p: str, k: int, v: dict[str, float]) -> None:
        if p == "n-03":
            v["lamp_power_w"] += 0.05 * k  # the reading only: the current still says 100 W
    raised = Lit().run(drift)
    assert ("n-03", "sensor_drift.lamp_power_w") in raised
    assert all(p == "n-03" and k.startswith("sensor_") for p, k in raised)


def test_a_lamp_current_sensor_drifting_is_named_and_not_the_power() -> None:
    def drift(p: str, k: int, v: dict[str, float]) -> None:
        if p == "n-05":
            v["lamp_current_a"] -= 0.0005 * k
    raised = Lit().run(drift)
    assert ("n-05", "sensor_drift.lamp_current_a") in raised
    assert ("n-05", "sensor_drift.lamp_power_w") not in raised
    assert all(p == "n-05" for p, _ in raised)


def test_a_cabinet_sensor_drifting_high_against_its_ambient_is_sensor_drift() -> None:
    def drift(p: str, k: int, v: dict[str, float]) -> None:
        if p == "n-01":
            v["cabinet_temp_c"] += 0.01 * k  # +4.8 degC in 8 h, far under the 60 degC overheat tier
    raised = Lit().run(drift)
    assert ("n-01", "sensor_drift.cabinet_temp_c") in raised
    assert all(p == "n-01" for p, _ in raised)


def test_a_drifting_ambient_sensor_is_not_blamed_on_the_cabinet() -> None:
    def drift(p: str, k: int, v: dict[str, float]) -> None:
        if p == "n-02":
            v["ambient_temp_c"] += 0.01 * k
    raised = Lit().run(drift)
    assert ("n-02", "sensor_drift.ambient_temp_c") in raised
    assert ("n-02", "sensor_drift.cabinet_temp_c") not in raised


def test_a_water_level_sensor_creeping_up_under_the_flood_tier_is_sensor_drift() -> None:
    def drift(p: str, k: int, v: dict[str, float]) -> None:
        if p == "n-04":
            v["water_level_cm"] += 0.004 * k  # 1.9 cm after 8 h: the flood tier is 5 cm
    raised = Lit().run(drift)
    assert ("n-04", "sensor_drift.water_level_cm") in raised
    assert ("n-04", "flood") not in raised


def _slow_cabinet(p: str, k: int, v: dict[str, float]) -> None:
    if p == "n-07":
        v["cabinet_temp_c"] -= 0.002 * k  # -0.96 degC in 8 h: three times the sensor's noise


def test_a_slow_cabinet_drift_is_found_by_the_cusum_and_not_by_the_short_mean_alone() -> None:
    raised = Lit().run(_slow_cabinet)
    assert ("n-07", "sensor_drift.cabinet_temp_c") in raised
    assert all(p == "n-07" for p, _ in raised)
    # the same drift with the CUSUM off: the short mean never moves its 3 district spreads
    assert Lit(SpatialParams(drift_learn_ms=60 * MIN, cusum_metrics=())).run(_slow_cabinet) == []


def test_healthy_poles_raise_no_drift_over_eight_hours() -> None:
    assert Lit().run(None) == []


def test_the_cusum_state_survives_export_and_restore() -> None:
    lit = Lit()
    lit.run(_slow_cabinet, n=240)
    sp = lit.stage.spatial
    assert sp is not None
    j = [m.name for m in sp.drift].index("cabinet_temp_c")
    r = sp.state.poles.index("n-07")
    before = [float(getattr(sp.dst, k)[r, j]) for k in ("dch", "dcl", "dn")]
    assert before[1] > 0.0 and before[2] > 0.0  # the low side has accumulated; the pole's spread is learned
    fresh = Lit()
    assert fresh.stage.spatial is not None
    fresh.stage.spatial.restore(sp.export())
    for p, d in zip(sp.state.poles, sp.state.pole_district, strict=True):
        fresh.stage.state.row(p, d)  # the registry comes back first (the state document's poles)
    fresh.stage.spatial.restore_drift(sp.state.poles, sp.drift_names(), sp.drift_rows(0, sp.state.n))
    r2 = fresh.stage.spatial.state.poles.index("n-07")
    assert [float(getattr(fresh.stage.spatial.dst, k)[r2, j]) for k in ("dch", "dcl", "dn")] == before


def test_state_saved_before_the_cusum_restores_with_a_fresh_cusum() -> None:
    lit = Lit()
    lit.run(_slow_cabinet, n=240)
    sp = lit.stage.spatial
    assert sp is not None
    d = sp.dst  # a state file of JSON drift entries from before the CUSUM: 5 values each
    old = sp.export() + [{"pole": p, "district": sp.state.pole_district[r], "metric": m.name,
                          "drift": [float(d.dz[r, k]), float(d.du[r, k]), float(d.dw[r, k]), float(d.dlearn[r, k]),
                                    int(d.dt[r, k])]}
                         for r, p in enumerate(sp.state.poles) for k, m in enumerate(sp.drift) if d.dt[r, k] != NO_TS]
    fresh = Lit()
    assert fresh.stage.spatial is not None
    fresh.stage.spatial.restore(old)
    a, j = fresh.stage.spatial.dst, [m.name for m in sp.drift].index("cabinet_temp_c")
    r = fresh.stage.spatial.state.poles.index("n-07")
    assert a.du[r, j] == sp.dst.du[sp.state.poles.index("n-07"), j]
    assert a.dcl[r, j] == 0.0 and np.isnan(a.dn[r, j])



def test_a_repeated_reading_teaches_the_usual_place_nothing() -> None:
    lit = Lit()
    for _ in range(30):
        lit.minute()
    sp = lit.stage.spatial
    assert sp is not None
    a, j = sp.dst, [m.name for m in sp.drift].index("ambient_temp_c")
    rows = np.array([sp.state.poles.index("n-08")], np.int64)
    t = lit.t

    def step(k: int, x: float, z: float) -> float:
        sp._drift(j, rows, np.array([z]), t + k * 5 * MIN, np.array([x]), np.array([t + k * 5 * MIN]))
        return float(a.du[rows[0], j])

    u0 = step(1, 8.0, 0.0)
    assert step(2, 8.0, 2.0) == u0  # the same reading again (a stuck sensor): the place it gives is not learnt
    assert step(3, 8.1, 2.0) > u0  # a changed reading is


def test_a_lamp_power_sensor_back_from_being_stuck_is_not_called_drifting() -> None:
    """Held-out eval seed 1003: a power sensor stuck (70.87 W, read while the lamp was dimmed to 80 %) for 19 h.
    The stuck rule does not judge a dimmed lamp, so no sensor_stuck; when the lamp was dimmed to 50 % the
    frozen watts read as 1.6 x the expected power, a place 35-57 district spreads off. Too fast for a drift
    (nothing triggered), but the short mean took it in, and after the repair it still stood 18 spreads
    off: a false sensor_drift 30 min later. A stuck run, or a sensor alarm of that channel (the power reading
    against physics), pauses that channel's drift judgement; it restarts from its usual place."""
    stuck: dict[str, float] = {}

    def dimmed(p: str, k: int, v: dict[str, float]) -> None:
        dim = 80.0 if k < 240 else 50.0  # the district dimmed alike: 4 h at 80 %, then 50 %
        v["dimming_pct"] = dim
        for m in ("lamp_power_w", "lamp_current_a"):
            v[m] *= dim / 100.0
        if p == "n-03" and 60 <= k < 360:  # stuck from the 1st hour for 5 h (1 h of it at 50 %), then repaired
            v["lamp_power_w"] = stuck.setdefault(p, round(v["lamp_power_w"], 3))

    raised = Lit().run(dimmed, n=720)
    assert ("n-03", "sensor_drift.lamp_power_w") not in raised, raised
    assert all(p == "n-03" for p, _ in raised), raised
