"""Catalog thresholds: every ``Threshold`` of ``contract.catalog.METRICS`` becomes one tier of a rule;
thresholds of one metric that share a ``kind`` are the tiers of one rule (leakage 15 mA warning /
30 mA critical is one rule, key ``leakage``, with two levels).

Comparison of a reading ``x`` with a threshold, by ``relative_to``:

* ``absolute``  x itself;
* ``nominal``   x / the pole's nominal supply voltage (default ``DEFAULT_NOMINAL_VOLTAGE_V``);
* ``rated``     x / expected power, expected = rated power x dimming (default ``DEFAULT_RATED_POWER_W``);
* ``baseline``  |x - the pole's own baseline|: learned as the median of its first ``tilt_learn_n``
  readings (robust to a bad first reading) or set per pole; no condition until the baseline exists.

Trigger for op ``>=`` is ``x >= value``; the tier *holds* while ``x > clear`` and is gone at
``x <= clear`` (mirrored for ``<=``). A threshold with ``mean_over_s`` (the WHO 24-hour guidelines)
judges the pole's time-weighted running mean, not the reading. A ``lamp_on`` rule gives no condition
at all while the lamp should be off or nothing is known (the lamp context comes from the caller,
:class:`gateway.detect.rules.Rules`); an open door inside a maintenance window is the plan.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from contract.catalog import INDEX, METRICS, NAMES, SEVERITIES, Metric, Threshold
from gateway.detect.params import RuleParams
from gateway.detect.state import NO_TS, Col, Columns, FleetState, never_as_none
from gateway.detect.types import AlarmSpec, Conditions, Tier

_NO_TS = int(NO_TS)


def _column(values: Sequence[object], n: int, none: object) -> np.ndarray:
    """A saved column of ``n`` values as an array, ``null`` as ``none``."""
    if len(values) != n:
        raise ValueError(f"pole table: a threshold column of {len(values)} rows for {n} poles")
    return np.array([none if v is None else v for v in values])

_DOOR = INDEX["door_open"]


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
                raise_n=(params.raise_n_mains if m.name == "supply_voltage_v" else
                         params.raise_n_leakage if m.name == "leakage_current_ma" else
                         params.raise_n_safety if m.critical else params.raise_n),
                raise_ms=params.raise_ms,
                clear_n=params.clear_n, unit=m.unit, ref_label=ref_label, ref_unit=ref_unit,
                decimals=m.decimals)
            out.append(Rule(spec, INDEX[m.name], first.op, first.relative_to, first.lamp_on,
                            tuple(t.value for t in ths), tuple(t.clear for t in ths), first.mean_over_s))
    return tuple(out)





class ThresholdState(Columns):
    mean_m = Col(np.float64, 0.0, "n_means")  # the running mean of each averaged metric ...
    mean_w = Col(np.float64, 0.0, "n_means")  # ... and the share of the period it covers
    mean_t = Col(np.int64, NO_TS, "n_means")  # device time of the last reading in the mean
    base = Col(np.float64, np.nan, "n_base")  # learned (or installed) baseline of each baseline metric
    base_buf = Col(np.float64, np.nan, "n_base", "learn_n")  # its first readings while learning
    base_n = Col(np.int32, 0, "n_base")  # how many of them
    base_given = Col(np.bool_, False, "n_base")  # the baseline is the installed one (inventory, birth, set_pole)

    def __init__(self, fleet: FleetState, n_means: int, n_base: int, learn_n: int) -> None:
        self.n_means, self.n_base, self.learn_n = n_means, n_base, learn_n
        super().__init__(fleet)


@dataclass(frozen=True, slots=True)
class LampContext:
    """What the lamp should be doing at each sample (one sample per row)."""

    rated: np.ndarray  # rated power (W), the default where unknown
    nominal: np.ndarray  # nominal supply voltage (V)
    expected: np.ndarray  # rated x commanded dimming
    should_on: np.ndarray  # bool: the lamp should be lit (and the context is known)
    in_maintenance: np.ndarray  # bool: inside one of the pole's maintenance windows


class Thresholds:
    """The catalog rules as one vectorised table; specs ``0 .. len(rules) - 1``."""

    def __init__(self, fleet: FleetState, params: RuleParams, metrics: Sequence[Metric] = METRICS) -> None:
        self.fleet, self.params = fleet, params
        self.rules = derive_rules(metrics, params)
        # learned baselines, only for the metrics a ``relative_to="baseline"`` rule needs
        self.base_cols = np.array(sorted({r.col for r in self.rules if r.relative_to == "baseline"}),
                                  np.int64)
        self._base_slot = {int(c): i for i, c in enumerate(self.base_cols)}
        # running means (time-weighted EW, time constant = averaging period) for averaged rules
        means = {r.col: r.mean_over_s for r in self.rules if r.mean_over_s is not None}
        self.mean_cols = np.array(sorted(means), np.int64)
        self.mean_tau_s = np.array([means[int(c)] for c in self.mean_cols], np.float64)
        self._mean_slot = {int(c): i for i, c in enumerate(self.mean_cols)}
        self.st = ThresholdState(fleet, len(self.mean_cols), len(self.base_cols), params.tilt_learn_n)
        self._base_names = [str(NAMES[c]) for c in self.base_cols]
        self._mean_names = [str(NAMES[c]) for c in self.mean_cols]
        self._tbl = self._table()

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

    def set_baseline(self, pole: str, district: str, metric: str, value: float, *, installed: bool = True
                     ) -> None:
        """Give a pole its installed baseline for a ``relative_to="baseline"`` metric (no learning);
        ``installed=False``: a learned one restored from the state file."""
        slot = self._base_slot.get(INDEX.get(metric, -1))
        if slot is None:
            raise ValueError(f"no baseline-relative rule on {metric!r}")
        if not np.isfinite(value):
            raise ValueError(f"{pole}: invalid baseline {value!r}")
        r = self.fleet.row(pole, district)
        self.st.base[r, slot] = value
        self.st.base_n[r, slot] = 0
        self.st.base_given[r, slot] = installed

    def installed(self, rows: np.ndarray, metric: str) -> np.ndarray:
        """Per row: is the baseline of ``metric`` the installed one (not learned from the first readings)?"""
        return self.st.base_given[rows, self._base_slot[INDEX[metric]]].copy()

    def baseline(self, pole: str, metric: str) -> float | None:
        r, slot = self.fleet.find(pole), self._base_slot.get(INDEX.get(metric, -1))
        if r is None or slot is None:
            return None
        v = float(self.st.base[r, slot])
        return None if np.isnan(v) else v

    def _update_means(self, rows: np.ndarray, ts: np.ndarray, vals: np.ndarray, interval_ms: np.ndarray
                      ) -> np.ndarray:
        """Fold each reading into its pole's time-weighted running mean; (n, n_means) means, NaN until
        the mean covers ``mean_cover`` of a full history's weight.

        Exponentially weighted in time: ``W <- d W + (1 - d)``, ``m <- m + (1 - d) / W * (x - m)``,
        ``d = exp(-dt / tau)``: every reading weighs the time since the previous one (capped at
        ``mean_max_step_s``), ``W`` is the share of the averaging period the data covers
        (``1 - exp(-elapsed / tau)``) and ``m`` is exactly the weighted mean (a constant input gives
        exactly that constant, so threshold boundaries are exact)."""
        st, p = self.st, self.params
        x = vals[:, self.mean_cols]
        has = ~np.isnan(x)
        t_prev = st.mean_t[rows]
        dt_s = np.where(t_prev == NO_TS, interval_ms[:, None],
                        (ts[:, None] - t_prev).astype(np.float64)) / 1000.0
        dt_s = np.clip(dt_s, 0.0, p.mean_max_step_s)
        gain = -np.expm1(-dt_s / self.mean_tau_s)  # 1 - d
        m_old, w_old = st.mean_m[rows], st.mean_w[rows]
        w_new = np.where(has, w_old - gain * w_old + gain, w_old)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(has & (w_new > 0), gain / w_new, 0.0)
        m_new = np.where(has, m_old + step * (np.where(has, x, 0.0) - m_old), m_old)
        st.mean_m[rows], st.mean_w[rows] = m_new, w_new
        st.mean_t[rows] = np.where(has, np.maximum(ts[:, None], t_prev), t_prev)  # late readings: no weight
        return np.where(has & (w_new >= p.mean_cover), m_new, np.nan)

    def running_mean(self, pole: str, metric: str) -> float | None:
        """The pole's running mean of an averaged metric (None if unknown or not averaged)."""
        r, slot = self.fleet.find(pole), self._mean_slot.get(INDEX.get(metric, -1))
        if r is None or slot is None or self.st.mean_w[r, slot] <= 0:
            return None
        return float(self.st.mean_m[r, slot])

    def learn_baselines(self, rows: np.ndarray, vals: np.ndarray) -> None:
        """Median of the first ``tilt_learn_n`` readings of each baseline-relative metric."""
        st, n_learn = self.st, self.params.tilt_learn_n
        for slot, col in enumerate(self.base_cols):
            x = vals[:, col]
            learn = ~np.isnan(x) & np.isnan(st.base[rows, slot])
            r = rows[learn]
            if len(r) == 0:
                continue
            cnt = st.base_n[r, slot]
            st.base_buf[r, slot, cnt] = x[learn]
            st.base_n[r, slot] = cnt + 1
            done = r[cnt + 1 >= n_learn]
            if len(done):
                st.base[done, slot] = np.median(st.base_buf[done, slot], axis=1)
                st.base_buf[done, slot] = np.nan
                st.base_n[done, slot] = 0

    def evaluate(self, rows: np.ndarray, ts: np.ndarray, vals: np.ndarray, ctx: LampContext,
                 interval_ms: np.ndarray) -> tuple[Conditions, np.ndarray]:
        """Every catalog rule at once for one sample per row: an (n samples x R rules) matrix, ``<=``
        rules negated to ``>=``. Returns the conditions and the (n x R) ``hold`` levels."""
        t = self._tbl
        raw = vals[:, t["col"]]
        if len(t["mean_rule"]):  # averaged rules judge the running mean (NaN until it covers enough)
            mean = self._update_means(rows, ts, vals, interval_ms)
            raw[:, t["mean_rule"]] = np.where(np.isnan(raw[:, t["mean_rule"]]), np.nan, mean[:, t["mean_slot"]])
        ref = np.full(raw.shape, np.nan)
        ref[:, t["nominal"]] = ctx.nominal[:, None]
        ref[:, t["rated"]] = ctx.expected[:, None]
        if len(t["base_rule"]):
            ref[:, t["base_rule"]] = self.st.base[rows][:, t["base_slot"]]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(t["divide"], raw / ref, raw)
            x = np.where(t["baseline"], np.abs(raw - ref), x)
        valid = ~np.isnan(raw) & ~np.isnan(x)
        valid &= ~t["lamp_on"] | ctx.should_on[:, None]
        valid &= ~t["rated"] | (ctx.expected > 0)[:, None]
        xs = x * t["sign"]
        with np.errstate(invalid="ignore"):
            trig = (xs[:, :, None] >= t["trig"]).sum(axis=2).astype(np.int8)  # tiers are monotone
            hold = np.maximum((xs[:, :, None] > t["clear"]).sum(axis=2).astype(np.int8), trig)
        quiet = ctx.in_maintenance[:, None] & t["door"]  # an open door is the plan inside a maintenance window
        trig[quiet] = 0
        hold[quiet] = 0
        ii, kk = np.nonzero(valid)
        hh = hold[ii, kk]
        return (Conditions(rows[ii], kk.astype(np.int64), trig[ii, kk], hh, raw[ii, kk], ref[ii, kk],
                           (hh > 0).astype(np.float64), ts[ii]), hold)

    # --- persistence (entries of the pole's record in the state file) -------------------------------
    #: the columns :meth:`export_columns` reads (a state save copies just these: :func:`frozen`)
    EXPORTED = ("base", "base_given", "mean_m", "mean_w", "mean_t")

    def export_columns(self, st: SimpleNamespace) -> Iterator[tuple[str, object]]:
        """The pole table's threshold columns from ``st`` (a :func:`frozen` copy of :data:`EXPORTED`):
        ``baseline`` {metric: [value or NaN]}, ``baseline_installed`` {metric: [bool]}, ``means`` {metric:
        {"m": [...], "w": [...], "t": [device ms or null]}}."""
        yield "baseline", {nm: st.base[:, i].tolist() for i, nm in enumerate(self._base_names)}
        yield "baseline_installed", {nm: st.base_given[:, i].tolist() for i, nm in enumerate(self._base_names)}
        yield "means", {nm: {"m": st.mean_m[:, i].tolist(), "w": st.mean_w[:, i].tolist(),
                             "t": never_as_none(st.mean_t[:, i])}
                        for i, nm in enumerate(self._mean_names)}

    def restore_columns(self, rows: np.ndarray, cols: dict[str, Any], n: int) -> None:
        """Load the columns of :meth:`export_columns` for the pole table's ``rows`` (metrics this version
        has no slot for are skipped)."""
        given = dict(cols.get("baseline_installed", {}))
        for metric, values in dict(cols.get("baseline", {})).items():
            slot = self._base_slot.get(INDEX.get(str(metric), -1))
            if slot is None:
                continue
            v = _column(values, n, np.nan)
            ok = np.isfinite(v)
            self.st.base[rows[ok], slot] = v[ok]
            self.st.base_n[rows[ok], slot] = 0
            g = _column(given.get(metric, [False] * n), n, False).astype(bool)
            self.st.base_given[rows[ok], slot] = g[ok]
        for metric, m in dict(cols.get("means", {})).items():
            slot = self._mean_slot.get(INDEX.get(str(metric), -1))
            if slot is None:
                continue
            t = _column(m["t"], n, NO_TS).astype(np.int64)
            ok = t != NO_TS
            self.st.mean_m[rows[ok], slot] = _column(m["m"], n, 0.0)[ok]
            self.st.mean_w[rows[ok], slot] = _column(m["w"], n, 0.0)[ok]
            self.st.mean_t[rows[ok], slot] = t[ok]

    def restore_pole(self, r: int, d: dict[str, object]) -> None:
        given = {str(m) for m in list(d.get("baseline_installed", []))}  # type: ignore[call-overload]
        for metric, v in dict(d.get("baseline", {})).items():  # type: ignore[call-overload]
            self.set_baseline(str(d["pole"]), str(d["district"]), str(metric), float(v),
                              installed=str(metric) in given)
        for metric, (ms, mw, mt) in dict(d.get("means", {})).items():  # type: ignore[call-overload]
            slot = self._mean_slot.get(INDEX.get(str(metric), -1))
            if slot is not None:
                self.st.mean_m[r, slot], self.st.mean_w[r, slot], self.st.mean_t[r, slot] = (
                    float(ms), float(mw), int(mt))
