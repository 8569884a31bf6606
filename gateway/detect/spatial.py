"""Layer 3: a pole against its district at the same moment, and the district against its own past.

For every spatial metric, at one evaluation time ``now``:

* take the latest value of each pole whose reading is fresh (device time within ``window_ms``);
* per district (vectorised over all districts at once): the median and the MAD of those values;
* **sensor_suspect** (per pole): ``z = |x - median| / max(1.4826 MAD, floor)``. One pole far from
  its peers while they agree with each other is a broken or fouled sensor, not the air. For a metric
  that drift also follows, ``z`` is taken relative to the pole's own usual place (below) and only once
  that is learned: a pole that always stands apart (a busy road) is not suspect for being itself;
* **sensor_drift** (per pole, ``drift_metrics``): the same signed ``z`` is the pole's place among its
  peers. A healthy sensor keeps its place (its microclimate, its traffic, its installation); a drifting
  one walks away from it. Per pole x metric: a short EW mean of ``z`` (``drift_tau_ms``) against the
  pole's own usual place (learned over ``drift_learn_ms``, then followed very slowly and only while
  the pole is not drifting) and its usual wander; ``|short - usual| >= max(drift_z, drift_k x wander)``
  raises (``warning``). Because ``z`` is in units of the district's spread at that moment, a
  district-wide episode that scales every pole together does not move it;
* **district_event** (per district): the district median against what is *usual for that hour*: a
  slow level (EW, ``tau_ms``) plus a daily profile of 24 hourly offsets (each an EW mean of the
  winsorised offset of the median from the level, learned online like the streaming detector's
  profile), with an EW mean absolute residual as spread. Rush hours and the daily cycle of temperature
  and humidity are in the profile; a real event (a pollution episode, a heat wave) is a rise above it
  that lasts: ``z >= z_event`` for ``event_persist_ms`` (info; ``z_event_warning``: warning). It is
  reported once for the district (entity :data:`DISTRICT_POLE`), upwards only (a district getting
  cleaner or cooler is not an alarm). No condition ("unknown", not "normal") until the hour's bin has
  ``bin_warm_ms`` of data and the spread has been learned over ``warmup_ms`` against warm bins; the
  level, the bin and the spread learn from a winsorised median, so an episode cannot teach itself.

Some drift channels are judged through physics rather than on the raw reading (:data:`PHYSICS`: the
cabinet over its own ambient, the lamp's power and current against rated x dimming, the light under lit
lamps), a drift is slow (a reading running far ahead of its short mean is an event, not a sensor), and a
pole frozen by another fault restarts its short mean from its usual place.

Because the per-pole z is taken against the median of the same moment, a district-wide rise moves
the median with it and raises no sensor_suspect; one outlier pole does not move the median and raises
no district_event. The default metrics are those that are smooth at district scale (particulates,
NO2, air temperature, humidity); noise and light are local by nature and are left out. Drift is
judged on every float metric whose pole-to-pole differences are stable (not the lamp's schedule-driven
electrical readings, not the light, not the commanded dimming).

``floor`` per metric comes from the catalog: ``max(sensor noise, 0.1 % of the valid range)``. Which metrics
each judgement covers comes from the catalog too (``Metric.detect``), not from lists here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract import catalog
from contract.catalog import (
    BY_NAME,
    DEFAULT_NOMINAL_VOLTAGE_V,
    DEFAULT_RATED_POWER_W,
    INDEX,
    LIT_DRIFT_METRICS,
    PEER_METRICS,
    PHYSICS_METRICS,
    Metric,
)
from gateway.detect.state import NO_TS, Col, Columns, FleetState
from gateway.detect.types import AlarmSpec, Conditions, Tier, levels

DISTRICT_POLE = "district"  # the entity (pole segment of the alert topic) of a district-level alarm
#: Judged against the district's peers at the same moment, and as a district (``Detect.peers`` in the catalog).
SPATIAL_METRICS = PEER_METRICS
#: Safety channels judged for drift too, both ways: a cabinet-temperature, leakage or water-level sensor
#: reading low would hide an overheat, a leak or a flood; one reading high under its safety tier is a false
#: hazard in the making (or the start of a real one: the alarm says both, and it never explains a safety
#: alarm away). Their judgement pauses while a layer-1 rule holds on the pole (``frozen``). Tilt drift
#: looks like a lean either way (``tilt_trend`` says so); a water-level sensor cannot drift below its
#: resting 0 (stuck at the edge is the stuck rule's). From the catalog: drift hints on a safety channel.
SAFETY_DRIFT_METRICS = catalog.SAFETY_DRIFT_METRICS
#: Lamp sensors judged through physics (see :data:`PHYSICS`), only while the lamp is lit (``Detect.while_lit``).
LAMP_DRIFT_METRICS = LIT_DRIFT_METRICS
#: Metrics whose pole-to-pole differences are stable enough to see one sensor drift away from its peers
#: (``Detect.drift``; the physics channels last, after the references they are judged against).
DRIFT_METRICS = catalog.DRIFT_METRICS
#: Drift judged on what physics says a reading should be, not on the raw reading (``Spatial.channel``):
#:
#: * ``cabinet_temp_c``: the cabinet's rise over the pole's own ambient temperature (the district median
#:   where the pole has no ambient sensor). Weather, season and heat waves move both; the load and the sun
#:   heat every cabinet of a district alike, so the rise keeps its place among the peers;
#: * ``lamp_power_w``: measured power / expected power (rated x commanded dimming), while lit;
#: * ``lamp_current_a``: current x nominal voltage / expected power, while lit. Independent of the power
#:   and voltage readings, so a drifting power or voltage sensor does not move it;
#: * ``illuminance_lux``: the light under the lamp while it is lit and the district is dark (its median
#:   below ``dark_lux``): the lamp's own spill, alike on every pole; daylight varies with shade and cloud.
PHYSICS = PHYSICS_METRICS
#: Scale floors of the physics channels (their units: degC, ratio, ratio, lux).
PHYSICS_FLOORS = {"cabinet_temp_c": 0.3, "lamp_power_w": 0.01, "lamp_current_a": 0.02, "illuminance_lux": 1.0}
if set(PHYSICS_FLOORS) != set(PHYSICS):  # pragma: no cover - a physics hint added without its channel
    raise RuntimeError(f"spatial.channel judges {sorted(PHYSICS_FLOORS)} through physics; the catalog says "
                       f"{sorted(PHYSICS)}")
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class SpatialParams:
    metrics: tuple[str, ...] = SPATIAL_METRICS
    drift_metrics: tuple[str, ...] = DRIFT_METRICS
    every_ms: int = 60_000  # evaluation cadence (device time)
    window_ms: int = 15 * 60_000  # a pole's latest value counts if this fresh
    min_poles: int = 6  # fresh poles a district needs (the pole itself included)
    z_suspect: float = 6.0
    z_suspect_clear: float = 4.0
    # district_event: level + daily profile
    z_event: float = 4.0
    z_event_clear: float = 2.5
    z_event_warning: float = 8.0
    z_event_warning_clear: float = 6.0
    tau_ms: float = 12 * HOUR_MS  # district level time constant
    n_bins: int = 24  # daily profile: hourly bins of device time (UTC)
    bin_tau_ms: float = 2 * HOUR_MS  # time constant of a bin, in time spent in it (~2 days of that hour)
    bin_warm_ms: float = 30 * 60_000  # a bin speaks once it has this much data
    spread_tau_ms: float = 24 * HOUR_MS
    warmup_ms: float = 24 * HOUR_MS  # spread learned against warm bins for this long before any event
    warmup_evals: int = 30
    max_step_ms: float = HOUR_MS  # a longer gap between evaluations counts as this long
    clip: float = 3.0  # winsorise updates at expected +- clip x spread
    event_persist_ms: int = 30 * 60_000  # a district rise must last this long (or event_raise_n evals)
    event_raise_n: int = 30
    raise_n: int = 3  # evaluations
    clear_n: int = 3
    # sensor_drift
    drift_tau_ms: float = 2 * HOUR_MS  # short mean of the pole's place among its peers
    drift_learn_ms: float = 6 * HOUR_MS  # the pole's usual place: running mean for this long ...
    drift_usual_tau_ms: float = 7 * 24 * HOUR_MS  # ... then followed this slowly
    drift_z: float = 3.0  # district spreads the pole must have moved ...
    drift_k: float = 6.0  # ... and this many times its usual wander
    drift_clear: float = 0.6  # clears below this share of the trigger
    drift_persist_ms: int = 30 * 60_000
    # sensor_drift, second test: a two-sided CUSUM of the pole's place against its usual place (z units per
    # reading of ``cusum_unit_ms``); it sees a steady walk long before the short mean has moved drift_z
    # drift channels that run the CUSUM: the safety channels and the reference of a physics channel
    cusum_metrics: tuple[str, ...] = (*SAFETY_DRIFT_METRICS, "ambient_temp_c")
    cusum_k: float = 1.25  # allowance: a place this far from the usual one accumulates nothing
    cusum_h: float = 12.0  # decision level (z x readings)
    cusum_sd_min: float = 0.6  # the pole's own spread (in district spreads) is taken as at least this
    cusum_clip: float = 4.0  # one reading adds at most this (a transient is not a drift)
    cusum_unit_ms: float = 5 * 60_000  # the weight of one reading (readings arrive every 5 minutes)
    cusum_learn_ms: float = 2 * HOUR_MS  # the CUSUM judges once the usual place has this much data
    cusum_hold: float = 0.25  # the usual place stops learning while the CUSUM is above this share of h
    suspect_own_place: bool = True  # sensor_suspect relative to the pole's learned usual place
    drift_lag_ms: int = 60_000  # drift judges a pole whose reading is at most this much older than its peers'
    drift_gap_max: float = 20.0  # |reading - short mean| in district spreads beyond which it is no drift
    drift_down_only: tuple[str, ...] = ()  # drift channels called drifting only when they read low
    dark_lux: float = 20.0  # illuminance drift is judged where the district median under lit lamps is below this
    lit_min: float = 0.2  # lamp channels: judged while expected power >= this share of rated power


def floor_of(m: Metric) -> float:
    return max(m.noise, 1e-3 * (m.hi - m.lo))


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


def _gain(dt_ms: np.ndarray, tau_ms: float) -> np.ndarray:
    return -np.expm1(-np.asarray(dt_ms, np.float64) / tau_ms)


#: the drift state a save keeps, per pole x drift metric (the rest is relearnt in a few samples)
DRIFT_SAVED = np.dtype([("dz", "f8"), ("du", "f8"), ("dw", "f8"), ("dlearn", "f8"), ("dt", "i8"), ("dch", "f8"),
                        ("dcl", "f8"), ("dn", "f8")])
_DRIFT_FIELDS: tuple[str, ...] = DRIFT_SAVED.names or ()


class DriftState(Columns):
    """Per pole x drift metric: the drift judgement's state (see :meth:`Spatial.evaluate`)."""

    dz = Col(np.float64, np.nan, "k")  # short EW mean of the pole's place among its peers
    du = Col(np.float64, np.nan, "k")  # its usual place
    dw = Col(np.float64, 0.0, "k")  # its usual wander
    dlearn = Col(np.float64, 0.0, "k")  # how long the usual place has learnt (ms)
    dt = Col(np.int64, NO_TS, "k")  # device time of the last judgement
    dch = Col(np.float64, 0.0, "k")  # CUSUM upwards
    dcl = Col(np.float64, 0.0, "k")  # CUSUM downwards
    dn = Col(np.float64, np.nan, "k")  # mean |place - usual place|: the pole's own spread around it
    dx = Col(np.float64, np.nan, "k")  # the last reading judged
    dxt = Col(np.int64, NO_TS, "k")  # its device time
    drep = Col(np.bool_, False, "k")  # the last reading repeated the one before
    dstk = Col(np.bool_, False, "k")  # the channel's sensor was stuck at the last evaluation

    def __init__(self, fleet: FleetState, k: int) -> None:
        self.k = k
        super().__init__(fleet)



class Spatial:
    """Spatial conditions for poles (sensor_suspect, sensor_drift) and districts (district_event).

    Pole spec indices: ``pole_specs`` = the suspect specs of ``metrics``, then the drift specs of
    ``drift_metrics``."""

    _D_ARRAYS = ("base", "spread", "spread_w", "n_eval", "last_ms", "first_ms", "prof", "bin_w")

    def __init__(self, state: FleetState, params: SpatialParams = SpatialParams()) -> None:
        self.state, self.params = state, params
        for name in (*params.metrics, *params.drift_metrics):
            if name not in BY_NAME or BY_NAME[name].dtype != "float":
                raise ValueError(f"spatial metric {name!r} is not a float metric of the catalog")
        self.metrics = tuple(BY_NAME[n] for n in params.metrics)
        self.drift = tuple(BY_NAME[n] for n in params.drift_metrics)
        self.cols = np.array([INDEX[m.name] for m in self.metrics], np.int64)
        self.floors = np.array([floor_of(m) for m in self.metrics])
        self.drift_cols = np.array([INDEX[m.name] for m in self.drift], np.int64)
        # a safety channel's scale floor is its sensor noise, not 0.1 % of a range built for faults (the
        # leakage sensor's 0..5000 mA would make a 5 mA floor, larger than the whole healthy spread)
        self.drift_floors = np.array([PHYSICS_FLOORS[m.name] if m.name in PHYSICS else
                                      m.noise if m.name in SAFETY_DRIFT_METRICS else floor_of(m)
                                      for m in self.drift])
        self._drift_down = [m.name in self.params.drift_down_only for m in self.drift]
        self._cusum = [m.name in self.params.cusum_metrics for m in self.drift]
        # sensor_suspect of a metric that drift also follows: a pole that always stands apart (a
        # busy road, a shaded corner) is judged against its own usual place, not the district median
        dnames = [m.name for m in self.drift]
        self._suspect_drift = [dnames.index(m.name) if params.suspect_own_place and m.name in dnames else -1
                               for m in self.metrics]
        p = params
        suspect = tuple(
            AlarmSpec(f"sensor_suspect.{m.name}", "sensor_suspect", m.name,
                      (Tier("warning", f"{m.description} far from the district's other poles at the same "
                                       "moment: suspect sensor"),),
                      raise_n=p.raise_n, raise_ms=0, clear_n=p.clear_n, unit=m.unit,
                      ref_label="district median", ref_unit=m.unit, decimals=m.decimals)
            for m in self.metrics)
        drift = tuple(
            AlarmSpec(f"sensor_drift.{m.name}", "sensor_drift", m.name,
                      (Tier("warning", f"{m.description} drifting away from its usual place among the "
                                       "district's poles: sensor drift"
                                       + ("; a safety sensor: reading low it would hide the hazard, reading "
                                          "high it is a false one or the start of a real one"
                                          if m.name in SAFETY_DRIFT_METRICS else "")),),
                      raise_n=p.event_raise_n, raise_ms=p.drift_persist_ms, clear_n=p.clear_n, unit="z",
                      ref_label="usual", ref_unit="z", decimals=1)
            for m in self.drift)
        self.pole_specs: tuple[AlarmSpec, ...] = suspect + drift
        self.DRIFT = len(suspect)
        self.district_specs = tuple(
            AlarmSpec(f"district_event.{m.name}", "district_event", m.name,
                      (Tier("info", f"{m.description} high across the whole district"),
                       Tier("warning", f"{m.description} far above normal across the whole district")),
                      raise_n=p.event_raise_n, raise_ms=p.event_persist_ms, clear_n=p.clear_n, unit=m.unit,
                      ref_label="usual", ref_unit=m.unit, decimals=m.decimals)
            for m in self.metrics)
        self.dst = DriftState(state, len(self.drift))
        self._d_cap = 0
        self._ref_bad: np.ndarray | None = None
        k = len(self.metrics)
        self.base = np.empty((0, k))
        self.spread = np.empty((0, k))
        self.spread_w = np.empty((0, k))
        self.n_eval = np.empty((0, k), np.int64)
        self.last_ms = np.empty((0, k), np.int64)
        self.first_ms = np.empty((0, k), np.int64)
        self.prof = np.empty((0, k, p.n_bins))
        self.bin_w = np.empty((0, k, p.n_bins))
        self._grow(8)

    def _grow(self, need: int) -> None:
        cap = max(self._d_cap, 1)
        while cap < need:
            cap *= 2
        if cap == self._d_cap:
            return
        k, nb = len(self.metrics), self.params.n_bins
        old = self._d_cap
        for name, fill, dt, tail in (("base", np.nan, np.float64, ()), ("spread", 0.0, np.float64, ()),
                                     ("spread_w", 0.0, np.float64, ()), ("n_eval", 0, np.int64, ()),
                                     ("last_ms", NO_TS, np.int64, ()), ("first_ms", NO_TS, np.int64, ()),
                                     ("prof", 0.0, np.float64, (nb,)), ("bin_w", 0.0, np.float64, (nb,))):
            fresh = np.full((cap, k, *tail), fill, dt)
            fresh[:old] = getattr(self, name)
            setattr(self, name, fresh)
        self._d_cap = cap

    def _bin(self, now_ms: int) -> int:
        nb = self.params.n_bins
        return int((now_ms % 86_400_000) * nb // 86_400_000)

    def evaluate(self, now_ms: int, frozen: np.ndarray | None = None, ref_bad: np.ndarray | None = None,
                 drifting: np.ndarray | None = None, paused: np.ndarray | None = None,
                 stuck: np.ndarray | None = None) -> tuple[Conditions, Conditions]:
        """(pole conditions, district conditions); spec indices into ``pole_specs``/``district_specs``.
        District condition rows are district indices of the fleet state. ``frozen`` (bool per pole row):
        poles whose drift judgement pauses (no condition; the short mean starts afresh after it, so what
        the fault did to the reading is not taken for drift), e.g. while another fault is on. ``paused``
        (bool pole row x drift channel): the same for one channel of the pole (its sensor is stuck or
        under a sensor alarm: its reading says nothing about its place). ``ref_bad`` (bool per pole row):
        the pole's ambient sensor is known bad (the cabinet is judged against the district's ambient
        instead). ``drifting`` (bool pole row x drift channel): that drift alarm is active (its short mean
        is kept while the pole or the channel is paused). ``stuck`` (bool pole row x drift channel): the
        channel's sensor reads a stuck run: it is still judged (a stuck sensor left behind by its peers is
        found as a drift too), but its usual place learns nothing, and when the run ends (the sensor is
        back) the short mean restarts from the usual place and the CUSUM from 0, drift alarm or not: what
        the frozen reading did to them is not the repaired sensor's."""
        st, p = self.state, self.params
        self._ref_bad = ref_bad
        dst = self.dst
        now_stuck = np.zeros((st.n, len(self.drift)), np.bool_) if stuck is None else stuck[: st.n]
        back = dst.dstk[: st.n] & ~now_stuck
        if back.any():
            dst.dz[: st.n][back] = dst.du[: st.n][back]
            dst.dch[: st.n][back] = 0.0
            dst.dcl[: st.n][back] = 0.0
        dst.dstk[: st.n] = now_stuck
        stop = np.zeros((st.n, len(self.drift)), np.bool_)
        if frozen is not None:
            stop |= frozen[: st.n, None]
        if paused is not None:
            stop |= paused[: st.n]
        if stop.any():  # the short mean restarts from the usual place, unless that channel's drift alarm is
            f = stop  # already raised
            if drifting is not None:
                f = f & ~drifting[: st.n]
            self.dst.dz[: st.n][f] = self.dst.du[: st.n][f]
            self.dst.dch[: st.n][f] = 0.0
            self.dst.dcl[: st.n][f] = 0.0
        n_d = len(st.districts)
        self._grow(n_d)
        district = st.district[: st.n].astype(np.int64)
        pole_parts, dist_parts = [], []
        for j, col in enumerate(self.cols):
            rows, x, med, cnt, z = self._peers(int(col), float(self.floors[j]), district, n_d, now_ms)
            ok = cnt[district[rows]] >= p.min_poles
            jd = self._suspect_drift[j]
            if jd >= 0:  # judged against the pole's own usual place among its peers, once it is learned
                dst = self.dst
                ok &= dst.dlearn[rows, jd] >= p.drift_learn_ms
                # ... and its usual wander: the trigger is at least drift_k wanders away
                wide = np.maximum(1.0, p.drift_k * 1.2533 * dst.dw[rows, jd] / p.z_suspect)
                z = (z - np.nan_to_num(dst.du[rows, jd])) / wide
            za = np.abs(z[ok])
            trig, hold = levels(za, ">=", (p.z_suspect,), (p.z_suspect_clear,))
            m = int(ok.sum())
            pole_parts.append(Conditions(rows[ok], np.full(m, j, np.int64), trig, hold, x[ok],
                                         med[district[rows[ok]]], 1.0 - np.exp(-za / p.z_suspect),
                                         np.full(m, now_ms, np.int64)))
            dist_parts.append(self._district(j, np.flatnonzero(cnt >= p.min_poles), med, now_ms))
        for j, col in enumerate(self.drift_cols):
            v, fresh = self.channel(self.drift[j].name, now_ms, district, n_d)
            rows, x, _med, cnt, z = self._spread(v, fresh, float(self.drift_floors[j]), district, n_d)
            ok = cnt[district[rows]] >= p.min_poles
            # judged only when the pole's reading is as recent as its district's newest: a pole that missed
            # its last reports (lost messages) would otherwise be compared, at dusk, with lamps already lit
            ts = st.value_ts[rows, int(col)]
            newest = np.full(n_d, NO_TS, np.int64)
            np.maximum.at(newest, district[rows], ts)
            ok &= ts >= newest[district[rows]] - p.drift_lag_ms
            ok &= ~stop[rows, j]
            pole_parts.append(self._drift(j, rows[ok], z[ok], now_ms, x[ok], ts[ok], now_stuck[rows[ok], j]))
        return Conditions.concat(pole_parts), Conditions.concat(dist_parts)

    def _peers(self, col: int, floor: float, district: np.ndarray, n_d: int, now_ms: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Fresh poles of metric ``col``: rows, values, district medians and sizes, signed z."""
        v, fresh = self.state.latest(col, now_ms, self.params.window_ms)
        return self._spread(v, fresh, floor, district, n_d)

    def channel(self, name: str, now_ms: int, district: np.ndarray, n_d: int) -> tuple[np.ndarray, np.ndarray]:
        """What drift judges for metric ``name`` per pole row, and where it is judged: the latest reading,
        or for a :data:`PHYSICS` metric the reading against what physics says it should be."""
        st, w = self.state, self.params.window_ms
        v, fresh = st.latest(INDEX[name], now_ms, w)
        if name not in PHYSICS:
            return v, fresh
        if name == "cabinet_temp_c":
            amb, amb_ok = st.latest(INDEX["ambient_temp_c"], now_ms, w)
            med, _ = group_median(district[amb_ok], amb[amb_ok], n_d)
            # a pole with an ambient sensor is judged against it, and not at all while that sensor is stale,
            # drifting or an active sensor alarm (switching references would move its place)
            ok = amb_ok & ~self._wandering("ambient_temp_c")
            if self._ref_bad is not None:
                ok &= ~self._ref_bad[: st.n]
            has = ~np.isnan(amb)
            ref = np.where(has, np.where(ok, amb, np.nan), med[district])
            return v - ref, fresh & ~np.isnan(ref)
        dim, dim_ok = st.latest(INDEX["dimming_pct"], now_ms, w)
        rated = st.rated_w[: st.n]
        rated = np.where(np.isnan(rated), DEFAULT_RATED_POWER_W, rated)
        expected = rated * np.where(dim_ok, dim, 0.0) / 100.0
        lit = dim_ok & (expected >= self.params.lit_min * rated)
        if name == "lamp_power_w":
            return v / np.where(lit, expected, 1.0), fresh & lit
        if name == "lamp_current_a":
            nom = st.nominal_v[: st.n]
            nom = np.where(np.isnan(nom), DEFAULT_NOMINAL_VOLTAGE_V, nom)
            return v * nom / np.where(lit, expected, 1.0), fresh & lit
        ok = fresh & lit  # illuminance: judged under lit lamps in a dark district
        med, _ = group_median(district[ok], v[ok], n_d)
        return v, ok & (np.nan_to_num(med[district], nan=np.inf) < self.params.dark_lux)

    def _wandering(self, name: str) -> np.ndarray:
        """Per pole row: the drift channel ``name`` is at least half way to its trigger (or unknown)."""
        n = self.state.n
        names = [m.name for m in self.drift]
        if name not in names:
            return np.zeros(n, np.bool_)
        j, dst, p = names.index(name), self.dst, self.params
        dev = dst.dz[:n, j] - dst.du[:n, j]
        thr = np.maximum(p.drift_z, p.drift_k * 1.2533 * dst.dw[:n, j])
        cusum = np.maximum(dst.dch[:n, j], dst.dcl[:n, j]) / p.cusum_h
        return (np.nan_to_num(np.abs(dev) / thr) >= 0.5) | (cusum >= 0.5)

    def _spread(self, v: np.ndarray, fresh: np.ndarray, floor: float, district: np.ndarray, n_d: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rows = np.flatnonzero(fresh).astype(np.int64)
        g, x = district[rows], v[rows]
        med, cnt = group_median(g, x, n_d)
        dev = x - med[g]
        mad, _ = group_median(g, np.abs(dev), n_d)
        scale = np.maximum(1.4826 * np.nan_to_num(mad), floor)
        return rows, x, med, cnt, dev / scale[g]

    def _drift(self, j: int, rows: np.ndarray, z: np.ndarray, now_ms: int, x: np.ndarray | None = None,
               ts: np.ndarray | None = None, stuck: np.ndarray | None = None) -> Conditions:
        """Per pole: short mean of its place ``z`` among its peers against its usual place. ``x``/``ts``: the
        judged value and its device time (a new reading equal to the one before teaches nothing); ``stuck``:
        the sensor reads a stuck run (its usual place learns nothing, even where the judged value moves: a
        frozen lamp power over a changed dimming)."""
        if len(rows) == 0:
            return Conditions.empty()
        dst, p = self.dst, self.params
        if x is not None and ts is not None:
            # a live sensor's successive readings differ (the catalog's noise); one repeating itself may be
            # stuck, and a stuck reading must not become the pole's usual place (after the repair it would
            # read as a drift): the usual place, the pole's spread and the wander learn only from changes
            new = ts != dst.dxt[rows, j]
            rep = np.where(new, x == dst.dx[rows, j], dst.drep[rows, j])
            dst.dx[rows, j] = np.where(new, x, dst.dx[rows, j])
            dst.dxt[rows, j] = np.where(new, ts, dst.dxt[rows, j])
            dst.drep[rows, j] = rep
        else:
            rep = np.zeros(len(rows), np.bool_)
        if stuck is not None:
            rep = rep | stuck
        zs, zu, wander = dst.dz[rows, j], dst.du[rows, j], dst.dw[rows, j]
        learned, last = dst.dlearn[rows, j], dst.dt[rows, j]
        dt = np.where(last == NO_TS, 0.0, np.clip(now_ms - last, 0, p.max_step_ms)).astype(np.float64)
        # the short mean weighs one evaluation at most as a window's worth: after a pause (the pole frozen,
        # the lamp off) the first reading does not make the mean on its own
        g_short = _gain(np.minimum(dt, p.window_ms), p.drift_tau_ms)
        first = np.isnan(zs)
        zs = np.where(first, z, zs + g_short * (z - np.where(first, 0.0, zs)))
        ready = learned >= p.drift_learn_ms
        thr = np.maximum(p.drift_z, p.drift_k * 1.2533 * wander)
        dev = zs - np.where(np.isnan(zu), zs, zu)
        u = np.abs(dev) / thr  # in units of the trigger
        # the CUSUM of the place against the usual place, once that has cusum_learn_ms of data
        judged = learned >= (min(p.cusum_learn_ms, p.drift_learn_ms) if self._cusum[j] else p.drift_learn_ms)
        # in units of the pole's own reading-to-reading spread around its usual place (some poles read noisier)
        resid = z - np.where(np.isnan(zu), z, zu)
        zn = dst.dn[rows, j]
        sd = np.maximum(1.2533 * np.nan_to_num(zn, nan=1.0), p.cusum_sd_min)
        r = np.clip(resid / sd, -p.cusum_clip, p.cusum_clip)
        w = np.minimum(dt, p.window_ms) / p.cusum_unit_ms * self._cusum[j]
        ch = np.where(judged, np.maximum(dst.dch[rows, j] + w * (r - p.cusum_k), 0.0), 0.0)
        cl = np.where(judged, np.maximum(dst.dcl[rows, j] + w * (-r - p.cusum_k), 0.0), 0.0)
        c_up, c_down = ch / p.cusum_h, cl / p.cusum_h
        # the usual place: running mean while learning, then a very slow EW; neither while drifting
        learn = (~ready | (u < 0.5)) & (np.maximum(c_up, c_down) < p.cusum_hold) & ~rep
        w_new = learned + dt
        a_u = np.where(ready, _gain(dt, p.drift_usual_tau_ms), np.where(w_new > 0, dt / np.maximum(w_new, 1.0), 1.0))
        # (learned from the reading's place itself: the short mean starts from one reading and would carry it)
        zu_new = np.where(np.isnan(zu), z, zu + np.where(learn, a_u, 0.0) * (z - np.where(np.isnan(zu), 0.0, zu)))
        wander_new = np.where(learn & ~np.isnan(zu), wander + a_u * (np.minimum(np.abs(dev), p.drift_z) - wander),
                              wander)
        dst.dz[rows, j], dst.du[rows, j], dst.dw[rows, j] = zs, zu_new, wander_new
        dst.dch[rows, j], dst.dcl[rows, j] = ch, cl
        zn0 = np.nan_to_num(zn)
        a_n = np.where(np.isnan(zn), 1.0, a_u)
        dst.dn[rows, j] = np.where(learn & ~np.isnan(zu), zn0 + a_n * (np.abs(resid) - zn0), zn)
        dst.dlearn[rows, j] = np.minimum(w_new, p.drift_learn_ms)
        dst.dt[rows, j] = now_ms
        r_ok = rows[judged]
        # a channel in drift_down_only is called drifting only when it reads low
        if self._drift_down[j]:
            ew, cs = np.maximum(-dev, 0.0) / thr, c_down
        else:
            ew, cs = u, np.maximum(c_up, c_down)
        uu = np.maximum(np.where(ready, ew, 0.0), cs)[judged]
        trig, hold = levels(uu, ">=", (1.0,), (p.drift_clear,))
        # a drift is slow: a reading running ahead of its own short mean by more than drift_gap_max spreads
        # (a rise of more than drift_gap_max / drift_tau per hour) is a real event rising (an overheat ramp,
        # a flood) or falling back, not a sensor; it triggers nothing
        gap = np.abs(z - zs)[judged]
        trig[gap > p.drift_gap_max] = 0
        k = len(r_ok)
        return Conditions(r_ok, np.full(k, self.DRIFT + j, np.int64), trig, hold, zs[judged], zu[judged],
                          1.0 - np.exp(-uu), np.full(k, now_ms, np.int64))

    def _district(self, j: int, ds: np.ndarray, med: np.ndarray, now_ms: int) -> Conditions:
        p = self.params
        ds = ds.astype(np.int64)
        if len(ds) == 0:
            return Conditions.empty()
        h = self._bin(now_ms)
        m = med[ds]
        base, spread, spread_w = self.base[ds, j], self.spread[ds, j], self.spread_w[ds, j]
        n, last, first_ms = self.n_eval[ds, j], self.last_ms[ds, j], self.first_ms[ds, j]
        prof, bin_w = self.prof[ds, j, h], self.bin_w[ds, j, h]
        dt = np.where(last == NO_TS, 0.0, np.clip(now_ms - last, 0, p.max_step_ms)).astype(np.float64)
        new = np.isnan(base)
        warm_bin = bin_w >= p.bin_warm_ms
        sigma = np.maximum(1.2533 * spread, self.floors[j])  # mean abs deviation -> standard deviation
        expected = np.where(new, m, np.where(new, 0.0, base) + np.where(warm_bin, prof, 0.0))
        z = (m - expected) / sigma
        ready = warm_bin & (spread_w >= p.warmup_ms) & (n >= p.warmup_evals)
        # learning: the median winsorised at expected +- clip sigma once the spread is known
        known = spread_w >= p.warmup_ms
        mw = np.where(known, np.clip(m, expected - p.clip * sigma, expected + p.clip * sigma), m)
        total = np.where(first_ms == NO_TS, 0.0, np.minimum(now_ms - first_ms, p.tau_ms)).astype(np.float64)
        a_level = np.maximum(_gain(dt, p.tau_ms), np.where(total > 0, dt / np.maximum(total, 1.0), 1.0))
        b0 = np.where(new, mw, base)
        nb = b0 + a_level * (mw - np.where(warm_bin, prof, 0.0) - b0)
        bw = bin_w + dt
        a_bin = np.maximum(_gain(dt, p.bin_tau_ms), np.where(bw > 0, dt / np.maximum(bw, 1.0), 1.0))
        self.prof[ds, j, h] = prof + np.where(dt > 0, a_bin, 0.0) * ((mw - nb) - prof)
        self.bin_w[ds, j, h] = np.minimum(bw, 1e12)
        sw = spread_w + np.where(warm_bin, dt, 0.0)
        a_s = np.maximum(_gain(dt, p.spread_tau_ms), np.where(sw > 0, dt / np.maximum(sw, 1.0), 0.0))
        self.spread[ds, j] = np.where(warm_bin, spread + a_s * (np.abs(mw - expected) - spread), spread)
        self.spread_w[ds, j] = np.minimum(sw, 1e12)
        self.base[ds, j] = nb
        self.n_eval[ds, j] = n + 1
        self.last_ms[ds, j] = now_ms
        self.first_ms[ds, j] = np.where(first_ms == NO_TS, now_ms, first_ms)
        r = ds[ready]
        zz = z[ready]
        trig, hold = levels(zz, ">=", (p.z_event, p.z_event_warning),
                            (p.z_event_clear, p.z_event_warning_clear))
        k = len(r)
        return Conditions(r, np.full(k, j, np.int64), trig, hold, m[ready], expected[ready],
                          1.0 - np.exp(-np.maximum(zz, 0.0) / p.z_event), np.full(k, now_ms, np.int64))

    # --- persistence --------------------------------------------------------------------------------
    def export(self) -> list[dict[str, Any]]:
        """District baselines, one entry per district x metric (the state document's ``spatial``; the
        poles' drift state is saved apart, as rows: :meth:`drift_rows`)."""
        out: list[dict[str, Any]] = []
        for d, name in enumerate(self.state.districts[: self._d_cap]):
            for j, m in enumerate(self.metrics):
                if self.n_eval[d, j] > 0:
                    out.append({"district": name, "metric": m.name, "base": float(self.base[d, j]),
                                "spread": float(self.spread[d, j]), "spread_w": float(self.spread_w[d, j]),
                                "n": int(self.n_eval[d, j]), "last_ms": int(self.last_ms[d, j]),
                                "first_ms": int(self.first_ms[d, j]),
                                "prof": [float(v) for v in self.prof[d, j]],
                                "bin_w": [float(v) for v in self.bin_w[d, j]]})
        return out

    def drift_names(self) -> list[str]:
        return [m.name for m in self.drift]

    def drift_rows(self, a: int, b: int) -> np.ndarray:
        """A copy of pole rows ``a:b`` of the drift state that is saved, ``(b - a, len(drift))`` of
        :data:`DRIFT_SAVED` (a state save writes them as binary rows, a slice at a time: as JSON entries,
        one per pole x drift metric, they were 85 % of the state file's bytes and most of a save's CPU)."""
        out = np.empty((b - a, len(self.drift)), DRIFT_SAVED)
        for name in _DRIFT_FIELDS:
            out[name] = getattr(self.dst, name)[a:b]
        return out

    def restore_drift(self, poles: Sequence[str], metrics: Sequence[str], rows: np.ndarray) -> int:
        """Put saved :meth:`drift_rows` back: ``rows[i, j]`` is pole ``poles[i]`` x drift metric
        ``metrics[j]``. A pole not registered (the registry is restored first) or a metric no longer
        judged is skipped, as is a field this version does not save. Returns the poles restored."""
        if rows.shape != (len(poles), len(metrics)):
            raise ValueError(f"drift rows of shape {rows.shape} for {len(poles)} poles x {len(metrics)} metrics")
        mine = {m.name: j for j, m in enumerate(self.drift)}
        cols = [(j, mine[m]) for j, m in enumerate(metrics) if m in mine]
        found = [(i, self.state.find(str(p))) for i, p in enumerate(poles)]
        src = np.array([i for i, r in found if r is not None], np.int64)
        dst_rows = np.array([r for _, r in found if r is not None], np.int64)
        if len(src) == 0 or not cols:
            return 0
        for name in _DRIFT_FIELDS:
            if name in (rows.dtype.names or ()):
                arr = getattr(self.dst, name)
                for js, jd in cols:
                    arr[dst_rows, jd] = rows[name][src, js]
        return len(src)

    def restore(self, entries: Sequence[dict[str, Any]]) -> None:
        """District baselines; entries with a ``pole`` key are drift state as state files before the
        binary drift rows held it (still read)."""
        names = {m.name: j for j, m in enumerate(self.metrics)}
        drift_names = {m.name: j for j, m in enumerate(self.drift)}
        nb = self.params.n_bins
        dst = self.dst
        for e in entries:
            if "pole" in e:
                jd = drift_names.get(str(e.get("metric")))
                if jd is None:
                    continue
                r = self.state.row(str(e["pole"]), str(e["district"]))
                zs, zu, w, learned, t, *cusum = e["drift"]  # state saved before the CUSUM has 5 values
                ch, cl, zn = (float(x) for x in cusum) if len(cusum) == 3 else (0.0, 0.0, float("nan"))
                dst.dch[r, jd], dst.dcl[r, jd], dst.dn[r, jd] = ch, cl, zn
                dst.dz[r, jd], dst.du[r, jd], dst.dw[r, jd] = float(zs), float(zu), float(w)
                dst.dlearn[r, jd], dst.dt[r, jd] = float(learned), int(t)
                continue
            j = names.get(str(e.get("metric")))
            if j is None:
                continue
            d = self.state.district_index(str(e["district"]))
            self._grow(d + 1)
            self.base[d, j] = float(e["base"])
            self.spread[d, j] = float(e["spread"])
            self.spread_w[d, j] = float(e.get("spread_w", 0.0))
            self.n_eval[d, j] = int(e["n"])
            self.last_ms[d, j] = int(e["last_ms"])
            self.first_ms[d, j] = int(e.get("first_ms", e["last_ms"]))
            prof, bin_w = e.get("prof"), e.get("bin_w")
            if isinstance(prof, list) and isinstance(bin_w, list) and len(prof) == len(bin_w) == nb:
                self.prof[d, j] = np.asarray(prof, np.float64)
                self.bin_w[d, j] = np.asarray(bin_w, np.float64)
