"""Layer 1: safety rules derived from the catalog, evaluated for a whole batch of the fleet at once.

Every ``Threshold`` of ``contract.catalog.METRICS`` becomes one tier of a rule; thresholds of one metric
that share a ``kind`` are the tiers of one rule (leakage 15 mA warning / 30 mA critical is one rule,
key ``leakage``, with two levels). A rule does not decide anything: for each sample it reports a
*condition* — the highest tier whose trigger is met (``trig``) and the highest tier whose clear level
is not yet reached (``hold``) — and the alarm policy (``gateway.alarms``) turns conditions into
raised / escalated / cleared alarms with duration and hysteresis.

Comparison of a reading ``x`` with a threshold, by ``relative_to``:

* ``absolute``  x itself;
* ``nominal``   x / the pole's nominal supply voltage (default ``DEFAULT_NOMINAL_VOLTAGE_V``);
* ``rated``     x / expected power, expected = rated power x dimming (default ``DEFAULT_RATED_POWER_W``);
* ``baseline``  |x - the pole's own baseline|: learned as the median of its first ``tilt_learn_n``
  readings (robust to a bad first reading) or set per pole; no condition until the baseline exists.

Trigger for op ``>=`` is ``x >= value``; the tier *holds* while ``x > clear`` and is gone at
``x <= clear`` (mirrored for ``<=``). Names appear only where a rule's meaning needs them: the
lamp-on context (``dimming_pct``, ``illuminance_lux``), maintenance windows (``door_open``) and the
two rules the catalog cannot express (lamp flicker from ``lamp_power_w``; pole offline = silence).

Lamp-on context: a lamp should be lit when its commanded ``dimming_pct`` > 0; when the pole does not
report dimming, when ``illuminance_lux`` is below ``dusk_lux`` (then at full power). A ``lamp_on``
rule gives no condition at all (no evidence either way) while the lamp should be off or nothing is
known, so a failed lamp stays flagged through the day until it is seen working.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from contract.catalog import (
    DEFAULT_NOMINAL_VOLTAGE_V,
    DEFAULT_RATED_POWER_W,
    INDEX,
    METRICS,
    NAMES,
    SEVERITIES,
    Metric,
    Severity,
    Threshold,
)
from contract.levels import BASELINE_LEARN_N, tier_levels
from gateway.detect.state import NO_TS, Batch, FleetState, occurrence_rank

_DIM = INDEX["dimming_pct"]
_LUX = INDEX["illuminance_lux"]
_POWER = INDEX["lamp_power_w"]
_CURRENT = INDEX["lamp_current_a"]
_DOOR = INDEX["door_open"]


# --- what every detection layer hands to the alarm policy -------------------------------------------
@dataclass(frozen=True, slots=True)
class Tier:
    severity: Severity
    explain: str
    fast: bool = False  # raised on the first sample (no minimum duration)


@dataclass(frozen=True, slots=True)
class AlarmSpec:
    """One alarm rule: its key (one active alarm per entity x key), kind and severity tiers.

    Level ``i + 1`` is ``tiers[i]``; level 0 is "no alarm". ``ref_label`` names the reference a
    condition carries beside its value (baseline, expected power, district median ...)."""

    key: str
    kind: str
    metric: str | None
    tiers: tuple[Tier, ...]
    raise_n: int = 3  # consecutive samples before a non-fast tier is raised ...
    raise_ms: int = 60_000  # ... or this long since the condition began, whichever comes first
    clear_n: int = 3  # consecutive samples below the clear level before the alarm drops
    unit: str = ""
    ref_label: str = ""
    ref_unit: str = ""
    decimals: int = 2

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError(f"{self.key}: a rule needs at least one tier")
        if self.raise_n < 1 or self.clear_n < 1:
            raise ValueError(f"{self.key}: raise_n and clear_n must be >= 1")


@dataclass(frozen=True, slots=True)
class Conditions:
    """Condition reports, one per (entity row, spec) observation, in processing order."""

    rows: np.ndarray  # int64 entity row (pole row; district index for district rules)
    spec: np.ndarray  # int64 index into the producer's spec table
    trig: np.ndarray  # int8 highest tier whose trigger is met (0 = none)
    hold: np.ndarray  # int8 highest tier not yet past its clear level (>= trig)
    value: np.ndarray  # float64 the reading (in the metric's unit)
    ref: np.ndarray  # float64 reference (baseline, expected, nominal...), NaN if none
    score: np.ndarray  # float64 in [0, 1]
    ts: np.ndarray  # int64 ms

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def empty() -> Conditions:
        z = np.empty(0, np.int64)
        f = np.empty(0, np.float64)
        b = np.empty(0, np.int8)
        return Conditions(z, z, b, b, f, f, f, z)

    @staticmethod
    def concat(parts: Sequence[Conditions]) -> Conditions:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Conditions.empty()
        if len(parts) == 1:
            return parts[0]
        return Conditions(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                            ("rows", "spec", "trig", "hold", "value", "ref", "score", "ts")))


def levels(x: np.ndarray, op: str, trig_at: Sequence[float], clear_at: Sequence[float]
           ) -> tuple[np.ndarray, np.ndarray]:
    """(trig, hold) levels of ``x`` against tiers in ascending order (NaN x gives 0, 0): the shared
    definition of :func:`contract.levels.tier_levels`, which the pole's safety path uses too."""
    trig, hold = tier_levels(np.asarray(x), op, trig_at, clear_at)
    return np.asarray(trig, np.int8), np.asarray(hold, np.int8)


# --- the rule table ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RuleParams:
    dusk_lux: float = 20.0  # below this the lamp should be lit when dimming is not reported
    raise_n: int = 3
    raise_n_safety: int = 2  # warning tiers of the catalog's critical (fast-path) metrics
    #: the mains (voltage_high / voltage_low): a swell or sag beyond 15 % is the event even when it lasts one
    #: 5-minute sample; a sensor that only reads it so is reported as the sensor (stage._sensor_fault)
    raise_n_mains: int = 1
    raise_ms: int = 60_000
    clear_n: int = 3
    tilt_learn_n: int = BASELINE_LEARN_N  # readings whose median becomes the installed tilt baseline
    lamp_on_frac: float = 0.05  # lamp counts as "on" (flicker) above this share of rated power
    flicker_window_ms: int = 10 * 60_000
    flicker_on: int = 4  # toggles within the window that raise lamp_flicker ...
    flicker_clear: int = 1  # ... and the count at which it clears
    offline_k: float = 3.0  # silent for k x the reporting interval -> offline
    default_interval_ms: float = 60_000.0
    min_silence_ms: float = 30_000.0
    maintenance_slots: int = 4
    mean_cover: float = 0.63  # an averaged rule speaks once its mean covers this share of the weight
    #                           a full history would have (0.63: one averaging period of data)
    mean_max_step_s: float = 3_600.0  # a longer silence counts as this long (no reading rules a gap)
    # stuck sensor: a run of identical readings less likely than exp(-stuck_nats) for this series
    stuck_nats: float = 20.7  # ln(1e9)
    stuck_min_n: int = 6  # never fewer identical readings in a row than this ...
    stuck_max_n: int = 48  # ... nor more (a series needing more repeats itself too often to judge)
    stuck_p_max: float = 0.5  # a series repeating its previous value more often than this is not judged
    stuck_a_eq: float = 0.002  # EW rate of the repeat rate (slow: it spans day and night regimes)
    stuck_warm: int = 144  # transitions seen before a series is judged
    stuck_warm_safety: int = 12  # ... on a safety channel (its catalog prior is trusted sooner)


@dataclass(frozen=True, slots=True)
class Rule:
    """A catalog rule: the spec plus how to compute its comparable value."""

    spec: AlarmSpec
    col: int
    op: str
    relative_to: str
    lamp_on: bool
    trig_at: tuple[float, ...]
    clear_at: tuple[float, ...]
    mean_over_s: float | None = None  # compare the running mean over this period, not the reading


_REF = {"absolute": ("", ""), "nominal": ("nominal", "V"), "rated": ("expected", "W"),
        "baseline": ("baseline", "")}


def derive_rules(metrics: Sequence[Metric] = METRICS, params: RuleParams = RuleParams()) -> tuple[Rule, ...]:
    """One :class:`Rule` per (metric, threshold kind), tiers in ascending severity."""
    metrics_of: dict[str, set[str]] = {}
    for m in metrics:
        for t in m.thresholds:
            metrics_of.setdefault(t.kind, set()).add(m.name)
    dup = {k for k, names in metrics_of.items() if len(names) > 1}  # kind shared by metrics: qualify
    out: list[Rule] = []
    for m in metrics:
        by_kind: dict[str, list[Threshold]] = {}
        for t in m.thresholds:
            by_kind.setdefault(t.kind, []).append(t)
        for kind, ths in by_kind.items():
            ths.sort(key=lambda t: (SEVERITIES.index(t.severity), t.value if t.op == ">=" else -t.value))
            if len({(t.op, t.relative_to, t.lamp_on, t.mean_over_s) for t in ths}) != 1:
                raise ValueError(f"{m.name}/{kind}: tiers disagree on op, relative_to, lamp_on or mean_over_s")
            sign = 1.0 if ths[0].op == ">=" else -1.0
            for lo, hi in itertools.pairwise(ths):
                if sign * hi.value < sign * lo.value or sign * hi.clear < sign * lo.clear:
                    raise ValueError(f"{m.name}/{kind}: tiers are not monotone")
            first = ths[0]
            ref_label, ref_unit = _REF[first.relative_to]
            if first.relative_to == "baseline":
                ref_unit = m.unit
            tiers = tuple(Tier(t.severity, t.explain,
                               fast=t.severity == "critical" or (m.critical and m.dtype == "bool"))
                          for t in ths)
            spec = AlarmSpec(
                key=f"{m.name}.{kind}" if kind in dup else kind, kind=kind, metric=m.name, tiers=tiers,
                raise_n=(params.raise_n_safety if m.critical else
                         params.raise_n_mains if m.name == "supply_voltage_v" else params.raise_n),
                raise_ms=params.raise_ms,
                clear_n=params.clear_n, unit=m.unit, ref_label=ref_label, ref_unit=ref_unit,
                decimals=m.decimals)
            out.append(Rule(spec, INDEX[m.name], first.op, first.relative_to, first.lamp_on,
                            tuple(t.value for t in ths), tuple(t.clear for t in ths), first.mean_over_s))
    return tuple(out)


def safety_channel(m: Metric) -> bool:
    """A float safety sensor a threshold judges (leakage, tilt, water level, cabinet temperature): a
    failed one blinds a safety rule, so its health is judged even where other sensors' is not."""
    return m.group == "safety" and m.dtype == "float" and bool(m.thresholds)


def stuck_metrics(metrics: Sequence[Metric] = METRICS) -> tuple[Metric, ...]:
    """Metrics whose catalog signal implies they vary: float, sensor noise > 0, not constant-shaped
    (a safety channel with sensor noise is judged even when its signal is constant: a live water-level
    sensor still wavers around its resting value)."""
    return tuple(m for m in metrics if m.dtype == "float" and m.signal.noise > 0
                 and (m.signal.shape != "constant" or safety_channel(m)))


def repeat_prior(m: Metric) -> float:
    """P(two successive readings are identical) from the catalog: Gaussian noise rounded to decimals."""
    q = 10.0 ** -m.decimals
    return float(min(q / (m.signal.noise * np.sqrt(np.pi)), 0.99))


def stuck_specs(params: RuleParams = RuleParams(), metrics: Sequence[Metric] = METRICS
                ) -> tuple[AlarmSpec, ...]:
    return tuple(
        AlarmSpec(f"sensor_stuck.{m.name}", "sensor_stuck", m.name,
                  (Tier("warning", f"{m.description} has not changed at all for longer than a live sensor "
                                   "plausibly repeats itself: stuck sensor"),),
                  raise_n=1, raise_ms=0, clear_n=1, unit="readings", ref_label="limit", ref_unit="readings",
                  decimals=0)
        for m in stuck_metrics(metrics))


def extra_specs(params: RuleParams = RuleParams()) -> tuple[AlarmSpec, AlarmSpec]:
    """The two rules the catalog's thresholds cannot express: lamp flicker and pole offline."""
    flicker = AlarmSpec("lamp_flicker", "lamp_flicker", "lamp_power_w",
                        (Tier("warning", f"lamp switched on/off {params.flicker_on} times or more within "
                                         f"{params.flicker_window_ms // 60_000} min: failing driver or "
                                         "loose contact"),),
                        raise_n=1, raise_ms=0, clear_n=params.clear_n, unit="toggles", decimals=0)
    offline = AlarmSpec("pole_offline", "pole_offline", None,
                        (Tier("warning", "pole silent: no reading for longer than "
                                         f"{params.offline_k:g} x its reporting interval", fast=True),),
                        raise_n=1, raise_ms=0, clear_n=1, unit="s", ref_label="limit", ref_unit="s",
                        decimals=0)
    return flicker, offline


# --- evaluation ---------------------------------------------------------------------------------------
@dataclass
class Rules:
    """Per-pole rule state and evaluation. Spec indices: the catalog rules, then flicker, offline, then
    one stuck-sensor rule per :func:`stuck_metrics` (``STUCK + j``)."""

    state: FleetState
    params: RuleParams = field(default_factory=RuleParams)
    metrics: Sequence[Metric] = METRICS

    def __post_init__(self) -> None:
        p = self.params
        self.rules = derive_rules(self.metrics, p)
        flicker, offline = extra_specs(p)
        stuck = stuck_specs(p, self.metrics)
        self.specs: tuple[AlarmSpec, ...] = (*(r.spec for r in self.rules), flicker, offline, *stuck)
        self.FLICKER, self.OFFLINE, self.STUCK = len(self.rules), len(self.rules) + 1, len(self.rules) + 2
        if len({s.key for s in self.specs}) != len(self.specs):
            raise ValueError("duplicate alarm key in the rule table")
        s = self.state
        s.alloc("rated_w", np.float64, np.nan)
        s.alloc("nominal_v", np.float64, np.nan)
        s.alloc("interval_ms", np.float64, np.nan)  # announced (status) reporting interval
        s.alloc("interval_ew", np.float64, np.nan)  # learned from device times
        # learned baselines, only for the metrics a ``relative_to="baseline"`` rule needs
        self.base_cols = np.array(sorted({r.col for r in self.rules if r.relative_to == "baseline"}),
                                  np.int64)
        self._base_slot = {int(c): i for i, c in enumerate(self.base_cols)}
        # running means (time-weighted EW, time constant = averaging period) for averaged rules
        means = {r.col: r.mean_over_s for r in self.rules if r.mean_over_s is not None}
        self.mean_cols = np.array(sorted(means), np.int64)
        self.mean_tau_s = np.array([means[int(c)] for c in self.mean_cols], np.float64)
        self._mean_slot = {int(c): i for i, c in enumerate(self.mean_cols)}
        nm = max(len(self.mean_cols), 1)
        s.alloc("mean_m", np.float64, 0.0, (nm,))  # the running mean ...
        s.alloc("mean_w", np.float64, 0.0, (nm,))  # ... and the share of the period it covers
        s.alloc("mean_t", np.int64, NO_TS, (nm,))  # device time of the last reading in the mean
        self._tbl = self._table()
        nb = max(len(self.base_cols), 1)
        s.alloc("base", np.float64, np.nan, (nb,))
        s.alloc("base_buf", np.float64, np.nan, (nb, p.tilt_learn_n))
        s.alloc("base_n", np.int32, 0, (nb,))
        s.alloc("lamp_state", np.int8, -1)
        s.alloc("flick_ring", np.int64, NO_TS, (max(p.flicker_on, 1) + 1,))
        s.alloc("flick_pos", np.int64, 0)
        s.alloc("maint_start", np.int64, NO_TS, (p.maintenance_slots,))
        s.alloc("maint_end", np.int64, NO_TS, (p.maintenance_slots,))
        s.alloc("said_offline", np.bool_, False)
        sm = stuck_metrics(self.metrics)
        self.stuck_cols = np.array([INDEX[m.name] for m in sm], np.int64)
        self.stuck_prior = np.array([repeat_prior(m) for m in sm], np.float64)
        self.stuck_lo = np.array([m.lo for m in sm], np.float64)
        self.stuck_hi = np.array([m.hi for m in sm], np.float64)
        # a safety channel reading its range edge is judged too (a dead water sensor reads 0): its own
        # learned repeat rate says whether resting at that value is normal for it
        self._lamp_slots = np.array([j for j, m in enumerate(sm) if m.name in ("lamp_current_a", "lamp_power_w")],
                                    np.int64)
        self.stuck_safety = np.array([safety_channel(m) for m in sm], np.bool_)
        self.stuck_warm = np.where(self.stuck_safety, p.stuck_warm_safety, p.stuck_warm).astype(np.int64)
        ns = max(len(sm), 1)
        # a rule on a metric explains a constant reading of it (and the lamp's current follows its power:
        # a dead driver's current sits at 0.00 A while lamp_failure holds)
        self._stuck_of_rule = np.array([[float(r.col == c or (r.col == _POWER and c == _CURRENT))
                                         for c in self.stuck_cols] for r in self.rules],
                                       np.float64).reshape(len(self.rules), len(self.stuck_cols))
        s.alloc("stk_last", np.float64, np.nan, (ns,))  # previous reading
        s.alloc("stk_run", np.int32, 0, (ns,))  # identical readings in a row, the last one included
        s.alloc("stk_p", np.float64, np.nan, (ns,))  # learned P(reading == previous reading)
        s.alloc("stk_n", np.int32, 0, (ns,))  # transitions learned from

    def _table(self) -> dict[str, np.ndarray]:
        """The rule table as arrays: one entry per rule, tiers padded with +inf (never reached)."""
        rs = self.rules
        top = max(len(r.trig_at) for r in rs)
        sign = np.array([1.0 if r.op == ">=" else -1.0 for r in rs])
        trig = np.full((len(rs), top), np.inf)
        clear = np.full((len(rs), top), np.inf)
        for i, r in enumerate(rs):
            trig[i, : len(r.trig_at)] = sign[i] * np.array(r.trig_at)
            clear[i, : len(r.clear_at)] = sign[i] * np.array(r.clear_at)
        rel = np.array([r.relative_to for r in rs])
        base_rule = np.flatnonzero(rel == "baseline")
        return {
            "col": np.array([r.col for r in rs], np.int64), "sign": sign, "trig": trig, "clear": clear,
            "nominal": rel == "nominal", "rated": rel == "rated", "baseline": rel == "baseline",
            "divide": (rel == "nominal") | (rel == "rated"),
            "lamp_on": np.array([r.lamp_on for r in rs]), "door": np.array([r.col == _DOOR for r in rs]),
            "base_rule": base_rule,
            "base_slot": np.array([self._base_slot[rs[i].col] for i in base_rule], np.int64),
            "mean_rule": (mean_rule := np.array([i for i, r in enumerate(rs) if r.mean_over_s is not None],
                                                np.int64)),
            "mean_slot": np.array([self._mean_slot[rs[i].col] for i in mean_rule], np.int64),
        }

    # --- per-pole attributes -----------------------------------------------------------------------
    def set_pole(self, pole: str, district: str, *, rated_power_w: float | None = None,
                 nominal_voltage_v: float | None = None, interval_s: float | None = None,
                 tilt_baseline_deg: float | None = None) -> int:
        """Set optional per-pole attributes (None leaves an attribute as it is)."""
        r = self.state.row(pole, district)
        a = self.state.a
        for name, v in (("rated_w", rated_power_w), ("nominal_v", nominal_voltage_v)):
            if v is not None:
                if not (np.isfinite(v) and v > 0):
                    raise ValueError(f"{pole}: invalid {name} {v!r}")
                a[name][r] = v
        if tilt_baseline_deg is not None:
            self.set_baseline(pole, district, "tilt_deg", tilt_baseline_deg)
        if interval_s is not None:
            if not interval_s > 0:
                raise ValueError(f"{pole}: invalid interval_s {interval_s!r}")
            a["interval_ms"][r] = interval_s * 1000.0
        return r

    def set_baseline(self, pole: str, district: str, metric: str, value: float) -> None:
        """Give a pole its installed baseline for a ``relative_to="baseline"`` metric (no learning)."""
        slot = self._base_slot.get(INDEX.get(metric, -1))
        if slot is None:
            raise ValueError(f"no baseline-relative rule on {metric!r}")
        if not np.isfinite(value):
            raise ValueError(f"{pole}: invalid baseline {value!r}")
        r = self.state.row(pole, district)
        self.state.a["base"][r, slot] = value
        self.state.a["base_n"][r, slot] = 0

    def baseline(self, pole: str, metric: str) -> float | None:
        r, slot = self.state.find(pole), self._base_slot.get(INDEX.get(metric, -1))
        if r is None or slot is None:
            return None
        v = float(self.state.a["base"][r, slot])
        return None if np.isnan(v) else v

    def set_maintenance(self, pole: str, district: str, start_ms: int, end_ms: int) -> None:
        """Add a maintenance window [start, end) in device time: an open door is expected then."""
        if end_ms <= start_ms:
            raise ValueError("a maintenance window must end after it starts")
        r = self.state.row(pole, district)
        s, e = self.state.a["maint_start"][r], self.state.a["maint_end"][r]
        now = self.state.a["last_ts"][r]
        free = np.flatnonzero((e == NO_TS) | (e <= now))
        slot = int(free[0]) if len(free) else int(np.argmin(e))  # full: replace the soonest-ending
        s[slot], e[slot] = start_ms, end_ms

    def clear_maintenance(self, pole: str) -> None:
        r = self.state.find(pole)
        if r is not None:
            self.state.a["maint_start"][r] = NO_TS
            self.state.a["maint_end"][r] = NO_TS

    def maintenance(self, pole: str) -> list[tuple[int, int]]:
        r = self.state.find(pole)
        if r is None:
            return []
        s, e = self.state.a["maint_start"][r], self.state.a["maint_end"][r]
        return sorted((int(a), int(b)) for a, b in zip(s, e, strict=True) if b != NO_TS)

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
        st, a, p = self.state, self.state.a, self.params
        rows, ts, vals = b.rows, b.ts, b.values
        # learned sample interval (device time), robust to gaps: deltas over 1 h are ignored
        prev = a["last_ts"][rows]
        dt = (ts - prev).astype(np.float64)
        ok = (prev != NO_TS) & (dt > 0) & (dt <= 3_600_000)
        ew = a["interval_ew"][rows]
        a["interval_ew"][rows[ok]] = np.where(np.isnan(ew[ok]), dt[ok], 0.9 * ew[ok] + 0.1 * dt[ok])
        st.observe(b, arrival_ms)
        a["said_offline"][rows] = False
        self._learn_baselines(rows, vals)

        n = len(rows)
        rated = np.where(np.isnan(a["rated_w"][rows]), DEFAULT_RATED_POWER_W, a["rated_w"][rows])
        nominal = np.where(np.isnan(a["nominal_v"][rows]), DEFAULT_NOMINAL_VOLTAGE_V, a["nominal_v"][rows])
        dim = a["value"][rows, _DIM]
        lux = a["value"][rows, _LUX]
        with np.errstate(invalid="ignore"):
            should_on = np.where(~np.isnan(dim), dim > 0, lux < p.dusk_lux)
        context_known = ~np.isnan(dim) | ~np.isnan(lux)
        should_on &= context_known
        expected = rated * np.where(np.isnan(dim), 100.0, dim) / 100.0
        in_maint = np.any((ts[:, None] >= a["maint_start"][rows]) & (ts[:, None] < a["maint_end"][rows]),
                          axis=1)

        # every catalog rule at once: an (n samples x R rules) matrix, '<=' rules negated to '>='
        t = self._tbl
        raw = vals[:, t["col"]]
        if len(t["mean_rule"]):  # averaged rules judge the running mean (NaN until it covers enough)
            mean = self._update_means(rows, ts, vals)
            raw[:, t["mean_rule"]] = np.where(np.isnan(raw[:, t["mean_rule"]]), np.nan, mean[:, t["mean_slot"]])
        ref = np.full(raw.shape, np.nan)
        ref[:, t["nominal"]] = nominal[:, None]
        ref[:, t["rated"]] = expected[:, None]
        if len(t["base_rule"]):
            ref[:, t["base_rule"]] = a["base"][rows][:, t["base_slot"]]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(t["divide"], raw / ref, raw)
            x = np.where(t["baseline"], np.abs(raw - ref), x)
        valid = ~np.isnan(raw) & ~np.isnan(x)
        valid &= ~t["lamp_on"] | should_on[:, None]
        valid &= ~t["rated"] | (expected > 0)[:, None]
        xs = x * t["sign"]
        with np.errstate(invalid="ignore"):
            trig = (xs[:, :, None] >= t["trig"]).sum(axis=2).astype(np.int8)  # tiers are monotone
            hold = np.maximum((xs[:, :, None] > t["clear"]).sum(axis=2).astype(np.int8), trig)
        quiet = in_maint[:, None] & t["door"]  # an open door is the plan inside a maintenance window
        trig[quiet] = 0
        hold[quiet] = 0
        ii, kk = np.nonzero(valid)
        hh = hold[ii, kk]
        parts = [Conditions(rows[ii], kk.astype(np.int64), trig[ii, kk], hh, raw[ii, kk], ref[ii, kk],
                            (hh > 0).astype(np.float64), ts[ii])]
        parts.append(self._flicker(rows, ts, vals[:, _POWER], rated))
        # a reading a safety rule already holds at alarm level is explained: not also called stuck
        explained = (hold > 0).astype(np.float64) @ self._stuck_of_rule > 0
        if len(self._lamp_slots):  # a lamp that is off or dimmed reads steadier than the catalog's noise
            with np.errstate(invalid="ignore"):
                quiet = (vals[:, _POWER] < p.lamp_on_frac * rated) | (dim < 100.0)
            explained[:, self._lamp_slots] |= quiet[:, None]
        parts.append(self._stuck(rows, ts, vals, explained))
        zero = np.zeros(n, np.int8)  # a reading is proof of life: it clears pole_offline at once
        parts.append(Conditions(rows, np.full(n, self.OFFLINE, np.int64), zero, zero, np.full(n, np.nan),
                                np.full(n, np.nan), np.zeros(n), ts))
        return Conditions.concat(parts)

    def _update_means(self, rows: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Fold each reading into its pole's time-weighted running mean; (n, n_means) means, NaN until
        the mean covers ``mean_cover`` of a full history's weight.

        Exponentially weighted in time: ``W <- d W + (1 - d)``, ``m <- m + (1 - d) / W * (x - m)``,
        ``d = exp(-dt / tau)``: every reading weighs the time since the previous one (capped at
        ``mean_max_step_s``), ``W`` is the share of the averaging period the data covers
        (``1 - exp(-elapsed / tau)``) and ``m`` is exactly the weighted mean (a constant input gives
        exactly that constant, so threshold boundaries are exact)."""
        a, p = self.state.a, self.params
        x = vals[:, self.mean_cols]
        has = ~np.isnan(x)
        t_prev = a["mean_t"][rows]
        dt_s = np.where(t_prev == NO_TS, self.interval_ms(rows)[:, None],
                        (ts[:, None] - t_prev).astype(np.float64)) / 1000.0
        dt_s = np.clip(dt_s, 0.0, p.mean_max_step_s)
        gain = -np.expm1(-dt_s / self.mean_tau_s)  # 1 - d
        m_old, w_old = a["mean_m"][rows], a["mean_w"][rows]
        w_new = np.where(has, w_old - gain * w_old + gain, w_old)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(has & (w_new > 0), gain / w_new, 0.0)
        m_new = np.where(has, m_old + step * (np.where(has, x, 0.0) - m_old), m_old)
        a["mean_m"][rows], a["mean_w"][rows] = m_new, w_new
        a["mean_t"][rows] = np.where(has, np.maximum(ts[:, None], t_prev), t_prev)  # late readings: no weight
        return np.where(has & (w_new >= p.mean_cover), m_new, np.nan)

    def running_mean(self, pole: str, metric: str) -> float | None:
        """The pole's running mean of an averaged metric (None if unknown or not averaged)."""
        r, slot = self.state.find(pole), self._mean_slot.get(INDEX.get(metric, -1))
        if r is None or slot is None or self.state.a["mean_w"][r, slot] <= 0:
            return None
        return float(self.state.a["mean_m"][r, slot])

    def _learn_baselines(self, rows: np.ndarray, vals: np.ndarray) -> None:
        """Median of the first ``tilt_learn_n`` readings of each baseline-relative metric."""
        a, n_learn = self.state.a, self.params.tilt_learn_n
        for slot, col in enumerate(self.base_cols):
            x = vals[:, col]
            learn = ~np.isnan(x) & np.isnan(a["base"][rows, slot])
            r = rows[learn]
            if len(r) == 0:
                continue
            cnt = a["base_n"][r, slot]
            a["base_buf"][r, slot, cnt] = x[learn]
            a["base_n"][r, slot] = cnt + 1
            done = r[cnt + 1 >= n_learn]
            if len(done):
                a["base"][done, slot] = np.median(a["base_buf"][done, slot], axis=1)
                a["base_buf"][done, slot] = np.nan
                a["base_n"][done, slot] = 0

    def stuck_limit(self, p_eq: np.ndarray) -> np.ndarray:
        """Identical readings in a row that make a series with repeat rate ``p_eq`` stuck: the run is
        less likely than ``exp(-stuck_nats)``, within [stuck_min_n, stuck_max_n]."""
        p = self.params
        with np.errstate(divide="ignore"):
            n = 1.0 + np.ceil(p.stuck_nats / -np.log(np.clip(p_eq, 0.0, 0.999)))
        return np.clip(np.nan_to_num(n, nan=p.stuck_max_n, posinf=p.stuck_min_n), p.stuck_min_n,
                       p.stuck_max_n).astype(np.int64)

    def _stuck(self, rows: np.ndarray, ts: np.ndarray, vals: np.ndarray, explained: np.ndarray) -> Conditions:
        """Stuck sensor: a reading identical to the previous ones for longer than this series plausibly
        repeats itself. The repeat rate is learned per pole x metric (from the catalog's noise and
        decimals at first) from finished runs that were not called stuck (a stuck sensor cannot teach
        itself that repeats are normal). A value at the edge of the valid range is saturated, not stuck."""
        if len(self.stuck_cols) == 0:
            return Conditions.empty()
        a, p = self.state.a, self.params
        x = vals[:, self.stuck_cols]
        has = ~np.isnan(x)
        last, run = a["stk_last"][rows], a["stk_run"][rows]
        pe = np.where(np.isnan(a["stk_p"][rows]), self.stuck_prior, a["stk_p"][rows])
        nn = a["stk_n"][rows]
        seen = has & ~np.isnan(last)
        same = seen & (x == last)
        # a run is learnt when it ends (its run - 1 repeats, then the change), and only if it was not
        # called stuck: the run being judged is never evidence about the series' usual repeat rate
        learn = seen & ~same & (run < self.stuck_limit(pe))
        rate = np.maximum(1.0 / np.maximum(nn + run, 1), p.stuck_a_eq)
        after = 1.0 - (1.0 - pe) * (1.0 - rate) ** np.maximum(run - 1, 0)
        pe = np.where(learn, after * (1.0 - rate), pe)
        nn = nn + np.where(learn, run, 0)
        run = np.where(has, np.where(same, run + 1, 1), run).astype(np.int32)
        a["stk_last"][rows] = np.where(has, x, last)
        a["stk_run"][rows], a["stk_p"][rows], a["stk_n"][rows] = run, pe, nn
        limit = self.stuck_limit(pe)
        judged = has & (nn >= self.stuck_warm) & (pe <= p.stuck_p_max) & ~explained
        ii, jj = np.nonzero(judged)
        xv = x[ii, jj]
        inside = self.stuck_safety[jj] | ((xv > self.stuck_lo[jj]) & (xv < self.stuck_hi[jj]))
        stuck = (run[ii, jj] >= limit[ii, jj]) & inside
        lvl = stuck.astype(np.int8)
        return Conditions(rows[ii], self.STUCK + jj.astype(np.int64), lvl, lvl.copy(),
                          run[ii, jj].astype(np.float64), limit[ii, jj].astype(np.float64),
                          stuck.astype(np.float64), ts[ii])

    def _flicker(self, rows: np.ndarray, ts: np.ndarray, power: np.ndarray, rated: np.ndarray
                 ) -> Conditions:
        a, p = self.state.a, self.params
        has = ~np.isnan(power)
        r, t = rows[has], ts[has]
        if len(r) == 0:
            return Conditions.empty()
        on = (power[has] >= p.lamp_on_frac * rated[has]).astype(np.int8)
        prev = a["lamp_state"][r]
        flip = (prev >= 0) & (prev != on)
        fr = r[flip]
        ring = a["flick_ring"]
        ring[fr, a["flick_pos"][fr] % ring.shape[1]] = t[flip]
        a["flick_pos"][fr] += 1
        a["lamp_state"][r] = on
        count = np.sum(ring[r] > t[:, None] - p.flicker_window_ms, axis=1).astype(np.float64)
        trig, hold = levels(count, ">=", (p.flicker_on,), (p.flicker_clear,))
        return Conditions(r, np.full(len(r), self.FLICKER, np.int64), trig, hold, count,
                          np.full(len(r), np.nan), (hold > 0).astype(np.float64), t)

    # --- presence --------------------------------------------------------------------------------------
    def interval_ms(self, rows: np.ndarray) -> np.ndarray:
        """Reporting interval: announced, else learned from device times, else the default."""
        a, p = self.state.a, self.params
        interval = np.where(np.isnan(a["interval_ms"][rows]), a["interval_ew"][rows], a["interval_ms"][rows])
        return np.where(np.isnan(interval), p.default_interval_ms, interval)

    def silence_limit_ms(self, rows: np.ndarray) -> np.ndarray:
        p = self.params
        return np.maximum(p.offline_k * self.interval_ms(rows), p.min_silence_ms)

    def silence(self, now_ms: int) -> Conditions:
        """Offline conditions for every pole heard at least once (gateway clock ``now_ms``)."""
        a = self.state.a
        rows = np.flatnonzero(a["arrival_ms"][: self.state.n] != NO_TS).astype(np.int64)
        if len(rows) == 0:
            return Conditions.empty()
        silent_ms = (now_ms - a["arrival_ms"][rows]).astype(np.float64)
        limit = self.silence_limit_ms(rows)
        off = (silent_ms > limit) | a["said_offline"][rows]
        lvl = off.astype(np.int8)
        return Conditions(rows, np.full(len(rows), self.OFFLINE, np.int64), lvl, lvl.copy(),
                          np.maximum(silent_ms, 0.0) / 1000.0, limit / 1000.0, off.astype(np.float64),
                          np.full(len(rows), now_ms, np.int64))

    def presence(self, pole: str, district: str, state: str, ts_ms: int, arrival_ms: int,
                 interval_s: float | None = None) -> Conditions:
        """A status message: ``offline`` (the broker's Last Will or a shutdown) raises pole_offline at
        once; ``birth``/``online`` clears it and counts as being heard."""
        r = self.set_pole(pole, district, interval_s=interval_s)
        a = self.state.a
        off = state == "offline"
        a["said_offline"][r] = off
        if not off:
            a["arrival_ms"][r] = arrival_ms
        lvl = np.array([int(off)], np.int8)
        return Conditions(np.array([r], np.int64), np.array([self.OFFLINE], np.int64), lvl, lvl.copy(),
                          np.array([np.nan]), np.array([np.nan]), lvl.astype(np.float64),
                          np.array([ts_ms], np.int64))

    def excuse(self, ms: int) -> None:
        """Time the gateway could not hear anyone (it was down, or had lost its broker) is not silence:
        every heard pole's last arrival moves ``ms`` later. A pole already past its limit stays past it
        (its offline alarm neither clears nor flaps); one within it keeps what it had left."""
        if ms <= 0:
            return
        arr = self.state.a["arrival_ms"][: self.state.n]
        arr[arr != NO_TS] += int(ms)

    # --- persistence -----------------------------------------------------------------------------------
    def export(self) -> list[dict[str, object]]:
        st, a = self.state, self.state.a
        out: list[dict[str, object]] = []
        for r, pole in enumerate(st.poles):
            d: dict[str, object] = {"pole": pole, "district": st.pole_district[r]}
            for name in ("rated_w", "nominal_v", "interval_ms", "interval_ew"):
                v = float(a[name][r])
                if not np.isnan(v):
                    d[name] = v
            base = {str(NAMES[c]): float(a["base"][r, i]) for i, c in enumerate(self.base_cols)
                    if not np.isnan(a["base"][r, i])}
            if base:
                d["baseline"] = base
            means = {str(NAMES[c]): [float(a["mean_m"][r, i]), float(a["mean_w"][r, i]), int(a["mean_t"][r, i])]
                     for i, c in enumerate(self.mean_cols) if a["mean_t"][r, i] != NO_TS}
            if means:
                d["means"] = means
            if a["last_ts"][r] != NO_TS:
                d["last_ts"] = int(a["last_ts"][r])
            if a["said_offline"][r]:
                d["said_offline"] = True
            if a["arrival_ms"][r] != NO_TS:
                d["arrival_ms"] = int(a["arrival_ms"][r])  # gateway clock: silence resumes where it was
            maint = self.maintenance(pole)
            if maint:
                d["maintenance"] = [list(w) for w in maint]
            out.append(d)
        return out

    def restore(self, poles: Sequence[dict[str, object]], heard_ms: int | None = None) -> None:
        """Rows are re-created in the saved order, so every pole gets back the row it had. A pole saved
        without its arrival time (an older file) counts as heard at ``heard_ms`` (the save time)."""
        a = self.state.a
        for d in poles:
            r = self.state.row(str(d["pole"]), str(d["district"]))
            if "arrival_ms" in d:
                a["arrival_ms"][r] = int(d["arrival_ms"])  # type: ignore[call-overload]
            elif heard_ms is not None:
                a["arrival_ms"][r] = heard_ms
            for name in ("rated_w", "nominal_v", "interval_ms", "interval_ew"):
                if name in d:
                    a[name][r] = float(d[name])  # type: ignore[arg-type]
            for metric, v in dict(d.get("baseline", {})).items():  # type: ignore[call-overload]
                self.set_baseline(str(d["pole"]), str(d["district"]), str(metric), float(v))
            for metric, (ms, mw, mt) in dict(d.get("means", {})).items():  # type: ignore[call-overload]
                slot = self._mean_slot.get(INDEX.get(str(metric), -1))
                if slot is not None:
                    a["mean_m"][r, slot], a["mean_w"][r, slot], a["mean_t"][r, slot] = float(ms), float(mw), int(mt)
            if "last_ts" in d:
                a["last_ts"][r] = int(d["last_ts"])  # type: ignore[call-overload]
            a["said_offline"][r] = bool(d.get("said_offline", False))
            for s, e in d.get("maintenance", []):  # type: ignore[attr-defined]
                self.set_maintenance(str(d["pole"]), str(d["district"]), int(s), int(e))
