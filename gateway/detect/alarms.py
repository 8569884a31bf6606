"""Alarm policy: conditions in, alarm state changes out (vectorised over entity x rule).

A detection layer reports *conditions* (``gateway.detect.types.Conditions``): for one entity (a pole,
or a district) and one rule, the highest tier whose trigger is met (``trig``) and the highest tier
whose clear level is not yet reached (``hold``). The policy owns the decision:

* **Hysteresis.** With the alarm at level ``L``, the target level is
  ``g = max(trig, min(hold, L))``: a raised tier stays while the value is between its clear and
  trigger levels, and only a trigger can take the alarm higher.
* **Minimum duration.** ``g > L`` must be seen on ``raise_n`` consecutive samples, or for
  ``raise_ms`` since the first of them, before the alarm rises to ``g``. A *fast* tier (every
  ``critical`` tier — leakage >= 30 mA, smoke, flood >= 15 cm — and the catalog's fast-path binary
  sensors such as the door contact) rises on the first sample.
* **Clearing.** ``g < L`` must be seen on ``clear_n`` consecutive samples; the alarm then drops to
  ``g`` — cleared when ``g == 0``, otherwise de-escalated to the lower tier.
* **De-duplication and escalation.** One alarm per entity x rule key. The tiers of one rule share
  the key: warning -> critical *escalates the same alarm* (a new ``raised`` state with the higher
  severity, ``raised_at`` kept), critical -> warning de-escalates it; the retained MQTT message of
  the key therefore always shows the alarm's current state.

State is a few ``(entities, rules)`` numpy arrays (level, the two counters, the pending time); only actual
state changes become Python objects, and the fields of an active alarm live in a dict by (entity, rule).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from contract.catalog import Severity
from gateway.detect.state import NO_TS, Reserve, doubled, occurrence_rank
from gateway.detect.types import AlarmSpec, Conditions

#: A timed rise (``raise_ms``) whose condition has not been reported at all for longer than
#: ``max(raise_ms, PEND_GAP_MS)`` restarts at its next report instead of completing on it. The timer stands
#: for "the condition held for raise_ms"; across hours with no report (the entity not judged: a lamp channel
#: through the unlit day, a pole offline) nothing says it held. Held-out seed 3015: a lamp-power drift pending
#: at 15.4 h, the lamp off 20 min later, and at dusk (24.0 h) the first report completed the 30 min wait at
#: once, 2.8 h after the drift had ended. Here in the policy, not in a layer, because every timed rule (the
#: thresholds, clock skew, sensor_drift, district_event) shares the timer and its meaning. One hour: readings
#: come every 5 minutes, so it is 12 missing reports, not a lost message or two (a 60-s threshold rule keeps
#: completing on its next sample after a short gap, as before), and it is the spatial layer's ``max_step_ms``.
PEND_GAP_MS = 3_600_000

Change = Literal["raised", "escalated", "deescalated", "cleared"]


@dataclass(frozen=True, slots=True)
class Transition:
    """One alarm state change of entity ``row`` on rule ``spec``."""

    row: int
    spec_idx: int
    spec: AlarmSpec
    change: Change
    old_level: int
    level: int  # 0 once cleared
    value: float
    ref: float
    score: float
    ts_ms: int
    raised_at_ms: int

    @property
    def state(self) -> Literal["raised", "cleared"]:
        return "cleared" if self.level == 0 else "raised"

    @property
    def severity(self) -> Severity:
        """The new severity, or the severity the alarm had when it cleared."""
        return self.spec.tiers[(self.level or self.old_level) - 1].severity

    def explain(self) -> str:
        return explain(self.spec, self.level or self.old_level, self.value, self.ref,
                       cleared=self.level == 0)


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    row: int
    spec_idx: int
    spec: AlarmSpec
    level: int
    value: float
    ref: float
    score: float
    ts_ms: int  # time of the last state change
    raised_at_ms: int

    @property
    def severity(self) -> Severity:
        return self.spec.tiers[self.level - 1].severity

    def explain(self) -> str:
        return explain(self.spec, self.level, self.value, self.ref)


def fmt(v: float, decimals: int) -> str:
    if not np.isfinite(v):
        return "n/a"
    s = f"{v:.{max(decimals, 0)}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def explain(spec: AlarmSpec, level: int, value: float, ref: float, *, cleared: bool = False) -> str:
    """One line an operator understands: the tier's explanation plus the value (and its reference)."""
    text = spec.tiers[max(level, 1) - 1].explain
    parts = []
    if np.isfinite(value):
        parts.append(f"{fmt(value, spec.decimals)} {spec.unit}".rstrip())
    if spec.ref_label and np.isfinite(ref):
        parts.append(f"{spec.ref_label} {fmt(ref, spec.decimals)} {spec.ref_unit}".rstrip())
    if parts:
        text = f"{text} ({', '.join(parts)})"
    return (f"cleared: {text}" if cleared else text)[:500]


class AlarmPolicy:
    """Alarm state for ``entities x specs``; entity rows grow on demand (doubling)."""

    # (rows, specs) arrays: level (int8), the two counters (int8, or int32 if a rule counts past 127); and
    # pend_since (int64) as (rows, timed specs): the time a pending rise began matters only to a rule with a
    # raise_ms (32 of the gateway's 80 rules), for the others it was 8 bytes a cell never read (21 of the 29 MB
    # of 32,768 rows). It is read only where pend_n > 0, and the step that makes pend_n > 0 writes it, so it is
    # written only then, and a cell that is not pending may hold anything: a fresh row's are zeros, which the
    # kernel backs only when written (every array grows in place: Reserve).
    # raised_at, ts, value, ref and score of an *active* alarm only, by (row, spec): written on a state
    # change, read by active()/export(). Dense (rows, specs) arrays of them were 40 of the 57 bytes a cell
    # (at 80 rules, 105 MB of 149 MB for 32,768 rows), for the few cells that ever hold an alarm.

    def __init__(self, specs: Sequence[AlarmSpec], capacity: int = 64) -> None:
        self.specs = tuple(specs)
        k = len(self.specs)
        if k == 0:
            raise ValueError("an alarm policy needs at least one rule")
        self._by_key = {s.key: i for i, s in enumerate(self.specs)}
        if len(self._by_key) != k:
            raise ValueError("duplicate alarm key")
        top = max(len(s.tiers) for s in self.specs)
        self._fast = np.zeros((k, top + 1), bool)
        for i, s in enumerate(self.specs):
            for j, t in enumerate(s.tiers):
                self._fast[i, j + 1] = t.fast
        self._raise_n = np.array([s.raise_n for s in self.specs], np.int64)
        self._raise_ms = np.array([s.raise_ms for s in self.specs], np.int64)
        self._clear_n = np.array([s.clear_n for s in self.specs], np.int64)
        self._ntiers = np.array([len(s.tiers) for s in self.specs], np.int64)
        # pend_n < raise_n and clr_n < clear_n always (they reset when they reach it): int8 unless a rule
        # asks for more than 127 samples
        self._count_dt = np.int8 if max(max(s.raise_n, s.clear_n) for s in self.specs) <= 127 else np.int32
        # the column of each timed rule (raise_ms > 0) in pend_since, -1 for the others
        timed = np.flatnonzero(self._raise_ms > 0)
        self._tcol = np.full(k, -1, np.int64)
        self._tcol[timed] = np.arange(len(timed))
        self._n_timed = len(timed)
        self._cap = 0
        self._a: dict[str, np.ndarray] = {}
        self._res: dict[str, Reserve] = {}
        self._held: dict[tuple[int, int], tuple[int, int, float, float, float]] = {}
        self._alloc(max(int(capacity), 1))
        self.counts: Counter[str] = Counter()  # "<change>_<kind>", e.g. raised_leakage

    def _alloc(self, cap: int) -> None:
        k = len(self.specs)
        for n, dt, width in (("level", np.int8, k), ("pend_n", self._count_dt, k), ("clr_n", self._count_dt, k),
                             ("pend_since", np.int64, max(self._n_timed, 1)),
                             ("pend_seen", np.int64, max(self._n_timed, 1))):
            res = self._res.get(n)
            if res is None:
                res = self._res[n] = Reserve()
            self._a[n] = res.grow(self._a.get(n), self._cap, cap, (width,), np.dtype(dt), 0)
        self._cap = cap

    def ensure(self, n_rows: int) -> None:
        cap = doubled(self._cap, n_rows)
        if cap != self._cap:
            self._alloc(cap)

    def spec_index(self, key: str) -> int:
        return self._by_key[key]

    # --- the decision ------------------------------------------------------------------------------
    def step(self, cond: Conditions) -> list[Transition]:
        """Apply conditions in the order given (several for one entity x rule are taken in turn)."""
        if len(cond) == 0:
            return []
        if cond.spec.min() < 0 or cond.spec.max() >= len(self.specs):
            raise ValueError("condition refers to an unknown rule")
        self.ensure(int(cond.rows.max()) + 1)
        rank = occurrence_rank(cond.rows * len(self.specs) + cond.spec)
        out: list[Transition] = []
        for r in range(int(rank.max()) + 1):
            out.extend(self._step(cond, np.flatnonzero(rank == r)))
        return out

    def _step(self, c: Conditions, sel: np.ndarray) -> list[Transition]:
        a = self._a
        r, k, ts = c.rows[sel], c.spec[sel], c.ts[sel]
        trig = np.minimum(c.trig[sel].astype(np.int64), self._ntiers[k])
        hold = np.minimum(np.maximum(c.hold[sel].astype(np.int64), trig), self._ntiers[k])
        lvl = a["level"][r, k].astype(np.int64)
        g = np.maximum(trig, np.minimum(hold, lvl))
        up, down = g > lvl, g < lvl
        pend_n = a["pend_n"][r, k]
        pn = np.where(up, pend_n + 1, 0)
        tc = self._tcol[k]
        timed = np.flatnonzero(tc >= 0)
        ps = np.full(len(r), NO_TS)  # read only for a timed rule (rms > 0 below)
        ps[timed] = a["pend_since"][r[timed], tc[timed]]
        rms = self._raise_ms[k]
        # a timed rise whose condition went unreported for longer than max(raise_ms, PEND_GAP_MS) restarts here
        seen = ts.copy()  # read only where a timed rise is pending (written then, below)
        seen[timed] = a["pend_seen"][r[timed], tc[timed]]
        stale = up & (pend_n > 0) & (rms > 0) & (ts - seen > np.maximum(rms, PEND_GAP_MS))
        pn = np.where(stale, 1, pn)
        ps = np.where(up & ((pend_n == 0) | stale), ts, ps)
        go_up = up & (self._fast[k, g] | (pn >= self._raise_n[k]) | ((rms > 0) & (ts - ps >= rms)))
        cn = np.where(down, a["clr_n"][r, k] + 1, 0)
        go_down = down & (cn >= self._clear_n[k])
        move = go_up | go_down
        a["pend_n"][r, k] = np.where(move, 0, pn)
        # written only where a timed rise is (still) pending: elsewhere it is never read (pend_n is 0), so a
        # cell that never pends is never written and its page never made resident
        pend = timed[(up & ~move)[timed]]
        a["pend_since"][r[pend], tc[pend]] = ps[pend]
        a["pend_seen"][r[pend], tc[pend]] = ts[pend]
        a["clr_n"][r, k] = np.where(move, 0, cn)
        idx = np.flatnonzero(move)
        if len(idx) == 0:
            return []
        mr, mk, new, old, mts = r[idx], k[idx], g[idx], lvl[idx], ts[idx]
        val, ref, score = c.value[sel][idx], c.ref[sel][idx], c.score[sel][idx]
        a["level"][mr, mk] = new
        held = self._held
        out = []
        for i in range(len(idx)):
            o, n_ = int(old[i]), int(new[i])
            row, si, t_i = int(mr[i]), int(mk[i]), int(mts[i])
            v_i, r_i, s_i = float(val[i]), float(ref[i]), float(score[i])
            key = (row, si)
            raised_at = t_i if o == 0 else held[key][0]
            if n_ == 0:
                held.pop(key, None)
            else:
                held[key] = (raised_at, t_i, v_i, r_i, s_i)
            change: Change = ("raised" if o == 0 else "cleared" if n_ == 0 else
                              "escalated" if n_ > o else "deescalated")
            spec = self.specs[si]
            out.append(Transition(row, si, spec, change, o, n_, v_i, r_i, s_i, t_i, raised_at))
            self.counts[f"{change}_{spec.kind}"] += 1
        return out

    # --- views and persistence --------------------------------------------------------------------------
    def engaged(self, n_rows: int, n_specs: int) -> np.ndarray:
        """Bool per entity row ``< n_rows``: an alarm of one of the first ``n_specs`` rules is active or
        pending (its condition seen, its minimum duration not yet over)."""
        self.ensure(n_rows)
        a = self._a
        return np.asarray(((a["level"][:n_rows, :n_specs] > 0) | (a["pend_n"][:n_rows, :n_specs] > 0)).any(axis=1))

    def engaged_cols(self, n_rows: int, specs: Sequence[int]) -> np.ndarray:
        """Bool (rows ``< n_rows``) x ``specs``: that alarm is active or pending."""
        self.ensure(n_rows)
        a, k = self._a, list(specs)
        return np.asarray((a["level"][:n_rows, k] > 0) | (a["pend_n"][:n_rows, k] > 0))

    def active_block(self, n_rows: int, start: int, stop: int) -> np.ndarray:
        """Bool (rows ``< n_rows``) x (rules ``start`` .. ``stop - 1``): that alarm is active."""
        self.ensure(n_rows)
        return np.asarray(self._a["level"][:n_rows, start:stop] > 0)

    def any_active(self, n_rows: int, specs: Sequence[int]) -> np.ndarray:
        """Bool per entity row ``< n_rows``: an alarm of one of the rules ``specs`` is active."""
        self.ensure(n_rows)
        if not specs:
            return np.zeros(n_rows, np.bool_)
        return np.asarray((self._a["level"][:n_rows, list(specs)] > 0).any(axis=1))

    def active(self) -> list[ActiveAlarm]:
        a = self._a
        rr, kk = np.nonzero(a["level"][: self._cap] > 0)
        out = []
        for r, k in zip(rr.tolist(), kk.tolist(), strict=True):
            raised_at, ts, value, ref, score = self._held[(r, k)]
            out.append(ActiveAlarm(r, k, self.specs[k], int(a["level"][r, k]), value, ref, score, ts, raised_at))
        return out

    def level(self, row: int, key: str) -> int:
        k = self._by_key[key]
        return int(self._a["level"][row, k]) if row < self._cap else 0

    def export(self, name_of: Callable[[int], tuple[str, str]]) -> list[dict[str, Any]]:
        """Active alarms as JSON-able dicts, entities named by ``name_of(row) -> (district, entity)``."""
        out = []
        for x in self.active():
            district, entity = name_of(x.row)
            out.append({"district": district, "entity": entity, "key": x.spec.key, "level": x.level,
                        "raised_at": x.raised_at_ms, "ts": x.ts_ms, "value": _num(x.value),
                        "ref": _num(x.ref), "score": _num(x.score)})
        return out

    def restore(self, entries: Iterable[dict[str, Any]], row_of: Callable[[str, str], int]) -> int:
        """Re-activate saved alarms (unknown rule keys are skipped); returns how many were restored."""
        n = 0
        for e in entries:
            k = self._by_key.get(str(e.get("key")))
            if k is None:
                continue
            r = row_of(str(e["district"]), str(e["entity"]))
            self.ensure(r + 1)
            a = self._a  # ensure() may have grown (replaced) the arrays
            a["level"][r, k] = max(1, min(int(e["level"]), len(self.specs[k].tiers)))
            value, ref, score = (np.nan if (v := e.get(f)) is None else float(v) for f in ("value", "ref", "score"))
            self._held[(r, k)] = (int(e["raised_at"]), int(e["ts"]), value, ref, score)
            n += 1
        return n


def _num(v: float) -> float | None:
    return v if np.isfinite(v) else None
