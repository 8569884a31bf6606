"""A lamp's readings against each other: ``sensor_physics.<metric>`` (warning, kind ``sensor_suspect``).

A lit lamp obeys ``P = V x I x PF`` and draws what its driver is set to, ``E = rated x dimming``. When
one reading breaks both relations while the others keep them, that reading is the broken sensor:

* **power**: ``|P / E - 1| > power_tol`` while the electrical side agrees with the expectation,
  ``|V x I x PF / E - 1| <= agree_tol``: the lamp draws what it should, the power sensor says otherwise
  (a real failure drops the current with the power, so it is the lamp's ``lamp_failure``);
* **voltage**: ``|V / V_nom - 1| > volt_tol`` while the nominal voltage explains the power,
  ``|P / (V_nom x I x PF) - 1| <= agree_tol``, and the reading does not, ``|P / (V x I x PF) - 1| >
  agree_tol``: a constant-power driver draws less current when the mains really rises, so a real surge
  keeps ``P = V x I x PF``; a drifting voltage sensor breaks it.

The stage reports a ``lamp_failure`` / ``voltage`` condition on a pole whose sensor of that metric is
suspect (this alarm, a stuck or a drifting one) as the sensor's fault (``DetectionStage._sensor_fault``).
Judged only while lit (expected power >= ``lit_min`` x rated; at standby the current is below the
sensor's resolution) and with every reading fresh. Pure numpy, latest values of the fleet state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.catalog import BY_NAME, DEFAULT_NOMINAL_VOLTAGE_V, DEFAULT_RATED_POWER_W, INDEX
from gateway.detect.state import FleetState
from gateway.detect.types import AlarmSpec, Conditions, Tier

PHYSICS_METRICS = ("lamp_power_w", "supply_voltage_v")


@dataclass(frozen=True, slots=True)
class PhysicsParams:
    power_tol: float = 0.15  # power this far from expected (lamp_failure is at 20 % under)
    volt_tol: float = 0.08  # voltage this far from nominal (the voltage rules are at 15 %)
    agree_tol: float = 0.06  # the other relation holds this well (current resolution 0.01 A at ~0.3 A)
    lit_min: float = 0.2
    window_ms: int = 15 * 60_000  # every reading must be this fresh against the pole's newest sample
    raise_n: int = 2  # before the lamp_failure / voltage rules' 3 samples, so the sensor is named first
    clear_n: int = 3


def physics_specs(p: PhysicsParams = PhysicsParams()) -> tuple[AlarmSpec, ...]:
    text = {"lamp_power_w": "lamp power reading disagrees with the lamp's own current and voltage: the power "
                            "sensor, not the lamp",
            "supply_voltage_v": "supply voltage reading disagrees with the lamp's power and current: the voltage "
                                "sensor, not the mains"}
    return tuple(AlarmSpec(f"sensor_physics.{m}", "sensor_suspect", m, (Tier("warning", text[m]),),
                           raise_n=p.raise_n, raise_ms=0, clear_n=p.clear_n, unit=BY_NAME[m].unit,
                           ref_label="physics says", ref_unit=BY_NAME[m].unit, decimals=BY_NAME[m].decimals)
                 for m in PHYSICS_METRICS)


class PhysicsRule:
    """Conditions for ``specs`` (spec 0 = power, 1 = voltage) of the poles in ``rows``."""

    def __init__(self, state: FleetState, params: PhysicsParams = PhysicsParams()) -> None:
        self.state, self.params = state, params
        self.specs = physics_specs(params)

    def evaluate(self, rows: np.ndarray) -> Conditions:
        rows = np.unique(rows).astype(np.int64)
        if len(rows) == 0:
            return Conditions.empty()
        f, p = self.state, self.params
        now = f.last_ts[rows]

        def get(name: str) -> tuple[np.ndarray, np.ndarray]:
            c = INDEX[name]
            v, t = f.value[rows, c], f.value_ts[rows, c]
            return v, ~np.isnan(v) & (t >= now - p.window_ms)

        pw, pw_ok = get("lamp_power_w")
        v, v_ok = get("supply_voltage_v")
        i, i_ok = get("lamp_current_a")
        pf, pf_ok = get("power_factor")
        dim, dim_ok = get("dimming_pct")
        rated = np.where(np.isnan(f.rated_w[rows]), DEFAULT_RATED_POWER_W, f.rated_w[rows])
        nom = np.where(np.isnan(f.nominal_v[rows]), DEFAULT_NOMINAL_VOLTAGE_V, f.nominal_v[rows])
        expected = rated * np.where(dim_ok, dim, 0.0) / 100.0
        ok = pw_ok & v_ok & i_ok & pf_ok & dim_ok & (expected >= p.lit_min * rated) & (pf > 0) & (i > 0)
        e = np.where(ok, expected, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            elec = v * i * pf
            power_bad = ok & (np.abs(pw / e - 1.0) > p.power_tol) & (np.abs(elec / e - 1.0) <= p.agree_tol)
            by_nom = pw / np.where(ok, nom * i * pf, 1.0)
            by_v = pw / np.where(ok, elec, 1.0)
            volt_bad = (ok & (np.abs(v / nom - 1.0) > p.volt_tol) & (np.abs(by_nom - 1.0) <= p.agree_tol)
                        & (np.abs(by_v - 1.0) > p.agree_tol))
        r = np.flatnonzero(ok)
        k = len(r)
        if k == 0:
            return Conditions.empty()
        rr = np.concatenate([rows[r], rows[r]])
        spec = np.concatenate([np.zeros(k, np.int64), np.ones(k, np.int64)])
        bad = np.concatenate([power_bad[r], volt_bad[r]]).astype(np.int8)
        value = np.concatenate([pw[r], v[r]])
        with np.errstate(divide="ignore", invalid="ignore"):
            v_says = pw / (i * pf)
        ref = np.concatenate([elec[r], v_says[r]])  # what the other readings say it should be
        return Conditions(rr, spec, bad, bad.copy(), value, ref, bad.astype(np.float64), np.concatenate([now[r]] * 2))
