"""Layer 3: a pole against its district at the same moment, and the district against its own past.

For every spatial metric, at one evaluation time ``now``:

* take the latest value of each pole whose reading is fresh (device time within ``window_ms``);
* per district (vectorised over all districts at once): the median and the MAD of those values;
* **sensor_suspect** (per pole): ``z = |x - median| / max(1.4826 MAD, floor)``. One pole far from
  its peers while they agree with each other is a broken or fouled sensor, not the air;
* **district_event** (per district): the district median against its own slow baseline (an
  exponentially weighted mean with time constant ``tau_ms``, updated with a winsorised median so an
  episode cannot drag it along, and an EW mean absolute deviation as its spread). The whole district
  rising together is a real event — a pollution episode, a heat wave — and is reported once for the
  district (entity :data:`DISTRICT_POLE`), ``info`` and ``warning`` by how far. It is one-sided
  (upwards): a district getting cleaner or cooler is not an alarm. No condition until
  ``warmup_evals`` evaluations have built the baseline ("unknown", not "normal").

Because the per-pole z is taken against the median of the same moment, a district-wide rise moves
the median with it and raises no sensor_suspect; one outlier pole does not move the median and raises
no district_event. The default metrics are those that are smooth at district scale (particulates,
NO2, air temperature, humidity); noise and light are local by nature and are left out.

``floor`` per metric comes from the catalog: ``max(signal noise, 0.1 % of the valid range)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.catalog import BY_NAME, INDEX, Metric
from gateway.detect.rules import AlarmSpec, Conditions, Tier, levels
from gateway.detect.state import NO_TS, FleetState

DISTRICT_POLE = "district"  # the entity (pole segment of the alert topic) of a district-level alarm
SPATIAL_METRICS = ("pm25_ugm3", "pm10_ugm3", "no2_ugm3", "ambient_temp_c", "humidity_pct")


@dataclass(frozen=True, slots=True)
class SpatialParams:
    metrics: tuple[str, ...] = SPATIAL_METRICS
    every_ms: int = 60_000  # evaluation cadence (device time)
    window_ms: int = 15 * 60_000  # a pole's latest value counts if this fresh
    min_poles: int = 6  # fresh poles a district needs (the pole itself included)
    z_suspect: float = 6.0
    z_suspect_clear: float = 4.0
    z_event: float = 4.0
    z_event_clear: float = 2.5
    z_event_warning: float = 8.0
    z_event_warning_clear: float = 6.0
    tau_ms: float = 12 * 3_600_000  # district baseline time constant
    warmup_evals: int = 30
    clip: float = 3.0  # winsorise baseline updates at base +- clip x spread
    raise_n: int = 3  # evaluations
    clear_n: int = 3


def floor_of(m: Metric) -> float:
    return max(m.signal.noise, 1e-3 * (m.hi - m.lo))


def group_median(g: np.ndarray, x: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``x`` per group id ``g`` (NaN for an empty group) and the group sizes."""
    cnt = np.bincount(g, minlength=n_groups).astype(np.int64)
    med = np.full(n_groups, np.nan)
    if len(x) == 0:
        return med, cnt
    order = np.lexsort((x, g))
    xs = x[order]
    start = np.cumsum(cnt) - cnt
    has = cnt > 0
    lo = start[has] + (cnt[has] - 1) // 2
    hi = start[has] + cnt[has] // 2
    med[has] = 0.5 * (xs[lo] + xs[hi])
    return med, cnt


class Spatial:
    """Spatial conditions for poles (sensor_suspect) and districts (district_event)."""

    def __init__(self, state: FleetState, params: SpatialParams = SpatialParams()) -> None:
        self.state, self.params = state, params
        for name in params.metrics:
            if name not in BY_NAME or BY_NAME[name].dtype != "float":
                raise ValueError(f"spatial metric {name!r} is not a float metric of the catalog")
        self.metrics = tuple(BY_NAME[n] for n in params.metrics)
        self.cols = np.array([INDEX[m.name] for m in self.metrics], np.int64)
        self.floors = np.array([floor_of(m) for m in self.metrics])
        p = params
        self.pole_specs = tuple(
            AlarmSpec(f"sensor_suspect.{m.name}", "sensor_suspect", m.name,
                      (Tier("warning", f"{m.description} far from the district's other poles at the same "
                                       "moment: suspect sensor"),),
                      raise_n=p.raise_n, raise_ms=0, clear_n=p.clear_n, unit=m.unit,
                      ref_label="district median", ref_unit=m.unit, decimals=m.decimals)
            for m in self.metrics)
        self.district_specs = tuple(
            AlarmSpec(f"district_event.{m.name}", "district_event", m.name,
                      (Tier("info", f"{m.description} high across the whole district"),
                       Tier("warning", f"{m.description} far above normal across the whole district")),
                      raise_n=p.raise_n, raise_ms=0, clear_n=p.clear_n, unit=m.unit,
                      ref_label="usual", ref_unit=m.unit, decimals=m.decimals)
            for m in self.metrics)
        k = len(self.metrics)
        self._d_cap = 0
        self.base = np.empty((0, k))
        self.spread = np.empty((0, k))
        self.n_eval = np.empty((0, k), np.int64)
        self.last_ms = np.empty((0, k), np.int64)
        self._grow(8)

    def _grow(self, need: int) -> None:
        cap = max(self._d_cap, 1)
        while cap < need:
            cap *= 2
        if cap == self._d_cap:
            return
        k = len(self.metrics)
        old = self._d_cap
        for name, fill, dt in (("base", np.nan, np.float64), ("spread", 0.0, np.float64),
                               ("n_eval", 0, np.int64), ("last_ms", NO_TS, np.int64)):
            fresh = np.full((cap, k), fill, dt)
            fresh[:old] = getattr(self, name)
            setattr(self, name, fresh)
        self._d_cap = cap

    def evaluate(self, now_ms: int) -> tuple[Conditions, Conditions]:
        """(pole conditions, district conditions); spec indices into ``pole_specs``/``district_specs``.
        District condition rows are district indices of the fleet state."""
        st, p = self.state, self.params
        n_d = len(st.districts)
        self._grow(n_d)
        district = st.a["district"][: st.n].astype(np.int64)
        pole_parts, dist_parts = [], []
        for j, col in enumerate(self.cols):
            v, fresh = st.latest(int(col), now_ms, p.window_ms)
            rows = np.flatnonzero(fresh).astype(np.int64)
            g, x = district[rows], v[rows]
            med, cnt = group_median(g, x, n_d)
            dev = np.abs(x - med[g])
            mad, _ = group_median(g, dev, n_d)
            scale = np.maximum(1.4826 * np.nan_to_num(mad), self.floors[j])
            ok = cnt[g] >= p.min_poles
            z = dev[ok] / scale[g[ok]]
            trig, hold = levels(z, ">=", (p.z_suspect,), (p.z_suspect_clear,))
            m = int(ok.sum())
            pole_parts.append(Conditions(rows[ok], np.full(m, j, np.int64), trig, hold, x[ok], med[g[ok]],
                                         1.0 - np.exp(-z / p.z_suspect), np.full(m, now_ms, np.int64)))
            dist_parts.append(self._district(j, np.flatnonzero(cnt >= p.min_poles), med, now_ms))
        return Conditions.concat(pole_parts), Conditions.concat(dist_parts)

    def _district(self, j: int, ds: np.ndarray, med: np.ndarray, now_ms: int) -> Conditions:
        p = self.params
        ds = ds.astype(np.int64)
        if len(ds) == 0:
            return Conditions.empty()
        m = med[ds]
        base, spread = self.base[ds, j], self.spread[ds, j]
        n, last = self.n_eval[ds, j], self.last_ms[ds, j]
        sigma = np.maximum(1.2533 * spread, self.floors[j])  # mean abs deviation -> standard deviation
        first = np.isnan(base)
        z = np.where(first, 0.0, (m - np.where(first, 0.0, base)) / sigma)
        ready = n >= p.warmup_evals
        # baseline update: running mean while warming up, then EW with time constant tau (winsorised)
        dt = np.where(last == NO_TS, 0, np.maximum(now_ms - last, 0)).astype(np.float64)
        a = np.where(ready, -np.expm1(-dt / p.tau_ms), 1.0 / (n + 1))
        b0 = np.where(first, m, base)
        mw = np.where(ready, np.clip(m, b0 - p.clip * sigma, b0 + p.clip * sigma), m)
        nb = b0 + a * (mw - b0)
        self.spread[ds, j] = np.where(first, 0.0, spread + a * (np.abs(mw - b0) - spread))
        self.base[ds, j] = nb
        self.n_eval[ds, j] = n + 1
        self.last_ms[ds, j] = now_ms
        r = ds[ready]
        zz = z[ready]
        trig, hold = levels(zz, ">=", (p.z_event, p.z_event_warning),
                            (p.z_event_clear, p.z_event_warning_clear))
        k = len(r)
        return Conditions(r, np.full(k, j, np.int64), trig, hold, m[ready], base[ready],
                          1.0 - np.exp(-np.maximum(zz, 0.0) / p.z_event), np.full(k, now_ms, np.int64))

    # --- persistence --------------------------------------------------------------------------------
    def export(self) -> list[dict[str, Any]]:
        out = []
        for d, name in enumerate(self.state.districts[: self._d_cap]):
            for j, m in enumerate(self.metrics):
                if self.n_eval[d, j] > 0:
                    out.append({"district": name, "metric": m.name, "base": float(self.base[d, j]),
                                "spread": float(self.spread[d, j]), "n": int(self.n_eval[d, j]),
                                "last_ms": int(self.last_ms[d, j])})
        return out

    def restore(self, entries: Sequence[dict[str, Any]]) -> None:
        names = {m.name: j for j, m in enumerate(self.metrics)}
        for e in entries:
            j = names.get(str(e.get("metric")))
            if j is None:
                continue
            d = self.state.district_index(str(e["district"]))
            self._grow(d + 1)
            self.base[d, j] = float(e["base"])
            self.spread[d, j] = float(e["spread"])
            self.n_eval[d, j] = int(e["n"])
            self.last_ms[d, j] = int(e["last_ms"])
