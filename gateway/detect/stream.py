"""Vectorised streaming anomaly detector for many series at once (pure numpy).

Every series (pole x metric) owns one slot in a set of preallocated numpy arrays; ``update`` takes a batch
of ``(series_idx, value[, t])`` (``t`` in seconds since the epoch) and returns one score per input in
[0, 1], NaN while the series is still warming up or when the input value is NaN.

With ``t`` given, every series also learns a **daily profile**: ``n_season`` (24) hourly bins, each an EW
mean of the winsorised offset of the value from the slow level; the features below judge the value minus
its hour's offset, so a daily rhythm (rush hours, office hours, the tweet cycle) is not an anomaly.

Per sample the detector works in three layers:

1. **Robust features** against learned state: spike (distance from a slow level in units of an EW mean
   absolute deviation), jump (step from the previous value against the typical step), level shift (a fast
   mean against the slow level), range novelty (outside a slowly shrinking min/max envelope), drift
   (two-sided CUSUM of the standardised residual) and stuck sensor (run of identical values against how
   often the series repeats itself). The slow estimators are updated with a winsorised sample, so a spike
   cannot drag the level or blow up the spread.
2. **Anomaly likelihood** (as in Numenta HTM / CAD OSE): the short-term mean of the raw score is compared
   with the long-term mean and spread of the raw score; the Gaussian tail probability of that excess is
   turned into evidence ``-ln Q(z)``.
3. **Refractory shaping**: evidence counts in full only when it exceeds the recent (decaying) peak, so one
   anomaly raises one strong score instead of a long train of them. The output is ``1 - exp(-E/scale)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class DetectorParams:
    """One parameter set for every series (tuned once on NAB, never per series)."""

    warmup: int = 60  # valid samples before a series is scored (NaN until then)
    a_level: float = 0.005  # slow level / spread EW rate
    a_fast: float = 0.5  # fast mean for level shifts
    clip: float = 3.0  # winsorise slow updates at level +- clip * spread
    q_tau: float = 0.999  # high quantile tracked for |x - level|, |x - x_prev|, |fast - level|
    q_rate: float = 0.02
    w_spike: float = 0.06  # raw = 1 - exp(-max_i w_i * u_i), u_i = feature / its quantile
    w_jump: float = 0.08
    w_shift: float = 0.15
    w_stuck: float = 3.0
    stuck_nats: float = 30.0  # a run of repeats less likely than e^-30 counts as stuck
    a_eq: float = 0.005  # how often a series repeats its previous value (frozen during a stuck run)
    w_drift: float = 0.05  # slow level against a much slower anchor, in spreads
    a_anchor: float = 0.0005
    a_short: float = 1.0  # likelihood: short-term mean of raw scores (1 = last raw score)
    a_long: float = 0.003  # likelihood: long-term mean / variance of raw scores
    min_std: float = 0.02
    lik_clip: float = 3.0  # long-term stats learn at most mean + lik_clip * std
    peak_decay: float = 0.995  # refractory peak decays by this factor per sample
    refractory: float = 0.0  # evidence below the peak is multiplied by this
    out_scale: float = 7.0  # score = 1 - exp(-E / out_scale); the NAB-optimal threshold is then ~0.63
    gap_factor: float = 4.0  # a step longer than gap_factor * typical step is a gap
    n_season: int = 24  # bins of a daily profile (0 = none); used when t (seconds) is given
    a_season: float = 0.05  # EW rate of a bin (per visit of that bin)
    a_season_warm: float = 0.125  # faster while the series warms up
    season_s: float = 86_400.0


_F32_FIELDS = (
    "x_prev", "level", "spread", "fast", "q_dev", "q_jump", "q_shift", "run", "p_eq",
    "r_short", "r_mean", "r_var", "peak", "dt", "anchor",
)  # fmt: skip


class StreamDetector:
    """Streaming detector over ``capacity`` series slots (grows by doubling)."""

    name = "lampwatch"

    def __init__(self, params: DetectorParams | None = None, capacity: int = 1024) -> None:
        self.params = params or DetectorParams()
        self._cap = 0
        self._alloc(max(int(capacity), 1))

    # ------------------------------------------------------------------ state
    def _alloc(self, cap: int) -> None:
        f = np.zeros((cap, len(_F32_FIELDS)), F32)  # one row per series: one gather, one scatter
        n = np.zeros(cap, np.int32)
        t_prev = np.full(cap, np.nan, np.float64)
        if self._cap:
            f[: self._cap], n[: self._cap], t_prev[: self._cap] = self._f, self._n, self._t_prev
        prof = np.zeros((cap, max(self.params.n_season, 1)), F32)
        if self._cap:
            prof[: self._cap] = self._prof
        self._f, self._n, self._t_prev, self._cap, self._prof = f, n, t_prev, cap, prof

    @property
    def capacity(self) -> int:
        return self._cap

    def ensure_capacity(self, n: int) -> None:
        cap = self._cap
        while cap < n:
            cap *= 2
        if cap != self._cap:
            self._alloc(cap)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {k: self._f[:, j].copy() for j, k in enumerate(_F32_FIELDS)}
        out["n"], out["t_prev"], out["season"] = self._n.copy(), self._t_prev.copy(), self._prof.copy()
        out["params"] = np.array(repr(sorted(asdict(self.params).items())))
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        expected = repr(sorted(asdict(self.params).items()))
        if "params" in state and str(state["params"]) != expected:
            raise ValueError("state was saved with different detector parameters")
        self._f = np.stack([np.asarray(state[k], F32) for k in _F32_FIELDS], axis=1)
        self._n = np.array(state["n"], np.int32)
        self._t_prev = np.array(state["t_prev"], np.float64)
        self._cap = len(self._n)
        prof = np.zeros((self._cap, max(self.params.n_season, 1)), F32)
        if "season" in state:
            prof[:] = np.asarray(state["season"], F32)
        self._prof = prof

    @property
    def warmup_samples(self) -> int:
        """Valid samples a series needs before its scores are known (earlier ones are NaN)."""
        return self.params.warmup

    def bytes_per_series(self) -> int:
        return (self._f.itemsize * self._f.shape[1] + self._n.itemsize + self._t_prev.itemsize
                + self._prof.itemsize * self._prof.shape[1])

    # ------------------------------------------------------------------ update
    def update(self, series_idx: np.ndarray, values: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(series_idx, dtype=np.int64).ravel()
        x = np.asarray(values, dtype=F32).ravel()
        tt = None if t is None else np.asarray(t, dtype=np.float64).ravel()
        if idx.shape != x.shape or (tt is not None and tt.shape != x.shape):
            raise ValueError("series_idx, values and t must have the same length")
        if len(idx) == 0:
            return np.empty(0, np.float64)
        if idx.min() < 0:
            raise ValueError("series_idx must be >= 0")
        self.ensure_capacity(int(idx.max()) + 1)
        rank = _occurrence_rank(idx)
        if rank is None:
            return self._step(idx, x, tt)
        out = np.empty(len(idx), np.float64)
        for r in range(int(rank.max()) + 1):
            sel = np.flatnonzero(rank == r)
            out[sel] = self._step(idx[sel], x[sel], None if tt is None else tt[sel])
        return out

    def _step(self, idx: np.ndarray, x: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        """One sample for each of ``idx`` (all distinct)."""
        ok = np.isfinite(x)
        if not ok.all():  # unknown input: NaN out, state untouched
            out = np.full(len(idx), np.nan)
            sel = np.flatnonzero(ok)
            if len(sel):
                out[sel] = self._step(idx[sel], x[sel], None if t is None else t[sel])
            return out
        p = self.params
        block = self._f[idx]
        g = {k: block[:, j] for j, k in enumerate(_F32_FIELDS)}
        n1 = self._n[idx] + 1
        first = n1 == 1
        x_prev = np.where(first, x, g["x_prev"])
        level = np.where(first, x, g["level"])
        fast = np.where(first, x, g["fast"])
        gap_w, fast = self._gaps(idx, t, g, level, fast)
        x_raw = x
        if p.n_season and t is not None:  # daily profile: judge x against level + its hour's offset
            tt = np.where(np.isfinite(t), t, 0.0)
            h = np.clip((np.mod(tt, p.season_s) * (p.n_season / p.season_s)).astype(np.int64), 0, p.n_season - 1)
            seas = self._prof[idx, h]
            x = x - seas

        # 1. features: distance from level, step, fast-vs-slow shift, each against its own learned
        #    high quantile; stuck = improbably long run of identical values ----------------------
        eps = F32(1e-6) * (np.abs(level) + F32(1e-3))
        fast = fast + F32(p.a_fast) * (x - fast)
        v = (np.abs(x - level), np.abs(x_raw - x_prev) * gap_w, np.abs(fast - level))
        q = (g["q_dev"], g["q_jump"], g["q_shift"])
        w = (F32(p.w_spike), F32(p.w_jump), F32(p.w_shift))
        raw_z = np.maximum.reduce([vi / np.maximum(qi, eps) * wi for vi, qi, wi in zip(v, q, w, strict=True)])
        same = x_raw == x_prev
        run = np.where(same, g["run"] + 1, 0).astype(F32)
        u_stuck = run * -np.log(np.clip(g["p_eq"], F32(0.01), F32(0.999))) / F32(p.stuck_nats)
        raw_z = np.maximum(raw_z, np.where(u_stuck > 1, u_stuck * F32(p.w_stuck), 0))
        anchor = np.where(first, x, g["anchor"])
        sp = np.maximum(g["spread"], eps)
        raw_z = np.maximum(raw_z, np.abs(level - anchor) / sp * F32(p.w_drift))
        raw = F32(1) - np.exp(-raw_z)

        # 2. anomaly likelihood: short-term mean of raw against its long-term distribution ---------
        r_short = g["r_short"] + p.a_short * (raw - g["r_short"])
        r_mean, r_var = g["r_mean"], g["r_var"]
        std = np.sqrt(r_var) + F32(p.min_std)
        evidence = _neg_log_tail((r_short - r_mean) / std)

        # 3. refractory: only evidence above the decaying recent peak counts in full -------------
        peak = g["peak"] * F32(p.peak_decay)
        shaped = np.where(evidence > peak, evidence, evidence * p.refractory)
        warm = n1 > p.warmup
        score = np.where(warm, 1.0 - np.exp(shaped.astype(np.float64) / -p.out_scale), np.nan)

        # 4. learn, winsorised so that anomalies do not poison the state ---------------------------
        inv_n = F32(1) / n1.astype(F32)  # running-mean rates until the EW rate takes over
        a = np.maximum(inv_n, F32(p.a_level))
        c = F32(p.clip)
        xw = np.clip(x, level - c * sp, level + c * sp)
        ae = np.maximum(inv_n, F32(p.a_eq))
        if p.n_season and t is not None:  # the bin learns the winsorised offset from the slow level
            dev = np.clip(x_raw - level, -c * sp, c * sp)
            rate = np.where(warm, F32(p.a_season), F32(p.a_season_warm))
            self._prof[idx, h] = seas + rate * (dev - seas)
        upd = {
            "x_prev": x_raw,
            "level": np.where(first, x, level + a * (xw - level)),
            "spread": np.where(first, 0, g["spread"] + a * (np.minimum(v[0], c * sp) - g["spread"])),
            "fast": fast,
            "run": run,
            "p_eq": np.where(u_stuck > 0.5, g["p_eq"], g["p_eq"] + ae * (same.astype(F32) - g["p_eq"])),
            "anchor": anchor + F32(p.a_anchor) * (level - anchor),
            "r_short": r_short,
            "peak": np.where(warm, np.maximum(peak, evidence), 0),
        }
        qa = np.maximum(a, F32(p.q_rate))
        up, down = F32(1) + qa * F32(p.q_tau), F32(1) - qa * F32(1 - p.q_tau)
        for name, vi, qi in zip(("q_dev", "q_jump", "q_shift"), v, q, strict=True):
            learned = np.where(qi > 0, qi * np.where(vi > qi, up, down), vi)
            upd[name] = np.where(first, 0, learned)
        al = np.maximum(inv_n, F32(p.a_long))
        d_r = np.minimum(r_short, r_mean + F32(p.lik_clip) * std) - r_mean
        upd["r_mean"] = r_mean + al * d_r
        upd["r_var"] = (1 - al) * (r_var + al * d_r * d_r)
        self._n[idx] = n1
        for j, k in enumerate(_F32_FIELDS):
            if k in upd:
                block[:, j] = upd[k]
        self._f[idx] = block
        return score

    def _gaps(
        self,
        idx: np.ndarray,
        t: np.ndarray | None,
        g: dict[str, np.ndarray],
        level: np.ndarray,
        fast: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track the typical time step; a long pause discounts the next jump and forgets the fast mean."""
        if t is None:
            return np.ones(len(idx), F32), fast
        t_prev = self._t_prev[idx]
        with np.errstate(invalid="ignore"):
            dt = (t - t_prev).astype(F32)
        has = np.isfinite(dt) & (dt > 0)
        typ = g["dt"]
        is_gap = has & (typ > 0) & (dt > F32(self.params.gap_factor) * typ)
        gap_w = np.where(is_gap, np.sqrt(typ / np.where(is_gap, dt, 1)), 1).astype(F32)
        step = np.where(typ > 0, typ + F32(0.05) * (np.minimum(dt, 3 * typ) - typ), dt)
        g["dt"][:] = np.where(has, step, typ)  # a view into the gathered block: written back with it
        self._t_prev[idx] = np.where(np.isfinite(t), t, t_prev)
        return gap_w, np.where(is_gap, level, fast)


def _occurrence_rank(idx: np.ndarray) -> np.ndarray | None:
    """None if all indices are distinct, else the 0-based occurrence number of each element."""
    if len(idx) < 2:
        return None
    mark = np.empty(int(idx.max()) + 1, np.int64)
    pos = np.arange(len(idx))
    mark[idx] = pos
    if np.array_equal(mark[idx], pos):  # a duplicate loses its write to another position
        return None
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    starts = np.r_[True, sidx[1:] != sidx[:-1]]
    first_pos = np.maximum.accumulate(np.where(starts, np.arange(len(idx)), 0))
    rank = np.empty(len(idx), np.int64)
    rank[order] = np.arange(len(idx)) - first_pos
    return rank


# Numerical-Recipes style Chebyshev fit of erfc (fractional error < 1.2e-7), used in log space.
_ERFC_C = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)  # fmt: skip


def _neg_log_tail(z: np.ndarray) -> np.ndarray:
    """``-ln Q(z)`` for the standard normal upper tail, computed without underflow; 0 for z <= 0."""
    zp = np.maximum(z, 0) * F32(np.sqrt(0.5))
    t = F32(1) / (F32(1) + F32(0.5) * zp)
    poly = np.full_like(zp, _ERFC_C[-1])
    for c in _ERFC_C[-2::-1]:
        poly = poly * t + F32(c)
    log_erfc = np.log(t) - zp * zp + poly
    return np.maximum(-log_erfc, 0)  # = -ln Q(z) - ln 2, i.e. 0 at z = 0
