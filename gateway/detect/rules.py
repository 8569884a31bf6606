"""Layer 1: the safety rules, evaluated for a whole batch of the fleet at once.

:class:`Rules` composes the rule families, one module each, each keeping its typed per-pole state in
a table registered with the fleet state (:mod:`gateway.detect.state`):

* :mod:`gateway.detect.thresholds` - the catalog's thresholds (absolute, nominal, rated, baseline,
  averaged over 24 h), specs ``0 .. R-1``;
* :mod:`gateway.detect.flicker` - the lamp switching on and off (``FLICKER``);
* :mod:`gateway.detect.presence` - silence and the pole's own status (``OFFLINE``);
* :mod:`gateway.detect.stuck` - a sensor repeating itself (``STUCK + j``);
* :mod:`gateway.detect.maintenance` - windows in which an open door is the plan.

A rule does not decide anything: for each sample it reports a *condition* (:mod:`gateway.detect.types`)
and the alarm policy (:mod:`gateway.detect.alarms`) turns conditions into raised / escalated / cleared
alarms with duration and hysteresis.

Lamp-on context: a lamp should be lit when its commanded ``dimming_pct`` > 0; when the pole does not
report dimming, when ``illuminance_lux`` is below ``dusk_lux`` (then at full power). A ``lamp_on``
rule gives no condition at all (no evidence either way) while the lamp should be off or nothing is
known, so a failed lamp stays flagged through the day until it is seen working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.catalog import DEFAULT_NOMINAL_VOLTAGE_V, DEFAULT_RATED_POWER_W, INDEX, METRICS, Metric
from gateway.detect.flicker import Flicker, flicker_spec
from gateway.detect.maintenance import Maintenance
from gateway.detect.params import RuleParams
from gateway.detect.presence import Presence, offline_spec
from gateway.detect.state import NO_TS, Batch, FleetState, frozen, never_as_none, occurrence_rank
from gateway.detect.stuck import Stuck, repeat_prior, stuck_metrics, stuck_specs
from gateway.detect.thresholds import LampContext, Rule, Thresholds, derive_rules
from gateway.detect.types import AlarmSpec, Conditions, Tier, levels

# the names layers and callers import from here (the layer-1 facade)
__all__ = ["AlarmSpec", "Conditions", "Rule", "RuleParams", "Rules", "Tier", "derive_rules", "levels",
           "repeat_prior", "stuck_metrics", "stuck_specs"]



_NO_TS = int(NO_TS)

_DIM = INDEX["dimming_pct"]
_LUX = INDEX["illuminance_lux"]
_POWER = INDEX["lamp_power_w"]
_CURRENT = INDEX["lamp_current_a"]


@dataclass
class Rules:
    """Per-pole rule state and evaluation. Spec indices: the catalog rules, then flicker, offline, then
    one stuck-sensor rule per :func:`stuck_metrics` (``STUCK + j``)."""

    state: FleetState
    params: RuleParams = field(default_factory=RuleParams)
    metrics: Sequence[Metric] = METRICS

    def __post_init__(self) -> None:
        p, fleet = self.params, self.state
        self.thresholds = Thresholds(fleet, p, self.metrics)
        self.rules: tuple[Rule, ...] = self.thresholds.rules
        # a lamp reads healthy at or above the lamp_failure rule's clear level (x expected power)
        self._healthy = max((max(r.clear_at) for r in self.rules if r.relative_to == "rated" and r.op == "<="),
                            default=0.85)
        self.FLICKER, self.OFFLINE, self.STUCK = len(self.rules), len(self.rules) + 1, len(self.rules) + 2
        self.flicker = Flicker(fleet, p, self.FLICKER)
        self.presence_ = Presence(fleet, p, self.OFFLINE)
        self.stuck = Stuck(fleet, p, self.metrics, self.STUCK)
        self.maint = Maintenance(fleet, p.maintenance_slots)
        self.specs: tuple[AlarmSpec, ...] = (*(r.spec for r in self.rules), flicker_spec(p), offline_spec(p),
                                             *self.stuck.specs)
        if len({s.key for s in self.specs}) != len(self.specs):
            raise ValueError("duplicate alarm key in the rule table")
        # a rule on a metric explains a constant reading of it (and the lamp's current follows its power:
        # a dead driver's current sits at 0.00 A while lamp_failure holds)
        sc = self.stuck.cols
        self._stuck_of_rule = np.array([[float(r.col == c or (r.col == _POWER and c == _CURRENT)) for c in sc]
                                        for r in self.rules], np.float64).reshape(len(self.rules), len(sc))

    # --- per-pole attributes -----------------------------------------------------------------------
    def set_pole(self, pole: str, district: str, *, rated_power_w: float | None = None,
                 nominal_voltage_v: float | None = None, interval_s: float | None = None,
                 tilt_baseline_deg: float | None = None) -> int:
        """Set optional per-pole attributes (None leaves an attribute as it is)."""
        f = self.state
        r = f.row(pole, district)
        for name, v, arr in (("rated_w", rated_power_w, f.rated_w), ("nominal_v", nominal_voltage_v, f.nominal_v)):
            if v is not None:
                if not (np.isfinite(v) and v > 0):
                    raise ValueError(f"{pole}: invalid {name} {v!r}")
                arr[r] = v
        if tilt_baseline_deg is not None:
            self.set_baseline(pole, district, "tilt_deg", tilt_baseline_deg)
        if interval_s is not None:
            if not interval_s > 0:
                raise ValueError(f"{pole}: invalid interval_s {interval_s!r}")
            f.interval_ms[r] = interval_s * 1000.0
        return r

    def set_baseline(self, pole: str, district: str, metric: str, value: float) -> None:
        self.thresholds.set_baseline(pole, district, metric, value)

    def baseline(self, pole: str, metric: str) -> float | None:
        return self.thresholds.baseline(pole, metric)

    def running_mean(self, pole: str, metric: str) -> float | None:
        return self.thresholds.running_mean(pole, metric)

    def set_maintenance(self, pole: str, district: str, start_ms: int, end_ms: int) -> None:
        self.maint.add(pole, district, start_ms, end_ms)

    def clear_maintenance(self, pole: str) -> None:
        self.maint.clear(pole)

    def maintenance(self, pole: str) -> list[tuple[int, int]]:
        return self.maint.windows(pole)

    def stuck_limit(self, p_eq: np.ndarray) -> np.ndarray:
        return self.stuck.limit(p_eq)

    # --- hot path ------------------------------------------------------------------------------------
    def evaluate(self, batch: Batch, arrival_ms: int | None = None) -> Conditions:
        """Observe ``batch`` into the fleet state and return every rule's conditions.

        Samples are processed in device-time order; samples of one pole go in successive vectorised
        rounds (a round holds each pole at most once), so the result equals feeding them one by one.
        """
        if len(batch) == 0:
            return Conditions.empty()
        order = np.argsort(batch.ts, kind="stable")
        b = batch.take(order)
        rank = occurrence_rank(b.rows)
        parts = []
        for k in range(int(rank.max()) + 1):
            sel = np.flatnonzero(rank == k)
            parts.append(self._round(b.take(sel), arrival_ms))
        return Conditions.concat(parts)

    def _round(self, b: Batch, arrival_ms: int | None) -> Conditions:
        """One sample per pole (rows distinct)."""
        f, p = self.state, self.params
        rows, ts, vals = b.rows, b.ts, b.values
        # learned sample interval (device time), robust to gaps: deltas over 1 h are ignored
        prev = f.last_ts[rows]
        dt = (ts - prev).astype(np.float64)
        ok = (prev != NO_TS) & (dt > 0) & (dt <= 3_600_000)
        ew = f.interval_ew[rows]
        f.interval_ew[rows[ok]] = np.where(np.isnan(ew[ok]), dt[ok], 0.9 * ew[ok] + 0.1 * dt[ok])
        f.observe(b, arrival_ms)
        self.thresholds.learn_baselines(rows, vals)

        rated = np.where(np.isnan(f.rated_w[rows]), DEFAULT_RATED_POWER_W, f.rated_w[rows])
        nominal = np.where(np.isnan(f.nominal_v[rows]), DEFAULT_NOMINAL_VOLTAGE_V, f.nominal_v[rows])
        dim = f.value[rows, _DIM]
        lux = f.value[rows, _LUX]
        with np.errstate(invalid="ignore"):
            should_on = np.where(~np.isnan(dim), dim > 0, lux < p.dusk_lux)
        should_on &= ~np.isnan(dim) | ~np.isnan(lux)  # the context is known
        judged = self._rating(rows, vals[:, _POWER], dim, should_on)
        ctx = LampContext(judged, nominal, judged * np.where(np.isnan(dim), 100.0, dim) / 100.0, should_on,
                          self.maint.active(rows, ts))
        rule_c, hold = self.thresholds.evaluate(rows, ts, vals, ctx, self.presence_.interval_ms(rows))
        parts = [rule_c, self.flicker.evaluate(rows, ts, vals[:, _POWER], rated)]
        # a reading a safety rule already holds at alarm level is explained: not also called stuck
        explained = (hold > 0).astype(np.float64) @ self._stuck_of_rule > 0
        if len(self.stuck.lamp_slots):  # a lamp that is off or dimmed reads steadier than the catalog's noise
            with np.errstate(invalid="ignore"):
                quiet = (vals[:, _POWER] < p.lamp_on_frac * rated) | (dim < 100.0)
            by_rule = explained.copy()
            explained[:, self.stuck.lamp_slots] |= quiet[:, None]
            if (j := self.stuck.current_slot) >= 0:  # the current: by its driver's power, where that is known
                still = self.stuck.current_explained(rows, vals[:, _POWER], nominal)
                known = ~np.isnan(still)
                explained[known, j] = by_rule[known, j] | (still[known] > 0)
        parts.append(self.stuck.evaluate(rows, ts, vals, explained, vals[:, _POWER]))
        parts.append(self.presence_.heard(rows, ts))  # a reading is proof of life: clears pole_offline
        return Conditions.concat(parts)

    def _rating(self, rows: np.ndarray, power: np.ndarray, dim: np.ndarray, should_on: np.ndarray) -> np.ndarray:
        """The rating the ``rated`` rules (lamp_failure) judge each row's lamp against: the declared one;
        else the full-power draw learnt from the lamp's own lit readings (learnt here, see
        ``RuleParams.unrated_floor_w``); else, never seen lit, ``unrated_floor_w``. Flicker, the stuck rule's
        quiet lamp, physics and the district comparison keep the declared-else-default rating: a learnt
        one follows a slowly drifting power sensor, which those rules exist to see."""
        f, p = self.state, self.params
        declared = f.rated_w[rows]
        unknown = np.isnan(declared)
        if not unknown.any():
            return declared
        cur = f.rated_learned[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            implied = power * 100.0 / dim  # the draw at full power this reading implies
            lit = unknown & should_on & (dim >= p.rating_min_dim) & np.isfinite(implied)
            seed = lit & np.isnan(cur) & (implied >= self._healthy * p.unrated_floor_w)
            move = lit & (implied >= self._healthy * cur)  # a failing lamp does not teach (NaN: False)
            if seed.any() or move.any():
                cur = np.where(seed, implied, np.where(move, cur + p.rating_rate * (implied - cur), cur))
                f.rated_learned[rows] = cur
        return np.where(unknown, np.where(np.isnan(cur), p.unrated_floor_w, cur), declared)

    # --- presence --------------------------------------------------------------------------------------
    def interval_ms(self, rows: np.ndarray) -> np.ndarray:
        return self.presence_.interval_ms(rows)

    def silence_limit_ms(self, rows: np.ndarray) -> np.ndarray:
        return self.presence_.silence_limit_ms(rows)

    def silence(self, now_ms: int) -> Conditions:
        return self.presence_.silence(now_ms)

    def presence(self, pole: str, district: str, state: str, ts_ms: int, arrival_ms: int,
                 interval_s: float | None = None) -> Conditions:
        """A status message: ``offline`` (the broker's Last Will or a shutdown) raises pole_offline at
        once; ``birth``/``online`` clears it and counts as being heard."""
        r = self.set_pole(pole, district, interval_s=interval_s)
        return self.presence_.status(r, state, ts_ms, arrival_ms)

    def excuse(self, ms: int) -> None:
        self.presence_.excuse(ms)

    # --- persistence: one record per pole, in row order (the state file's ``poles``) ---------------
    _ATTRS = ("rated_w", "rated_learned", "nominal_v", "interval_ms", "interval_ew")

    def export_columns(self) -> Callable[[], Iterator[tuple[str, object]]]:
        """The state document's pole table, to be made later: what it reads is copied now (the registry,
        a few columns of the fleet, threshold and presence tables, the maintenance windows: ~100 bytes a
        pole), and the returned function, which needs no lock, yields its entries one column at a time:
        ``pole`` and ``district`` (row order), one list per attribute (``NaN``: unknown; ``null``: never),
        the thresholds' baselines and means (:meth:`Thresholds.export_columns`) and ``maintenance`` by
        pole. One list per column is what ``json`` encodes in C: a save of 30,000 poles made 30,000
        objects in Python before (~1.5 s of CPU a save)."""
        f, n = self.state, self.state.n
        poles, districts = list(f.poles), list(f.pole_district)
        fv = frozen(f, n, (*self._ATTRS, "last_ts", "arrival_ms"))
        tv = frozen(self.thresholds.st, n, self.thresholds.EXPORTED)
        said_offline = self.presence_.st.said_offline[:n].copy()
        maint = {poles[r]: [list(w) for w in ws] for r, ws in self.maint.windows_of_rows(n).items()}

        def columns() -> Iterator[tuple[str, object]]:
            yield "pole", poles
            yield "district", districts
            for name in self._ATTRS:
                yield name, getattr(fv, name).tolist()
            for name in ("last_ts", "arrival_ms"):
                yield name, never_as_none(getattr(fv, name))
            yield "said_offline", said_offline.tolist()
            yield from self.thresholds.export_columns(tv)
            yield "maintenance", maint

        return columns

    def restore_columns(self, cols: dict[str, Any], heard_ms: int | None = None) -> None:
        """Load a pole table of :meth:`export_columns`: rows are re-created in the saved order, so every
        pole gets back the row it had. A pole never heard counts as heard at ``heard_ms``."""
        f = self.state
        poles, districts = [str(p) for p in cols["pole"]], [str(d) for d in cols["district"]]
        if len(poles) != len(districts):
            raise ValueError("pole table: pole and district columns of different lengths")
        rows = np.array([f.row(p, d) for p, d in zip(poles, districts, strict=True)], np.int64)

        def col(name: str, dtype: type, none: object) -> np.ndarray | None:
            v = cols.get(name)
            if v is None:
                return None
            if len(v) != len(rows):
                raise ValueError(f"pole table: column {name!r} of {len(v)} rows for {len(rows)} poles")
            return np.array([none if x is None else x for x in v], dtype)

        for name in self._ATTRS:
            if (a := col(name, float, np.nan)) is not None:
                getattr(f, name)[rows] = a
        if (a := col("last_ts", np.int64, NO_TS)) is not None:
            f.last_ts[rows] = a
        if (a := col("arrival_ms", np.int64, NO_TS)) is not None:
            f.arrival_ms[rows] = np.where(a == NO_TS, NO_TS if heard_ms is None else heard_ms, a)
        if (a := col("said_offline", bool, False)) is not None:
            self.presence_.st.said_offline[rows] = a
        self.thresholds.restore_columns(rows, cols, len(rows))
        for pole, windows in dict(cols.get("maintenance", {})).items():
            r = f.find(str(pole))
            if r is not None:
                for start, end in windows:
                    self.maint.add(str(pole), f.pole_district[r], int(start), int(end))

    def restore(self, poles: Sequence[dict[str, object]], heard_ms: int | None = None) -> None:
        """Load the pole records of a version-1 state file (one object per pole). Rows are re-created in
        the saved order, so every pole gets back the row it had. A pole saved without its arrival time (an
        older file) counts as heard at ``heard_ms`` (the save time)."""
        f = self.state
        for d in poles:
            r = f.row(str(d["pole"]), str(d["district"]))
            if "arrival_ms" in d:
                f.arrival_ms[r] = int(d["arrival_ms"])  # type: ignore[call-overload]
            elif heard_ms is not None:
                f.arrival_ms[r] = heard_ms
            for name in self._ATTRS:
                if name in d:
                    getattr(f, name)[r] = float(d[name])  # type: ignore[arg-type]
            self.thresholds.restore_pole(r, d)
            if "last_ts" in d:
                f.last_ts[r] = int(d["last_ts"])  # type: ignore[call-overload]
            self.presence_.st.said_offline[r] = bool(d.get("said_offline", False))
            for s, e in d.get("maintenance", []):  # type: ignore[attr-defined]
                self.maint.add(str(d["pole"]), str(d["district"]), int(s), int(e))
