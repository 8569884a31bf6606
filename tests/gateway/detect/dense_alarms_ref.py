"""Reference for tests: the alarm policy with every field a dense ``(rows, specs)`` array.

Kept verbatim (bar its name) from before ``gateway.detect.alarms.AlarmPolicy`` moved the fields of active alarms
(raised_at, ts, value, ref, score) into a dict, so that a test can show both decide the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from gateway.detect.alarms import PEND_GAP_MS, ActiveAlarm, Change, Transition, _num
from gateway.detect.rules import AlarmSpec, Conditions
from gateway.detect.state import NO_TS, occurrence_rank

__all__ = ["DenseAlarmPolicy", "_num"]


class DenseAlarmPolicy:
    """The policy as it was before its per-alarm fields went sparse (commit dd5d0b1): every field dense."""

    _I8 = ("level",)
    _I32 = ("pend_n", "clr_n")
    _I64 = ("pend_since", "pend_seen", "raised_at", "ts")
    _F64 = ("value", "ref", "score")

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
        self._cap = 0
        self._a: dict[str, np.ndarray] = {}
        self._alloc(max(int(capacity), 1))
        self.counts: Counter[str] = Counter()  # "<change>_<kind>", e.g. raised_leakage

    def _alloc(self, cap: int) -> None:
        k = len(self.specs)
        fresh: dict[str, np.ndarray] = {}
        for names, dt, fill in ((self._I8, np.int8, 0), (self._I32, np.int32, 0),
                                (self._I64, np.int64, NO_TS), (self._F64, np.float64, np.nan)):
            for n in names:
                fresh[n] = np.full((cap, k), fill, dt)
                if n in self._a:
                    fresh[n][: self._cap] = self._a[n]
        self._a, self._cap = fresh, cap

    def ensure(self, n_rows: int) -> None:
        cap = self._cap
        while cap < n_rows:
            cap *= 2
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
        rms = self._raise_ms[k]
        # a timed rise unreported for longer than max(raise_ms, PEND_GAP_MS) restarts (the policy's rule)
        seen = np.where(pend_n > 0, a["pend_seen"][r, k], ts)
        stale = up & (pend_n > 0) & (rms > 0) & (ts - seen > np.maximum(rms, PEND_GAP_MS))
        pn = np.where(stale, 1, pn)
        ps = np.where(up & ((pend_n == 0) | stale), ts, a["pend_since"][r, k])
        go_up = up & (self._fast[k, g] | (pn >= self._raise_n[k]) | ((rms > 0) & (ts - ps >= rms)))
        cn = np.where(down, a["clr_n"][r, k] + 1, 0)
        go_down = down & (cn >= self._clear_n[k])
        move = go_up | go_down
        a["pend_n"][r, k] = np.where(move, 0, pn)
        a["pend_since"][r, k] = np.where(up & ~move, ps, NO_TS)
        a["pend_seen"][r, k] = np.where(up & ~move, ts, NO_TS)
        a["clr_n"][r, k] = np.where(move, 0, cn)
        idx = np.flatnonzero(move)
        if len(idx) == 0:
            return []
        mr, mk, new, old, mts = r[idx], k[idx], g[idx], lvl[idx], ts[idx]
        val, ref, score = c.value[sel][idx], c.ref[sel][idx], c.score[sel][idx]
        a["level"][mr, mk] = new
        raised_at = np.where(old == 0, mts, a["raised_at"][mr, mk])
        a["raised_at"][mr, mk] = np.where(new == 0, NO_TS, raised_at)
        a["ts"][mr, mk] = mts
        a["value"][mr, mk] = val
        a["ref"][mr, mk] = ref
        a["score"][mr, mk] = score
        out = []
        for i in range(len(idx)):
            o, n_ = int(old[i]), int(new[i])
            change: Change = ("raised" if o == 0 else "cleared" if n_ == 0 else
                              "escalated" if n_ > o else "deescalated")
            spec = self.specs[int(mk[i])]
            out.append(Transition(int(mr[i]), int(mk[i]), spec, change, o, n_, float(val[i]),
                                  float(ref[i]), float(score[i]), int(mts[i]), int(raised_at[i])))
            self.counts[f"{change}_{spec.kind}"] += 1
        return out

    # --- views and persistence --------------------------------------------------------------------------
    def engaged(self, n_rows: int, n_specs: int) -> np.ndarray:
        """Bool per entity row ``< n_rows``: an alarm of one of the first ``n_specs`` rules is active or
        pending (its condition seen, its minimum duration not yet over)."""
        self.ensure(n_rows)
        a = self._a
        return np.asarray(((a["level"][:n_rows, :n_specs] > 0) | (a["pend_n"][:n_rows, :n_specs] > 0)).any(axis=1))

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
        return [ActiveAlarm(int(r), int(k), self.specs[int(k)], int(a["level"][r, k]),
                            float(a["value"][r, k]), float(a["ref"][r, k]), float(a["score"][r, k]),
                            int(a["ts"][r, k]), int(a["raised_at"][r, k]))
                for r, k in zip(rr, kk, strict=True)]

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
            a["raised_at"][r, k] = int(e["raised_at"])
            a["ts"][r, k] = int(e["ts"])
            for f in ("value", "ref", "score"):
                v = e.get(f)
                a[f][r, k] = np.nan if v is None else float(v)
            n += 1
        return n
