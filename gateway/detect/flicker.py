"""Lamp flicker: the lamp switched on / off ``flicker_on`` times or more within ``flicker_window_ms``
(a failing driver or a loose contact). "On" is power above ``lamp_on_frac`` of rated power; the
toggle times of each pole sit in a small ring."""

from __future__ import annotations

import numpy as np

from gateway.detect.params import RuleParams
from gateway.detect.state import NO_TS, Col, Columns, FleetState
from gateway.detect.types import AlarmSpec, Conditions, Tier, levels


def flicker_spec(params: RuleParams) -> AlarmSpec:
    return AlarmSpec("lamp_flicker", "lamp_flicker", "lamp_power_w",
                     (Tier("warning", f"lamp switched on/off {params.flicker_on} times or more within "
                                      f"{params.flicker_window_ms // 60_000} min: failing driver or "
                                      "loose contact"),),
                     raise_n=1, raise_ms=0, clear_n=params.clear_n, unit="toggles", decimals=0)


class FlickerState(Columns):
    lamp_state = Col(np.int8, -1)  # last seen on (1) / off (0); -1 unknown
    ring = Col(np.int64, NO_TS, "ring_len")  # device times of the latest toggles
    pos = Col(np.int64, 0)  # next slot of the ring

    def __init__(self, fleet: FleetState, ring_len: int) -> None:
        self.ring_len = ring_len
        super().__init__(fleet)


class Flicker:
    def __init__(self, fleet: FleetState, params: RuleParams, spec: int) -> None:
        self.params, self.spec = params, spec
        self.st = FlickerState(fleet, max(params.flicker_on, 1) + 1)

    def evaluate(self, rows: np.ndarray, ts: np.ndarray, power: np.ndarray, rated: np.ndarray
                 ) -> Conditions:
        st, p = self.st, self.params
        has = ~np.isnan(power)
        r, t = rows[has], ts[has]
        if len(r) == 0:
            return Conditions.empty()
        on = (power[has] >= p.lamp_on_frac * rated[has]).astype(np.int8)
        prev = st.lamp_state[r]
        flip = (prev >= 0) & (prev != on)
        fr = r[flip]
        ring = st.ring
        ring[fr, st.pos[fr] % ring.shape[1]] = t[flip]
        st.pos[fr] += 1
        st.lamp_state[r] = on
        count = np.sum(ring[r] > t[:, None] - p.flicker_window_ms, axis=1).astype(np.float64)
        trig, hold = levels(count, ">=", (p.flicker_on,), (p.flicker_clear,))
        return Conditions(r, np.full(len(r), self.spec, np.int64), trig, hold, count,
                          np.full(len(r), np.nan), (hold > 0).astype(np.float64), t)
