"""Vectorised streaming anomaly detector for many series at once (pure numpy).

Every series (pole x metric) owns one row of a preallocated numpy array; ``update`` takes a batch
of ``(series_idx, value[, t])`` (``t`` in seconds since the epoch) and returns one score per input in
[0, 1], NaN while the series is still warming up or when the input value is NaN.

With ``t`` given, every series also learns a **daily profile**: ``n_season`` (24) hourly bins, and as many
again for Saturdays and Sundays (UTC; ``weekend``), each an EW mean of the winsorised offset of the value
from the slow level; the smoothed views below judge the value minus its hour's offset, so a daily or weekly
rhythm (rush hours, office hours, the tweet cycle) is not an anomaly. A bin's first visit starts from the
same hour of the other kind of day (a first weekend is judged against the weekdays' rhythm, not none). The
bins are float16 (11 significant bits, as many bytes as 24 float32 bins) in units of a per-series power of
two that grows when a bin would leave float16's range.

The raw signal is **range novelty in several views** (the "has this series ever looked like this?" question
that CAD OSE / KNN-CAD ask with their context sketches, here with two floats per view):

* ``x``: the value itself;
* ``d``: the de-seasoned value (the value minus its hour's offset), so a value usual for the day but not
  for this hour is new territory too;
* ``sm`` / ``sm2``: a fast (``a_sm``) and a slow (``a_sm2``) EW mean of the de-seasoned value, so a level
  shift or a drift that no single sample shows is still new territory for the mean;
* ``vol``: an EW mean of ``|step|`` (a noisy series turning quiet or stuck, a calm one turning wild);
* ``jump``: one step (gap-discounted) larger than any step seen;
* ``stuck``: a run of identical values longer than the series' own repeat rate makes likely
  (``stuck_nats``), scored like a volatility exceedance.

Each view keeps a min/max **envelope** that expands at once to every value it sees and shrinks slowly
(``a_env`` per sample) toward its centre, so its memory is ~``1/a_env`` samples. A value outside an
envelope gives evidence ``nov0 + w * u`` nats, ``u`` = the excess in envelope widths; a series' evidence is
the maximum over its views, ramped in over its first ``n_conf`` samples (an envelope learnt from a few
samples is not yet a reference).

**Fire once** (NAB rewards the earliest detection in a window and charges every false one): evidence counts
only above a decaying peak of the recent evidence (``peak_decay``), and after evidence reaches ``e_fire``
(the operating point) it is held below ``e_fire`` for ``ref_rows`` samples. Evidence >= ``e_pass`` (60: the
gateway's raise level) is never held by that hold, so an alarm is never delayed by a small earlier blip; once
it has passed, everything is held for ``strong_rows`` samples (5, well inside the gateway's ``clear_n`` of 10),
so lasting strong evidence keeps an alarm raised with a score >= 0.9998 every 6th sample instead of
charging NAB a false detection on every sample after the window. The output is
``1 - exp(-E / out_scale)``: a bare envelope exceedance scores 0.44, the NAB-optimal threshold is ~0.48,
and the gateway's 0.9998 needs ~60 nats (an excess of ~3.5 envelope widths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from gateway.detect.state import Reserve, doubled

F32 = np.float32
#: Series per vectorised step (see StreamDetector._chunks): ~64 KB per float32 temporary.
CHUNK = 16_384


@dataclass(frozen=True)
class DetectorParams:
    """One parameter set for every series (tuned once on NAB, never per series)."""

    warmup: int = 60  # valid samples before a series is scored (NaN until then)
    a_level: float = 0.005  # slow level / spread EW rate (centre of the envelopes, profile offsets)
    clip: float = 3.0  # winsorise slow updates at level +- clip * spread
    a_sm: float = 0.1  # fast smoothed view
    a_sm2: float = 0.02  # slow smoothed view
    a_vol: float = 0.03  # volatility view: EW mean of |step|
    a_env: float = 0.00007  # envelopes shrink toward their centre by this share per sample
    nov0: float = 4.0  # nats for any exceedance of an envelope
    w_x: float = 22.0  # nats per envelope width beyond it, per view (< 0 = view off)
    w_d: float = 16.0  # de-seasoned value
    w_s: float = 16.0
    w_s2: float = 16.0
    w_v: float = 16.0
    w_j: float = 4.0  # jump view: per unit of the step envelope
    j_centre: float = 3.0  # the step envelope shrinks toward j_centre * volatility
    stuck_nats: float = 60.0  # a run of repeated values less likely than e^-60 is new territory too
    a_eq: float = 0.005  # how often a series repeats its previous value (frozen during a stuck run)
    n_conf: float = 500.0  # evidence ramps in linearly over the first n_conf samples
    peak_decay: float = 0.98  # refractory peak decays by this factor per sample
    refractory: float = 0.0  # evidence below the peak is multiplied by this
    e_fire: float = 4.56  # after evidence >= e_fire (nats) ...
    ref_rows: float = 30.0  # ... evidence is held below e_fire for this many samples
    e_pass: float = 60.0  # evidence >= e_pass is never held: strong evidence (the gateway raises an alarm at
    # ~60) must not wait out a hold started by a small blip.
    strong_rows: float = 5.0  # ... and after it passed, all evidence is held for this many samples (must stay
    # below the gateway's clear_n = 10, so that a lasting strong condition keeps its alarm raised)
    out_scale: float = 7.0  # score = 1 - exp(-E / out_scale)
    gap_factor: float = 4.0  # a step longer than gap_factor * typical step is a gap
    n_season: int = 24  # bins of a daily profile (0 = none); used when t (seconds) is given
    weekend: bool = True  # Saturdays and Sundays (UTC) learn a daily profile of their own
    a_season: float = 0.05  # EW rate of a bin (per visit of that bin)
    a_season_warm: float = 0.125  # faster while the series warms up
    season_s: float = 86_400.0


_F32_FIELDS = (
    "x_prev", "level", "spread", "dt", "sm", "sm2", "vol", "hi", "lo", "hi_s", "lo_s", "hi_s2", "lo_s2",
    "hi_v", "lo_v", "hi_j", "peak", "since", "run", "p_eq", "hi_d", "lo_d", "since_strong", "season_scale",
)  # fmt: skip


class StreamDetector:
    """Streaming detector over ``capacity`` series slots (grows by doubling)."""

    name = "lampwatch"

    _s: np.ndarray  # (capacity, width) float32: one row per series, everything it owns (see _layout)
    _rows: np.ndarray  # (capacity,) the same rows as opaque items: what one gather/scatter moves

    def __init__(self, params: DetectorParams | None = None, capacity: int = 1024) -> None:
        self.params = params or DetectorParams()
        p = self.params
        self._nb = max(p.n_season, 1) * (2 if p.weekend and p.n_season else 1)  # profile bins
        self._pdt = np.dtype(PROFILE_DTYPE)
        cells = -(-self._nb * self._pdt.itemsize // 4)
        self._width = _P0 + cells + (_P0 + cells) % 2  # even: the float64 t_prev stays 8-aligned
        self._cap = 0
        self._reserve = Reserve()
        self._alloc(max(int(capacity), 1))

    # ------------------------------------------------------------------ state
    # A row: t_prev (float64, in cells 0-1), n (int32, cell 2), the _F32_FIELDS (cells 3..), the daily profile
    # (PROFILE_DTYPE bins from cell _P0), padding to an even width. One series' state is one row, so an update
    # moves one gather and one scatter of rows, and the profile bin it needs is already in that row.
    def _alloc(self, cap: int) -> None:
        # zeros, which the kernel backs only when a series first writes its row: a fresh row (n == 0) gets
        # its NaNs (t_prev, every profile bin "never visited") at its first sample (``_step``). NaN-filling
        # here made every slot resident at once, the spare ones too (68 MB for 344,064 slots). The rows grow in
        # place (Reserve): a doubling copies nothing, and its spare rows are address space only
        self._set(self._reserve.grow(self._s if self._cap else None, self._cap, cap, (self._width,), np.dtype(F32),
                                     0))

    def _set(self, s: np.ndarray) -> None:
        self._s = np.ascontiguousarray(s)
        self._cap = len(self._s)
        self._rows = self._s.view(np.dtype((np.void, self._width * 4))).reshape(-1)

    def _prof(self, s: np.ndarray) -> np.ndarray:
        """The rows' profile bins (PROFILE_DTYPE, in units of the row's season_scale; NaN: never visited)."""
        return s[:, _P0:].view(self._pdt)[:, : self._nb]

    @property
    def capacity(self) -> int:
        return self._cap

    def ensure_capacity(self, n: int) -> None:
        cap = doubled(self._cap, n)
        if cap != self._cap:
            self._alloc(cap)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every per-series array (the fields, ``n``, ``t_prev``, ``season``: the profile bins as
        stored, float16 in units of ``season_scale``, NaN for a bin never visited) and the parameters."""
        s = self._s
        out: dict[str, np.ndarray] = {k: s[:, _F0 + j].copy() for j, k in enumerate(_F32_FIELDS)}
        out["n"], out["t_prev"] = _n(s).copy(), _t_prev(s).copy()
        out["season"] = self._prof(s).copy()  # as stored: PROFILE_DTYPE, in units of the row's season_scale
        out["params"] = np.array(repr(sorted(asdict(self.params).items())))
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        expected = repr(sorted(asdict(self.params).items()))
        if "params" in state and str(state["params"]) != expected:
            raise ValueError("state was saved with different detector parameters")
        cap = len(state["n"])
        s = np.zeros((cap, self._width), F32)
        for j, k in enumerate(_F32_FIELDS):
            s[:, _F0 + j] = np.asarray(state[k], F32)
        _n(s)[:] = np.asarray(state["n"], np.int32)
        _t_prev(s)[:] = np.asarray(state["t_prev"], np.float64)
        if "season" in state:
            self._prof(s)[:] = np.asarray(state["season"], self._pdt)
        else:
            self._prof(s)[:] = np.nan
        self._reserve = Reserve()  # the loaded rows are a plain array: a reservation is made when they grow
        self._set(s)

    # --- rows as stored (the state saver's format: one row per series, copied a slice at a time) ----------
    def row_layout(self) -> str:
        """What a stored row is: rows saved under another layout are refused by :meth:`load_rows`."""
        return repr(("cells", self._width, "t_prev f8 0-1, n i4 2", _F32_FIELDS, "profile", self._nb,
                     self._pdt.str, _P0))

    def params_key(self) -> str:
        return repr(sorted(asdict(self.params).items()))

    def copy_rows(self, start: int, stop: int) -> np.ndarray:
        """A copy of the rows of series ``start .. stop - 1`` (fewer past the capacity), in the stored layout."""
        return self._s[start:stop].copy()

    def load_rows(self, rows: np.ndarray, layout: str, params: str) -> None:
        """Rows saved by :meth:`copy_rows` (under :meth:`row_layout` and :meth:`params_key`)."""
        if params != self.params_key():
            raise ValueError("state was saved with different detector parameters")
        if layout != self.row_layout():
            raise ValueError("state was saved with another row layout")
        s = np.asarray(rows, F32)
        if s.ndim != 2 or s.shape[1] != self._width:
            raise ValueError("stored rows of the wrong width")
        self._reserve = Reserve()
        self._set(np.array(s, F32))

    @property
    def warmup_samples(self) -> int:
        """Valid samples a series needs before its scores are known (earlier ones are NaN)."""
        return self.params.warmup

    def bytes_per_series(self) -> int:
        return int(self._s.itemsize * self._s.shape[1])

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
            return self._chunks(idx, x, tt)
        out = np.empty(len(idx), np.float64)
        for r in range(int(rank.max()) + 1):
            sel = np.flatnonzero(rank == r)
            out[sel] = self._chunks(idx[sel], x[sel], None if tt is None else tt[sel])
        return out

    def _chunks(self, idx: np.ndarray, x: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        """``_step`` over slices of at most CHUNK distinct series: the temporaries of one slice stay in the
        core's cache between operations (each series' row is independent of the others')."""
        if len(idx) <= CHUNK:
            return self._step(idx, x, t)
        out = np.empty(len(idx), np.float64)
        for a in range(0, len(idx), CHUNK):
            b = a + CHUNK
            out[a:b] = self._step(idx[a:b], x[a:b], None if t is None else t[a:b])
        return out

    def _step(self, idx: np.ndarray, x: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        """One sample for each of ``idx`` (all distinct).

        Written for throughput (see ``bench/bench_detect.py``): one gather and one scatter of the state rows
        (as opaque ``void`` rows, which numpy moves ~5x faster than float rows), in-place arithmetic, masks
        applied only to the few rows that need them (a series' first samples, a time gap), and rates used as
        scalars once every series in the batch is past the samples where ``1/n`` exceeds them. The decisions
        are bit for bit those of the plain formulas in the comments.
        """
        ok = np.isfinite(x)
        if not ok.all():  # unknown input: NaN out, state untouched
            out = np.full(len(idx), np.nan)
            sel = np.flatnonzero(ok)
            if len(sel):
                out[sel] = self._step(idx[sel], x[sel], None if t is None else t[sel])
            return out
        p = self.params
        rows = np.take(self._rows, idx)  # (n,) void rows: one gather ...
        block = rows.view(F32).reshape(len(idx), self._width)  # ... viewed as (n, width) float32
        g = {k: block[:, _F0 + j] for j, k in enumerate(_F32_FIELDS)}
        n_col = _n(block)
        n1 = n_col + 1
        n_min = int(n1.min())
        kf = np.flatnonzero(n1 == 1) if n_min == 1 else None  # a series' first sample
        if kf is not None:  # a fresh row: the "never" marks its allocation left out (see _alloc)
            _t_prev(block)[kf] = np.nan
            self._prof(block)[kf] = np.nan
        ke = np.flatnonzero(n1 <= 20) if n_min <= 20 else None  # early: no volatility/step envelopes yet
        all_warm = n_min > p.warmup
        warm = None if all_warm else n1 > p.warmup
        x_raw = x
        x_prev, level = g["x_prev"], g["level"]
        if kf is not None:  # where(first, x, state)
            x_prev, level = x_prev.copy(), level.copy()
            x_prev[kf], level[kf] = x[kf], x[kf]
        gap_w = self._gaps(block, t, g)
        flat = None
        if p.n_season and t is not None:  # daily profile: judge x against level + its hour's offset
            tt = t if np.isfinite(t).all() else np.where(np.isfinite(t), t, 0.0)
            hf = _mod(tt, p.season_s)
            hf *= p.n_season / p.season_s
            h = hf.astype(np.int64)
            np.clip(h, 0, p.n_season - 1, out=h)
            if p.weekend:  # 1970-01-01 was a Thursday: Saturday and Sunday are days 5 and 6 from a Monday
                h += p.n_season * (_mod(tt + 3.0 * p.season_s, 7.0 * p.season_s) >= 5.0 * p.season_s)
            per_row = self._width * 4 // self._pdt.itemsize
            flat = np.arange(_P0 * 4 // self._pdt.itemsize, len(idx) * per_row, per_row)  # the bin in the block
            flat += h
            pflat = block.reshape(-1).view(self._pdt)
            scale = _scale(g["season_scale"])
            if kf is not None:  # a new series: bins up to ~|x| fit its first scale
                scale[kf] = _first_scale(x_raw[kf])
            seas = np.take(pflat, flat).astype(F32)
            unseen = np.isnan(seas)
            if unseen.any():  # a bin's first visit: start from the same hour of the other kind of day, or 0
                u_rows = np.flatnonzero(unseen)
                if p.weekend:
                    other = h[u_rows] + np.where(h[u_rows] >= p.n_season, -p.n_season, p.n_season)
                    seas[u_rows] = np.take(pflat, flat[u_rows] - h[u_rows] + other)
                    seas[u_rows[np.isnan(seas[u_rows])]] = 0
                else:
                    seas[u_rows] = 0
            seas *= scale
            x = x - seas
        eps = np.abs(level)  # eps = 1e-6 * (|level| + 1e-3)
        eps += F32(1e-3)
        eps *= F32(1e-6)
        sp = np.maximum(g["spread"], eps)

        # 1. views of the series -------------------------------------------------------------------
        step = x_raw - x_prev  # |x - x_prev| * gap weight
        np.abs(step, out=step)
        if gap_w is not None:
            step *= gap_w
        sm = _ew(g["sm"], x, F32(p.a_sm))
        sm2 = _ew(g["sm2"], x, F32(p.a_sm2))
        vol = _ew(g["vol"], step, _rate(n1 - 1, n_min - 1, p.a_vol, floor=1))  # unbiased from the start
        if kf is not None:
            sm[kf], sm2[kf], vol[kf] = x[kf], x[kf], 0

        # 2. novelty: excess beyond each view's slowly shrinking min/max envelope, in nats ---------
        # evidence = max over views with u > 0 of (nov0 + w * u) = nov0 + max(w * u) if that is > 0
        ae = F32(p.a_env)
        centre_x = x_raw - x  # level + this hour's offset
        centre_x += level
        wu: np.ndarray | None = None
        views = (
            ("hi", "lo", x_raw, centre_x, p.w_x, kf),
            ("hi_d", "lo_d", x, level, p.w_d, kf),
            ("hi_s", "lo_s", sm, level, p.w_s, kf),
            ("hi_s2", "lo_s2", sm2, level, p.w_s2, kf),
            ("hi_v", "lo_v", vol, None, p.w_v, ke),  # centre: the envelope's middle
        )
        for kh, kl, val, centre, w, reset in views:
            if w < 0:
                continue
            hi, lo = g[kh], g[kl]
            if reset is not None:
                hi, lo = hi.copy(), lo.copy()
                hi[reset], lo[reset] = val[reset], val[reset]
            u = val - hi  # u = max(val - hi, lo - val) / max(hi - lo, eps)
            np.maximum(u, lo - val, out=u)
            width = hi - lo
            np.maximum(width, eps, out=width)
            u /= width
            wu = _max_weighted(wu, u, w)
            hi = np.maximum(hi, val)
            lo = np.minimum(lo, val)
            if centre is None:
                centre = hi + lo
                centre *= F32(0.5)
            shrink = hi - centre  # hi - a_env * max(hi - centre, 0)
            np.maximum(shrink, 0, out=shrink)
            shrink *= ae
            np.subtract(hi, shrink, out=block[:, _COL[kh]])
            shrink = np.subtract(centre, lo, out=shrink)  # lo + a_env * max(centre - lo, 0)
            np.maximum(shrink, 0, out=shrink)
            shrink *= ae
            np.add(lo, shrink, out=block[:, _COL[kl]])
        if p.w_j >= 0:
            hj = g["hi_j"]
            if ke is not None:
                hj = hj.copy()
                hj[ke] = step[ke]
            u = step - hj
            u /= np.maximum(hj, eps)
            wu = _max_weighted(wu, u, p.w_j)
            hj = np.maximum(hj, step)
            shrink = F32(p.j_centre) * vol  # hj - a_env * max(hj - j_centre * vol, 0)
            np.subtract(hj, shrink, out=shrink)
            np.maximum(shrink, 0, out=shrink)
            shrink *= ae
            np.subtract(hj, shrink, out=block[:, _COL["hi_j"]])
        # a stuck sensor: a run of identical values against how often this series repeats itself
        same = x_raw == x_prev
        run = g["run"] + 1  # where(same, run + 1, 0)
        run *= same
        u_stuck = np.clip(g["p_eq"], F32(0.01), F32(0.999))  # run * -ln(p_eq) / stuck_nats - 1
        np.log(u_stuck, out=u_stuck)
        np.negative(u_stuck, out=u_stuck)
        u_stuck *= run
        u_stuck /= F32(p.stuck_nats)
        u_stuck -= F32(1)
        freeze = u_stuck > -0.5  # p_eq is not learnt during a stuck run
        extra = None
        if p.w_v > 0:
            wu = _max_weighted(wu, u_stuck, p.w_v)
        else:  # a weight <= 0 breaks the max-of-products shortcut: the plain formula
            extra = np.where(u_stuck > 0, F32(p.nov0) + F32(p.w_v) * u_stuck, 0)
        block[:, _COL["run"]] = run
        p_eq = np.subtract(same, g["p_eq"], dtype=F32)  # p_eq + a_eq * (same - p_eq), unless frozen
        p_eq *= _rate(n1, n_min, p.a_eq)
        p_eq += g["p_eq"]
        np.copyto(p_eq, g["p_eq"], where=freeze)
        block[:, _COL["p_eq"]] = p_eq
        if wu is None:
            evidence = np.zeros(len(idx), F32)
        else:
            evidence = np.where(wu > 0, wu + F32(p.nov0), F32(0))
        if extra is not None:
            np.maximum(evidence, extra, out=evidence)
        if n_min < p.n_conf:  # ramped in over the first n_conf samples
            evidence *= np.minimum(n1.astype(F32) / F32(max(p.n_conf, 1.0)), F32(1))

        # 3. fire once: evidence counts above the decaying recent peak, then is held for a while ---
        peak = g["peak"] * F32(p.peak_decay)
        shaped = evidence * F32(p.refractory)  # where(evidence > peak, evidence, evidence * refractory)
        np.copyto(shaped, evidence, where=evidence > peak)
        since = g["since"] + 1
        since_strong = g["since_strong"] + 1
        held = since <= F32(p.ref_rows)
        held &= shaped < F32(p.e_pass)
        held |= since_strong <= F32(p.strong_rows)
        np.minimum(shaped, F32(p.e_fire) * F32(0.999), out=shaped, where=held)
        fired = shaped >= F32(p.e_fire)
        strong = shaped >= F32(p.e_pass)
        score = shaped.astype(np.float64)  # 1 - exp(-shaped / out_scale)
        score /= -p.out_scale
        np.exp(score, out=score)
        np.subtract(1.0, score, out=score)
        col = block[:, _COL["peak"]]
        np.maximum(peak, evidence, out=col)
        if warm is not None:
            fired &= warm
            strong &= warm
            score[~warm] = np.nan
            col[~warm] = 0
        col = block[:, _COL["since"]]
        np.minimum(since, F32(1e6), out=col)
        col[fired] = 0
        col = block[:, _COL["since_strong"]]
        np.minimum(since_strong, F32(1e6), out=col)
        col[strong] = 0

        # 4. learn, winsorised so that anomalies do not poison the level and the profile ----------
        a = _rate(n1, n_min, p.a_level)  # running mean until the EW rate takes over
        csp = F32(p.clip) * sp
        if flat is not None:  # the bin learns the winsorised offset from the slow level
            dev = x_raw - level
            np.maximum(dev, np.negative(csp), out=dev)
            np.minimum(dev, csp, out=dev)
            dev -= seas
            rate = F32(p.a_season) if warm is None else np.where(warm, F32(p.a_season), F32(p.a_season_warm))
            dev *= rate
            dev += seas
            dev /= scale
            big = np.abs(dev).max() > _PROF_MAX
            if big:  # rows whose bin outgrows the profile's range: a coarser scale for the whole row
                r = np.flatnonzero(np.abs(dev) > _PROF_MAX)
                k = np.ceil(np.log2(np.abs(dev[r]) / F32(_PROF_MAX)))
                f = np.ldexp(F32(1), k.astype(np.int32)).astype(F32)
                dev[r] /= f
                scale[r] *= f
                prof = self._prof(block)
                prof[r] = prof[r].astype(F32) / f[:, None]
            np.put(pflat, flat, dev)
            g["season_scale"][:] = scale
        dx = x - level  # level + a * (clip(x, level - c sp, level + c sp) - level)
        xw = np.maximum(x, level - csp)
        np.minimum(xw, level + csp, out=xw)
        xw -= level
        xw *= a
        np.add(level, xw, out=block[:, _COL["level"]])
        np.abs(dx, out=dx)  # spread + a * (min(|x - level|, c sp) - spread)
        np.minimum(dx, csp, out=dx)
        dx -= g["spread"]
        dx *= a
        np.add(g["spread"], dx, out=g["spread"])
        if kf is not None:
            g["level"][kf], g["spread"][kf] = x[kf], 0
        g["x_prev"][:] = x_raw
        g["sm"][:], g["sm2"][:], g["vol"][:] = sm, sm2, vol
        n_col[:] = n1
        np.put(self._rows, idx, rows)  # ... and one scatter
        return score

    def _gaps(self, block: np.ndarray, t: np.ndarray | None, g: dict[str, np.ndarray]) -> np.ndarray | None:
        """Track the typical time step; a long pause discounts the next step (weight < 1; None: no gap)."""
        if t is None:
            return None
        t_col = _t_prev(block)
        t_prev = t_col.copy()
        with np.errstate(invalid="ignore"):
            dt = (t - t_prev).astype(F32)
        has = np.isfinite(dt)
        has &= dt > 0
        typ = g["dt"]
        tpos = typ > 0
        is_gap = dt > F32(self.params.gap_factor) * typ
        is_gap &= has
        is_gap &= tpos
        gap_w = None
        if is_gap.any():
            gap_w = np.where(is_gap, np.sqrt(typ / np.where(is_gap, dt, 1)), 1).astype(F32)
        step = 3 * typ  # where(typ > 0, typ + 0.05 * (min(dt, 3 typ) - typ), dt)
        np.minimum(dt, step, out=step)
        step -= typ
        step *= F32(0.05)
        step += typ
        np.copyto(step, dt, where=~tpos)
        np.copyto(step, typ, where=~has)
        g["dt"][:] = step  # a view into the gathered block: written back with it
        t_col[:] = t if np.isfinite(t).all() else np.where(np.isfinite(t), t, t_prev)
        return gap_w


#: Storage of the daily profile's bins (float16: half the bytes, 11 significant bits, in units of a per-row
#: power-of-two scale that grows when a bin would leave the range).
PROFILE_DTYPE = np.float16
_PROF_MAX = 16_384.0
_SCALE0 = F32(2.0**-60)  # a row's first scale (0 in a fresh row: read as this)

_F0 = 3  # the first of the _F32_FIELDS' cells in a row
_P0 = _F0 + len(_F32_FIELDS)  # the first profile cell
_COL = {k: _F0 + j for j, k in enumerate(_F32_FIELDS)}


def _first_scale(x: np.ndarray) -> np.ndarray:
    """The power of two that puts ``|x|`` (at least 1e-30) at _PROF_MAX / 2 units."""
    e = np.ceil(np.log2(np.maximum(np.abs(x), F32(1e-30)) / F32(_PROF_MAX / 2))).astype(np.int32)
    return np.ldexp(F32(1), e).astype(F32)


def _scale(col: np.ndarray) -> np.ndarray:
    """A row's profile scale (a fresh row's 0 reads as the first scale)."""
    return np.maximum(col, _SCALE0)


def _t_prev(s: np.ndarray) -> np.ndarray:
    """The rows' last sample time (s): a float64 over cells 0-1."""
    return s[:, 0:2].view(np.float64)[:, 0]


def _n(s: np.ndarray) -> np.ndarray:
    """The rows' count of samples seen: an int32 in cell 2."""
    return s[:, 2:3].view(np.int32)[:, 0]


def _mod(t: np.ndarray, period: float) -> np.ndarray:
    """``np.mod(t, period)`` for ``period > 0``, the same values at a fraction of its cost: the quotient's
    floor is right but for a rounding at a period's edge, which the correction moves back into [0, period).
    Exact for a whole-second period (``q * period`` and ``t - q * period`` are then exact); else np.mod."""
    if not float(period).is_integer() or not len(t) or np.abs(t).max() >= 2.0**52 / period:
        return np.mod(t, period)
    r = t * (1.0 / period)
    np.floor(r, out=r)
    r *= period
    np.subtract(t, r, out=r)
    if r.min() < 0.0 or r.max() >= period:
        r[r < 0.0] += period
        r[r >= period] -= period
    return r


def _ew(mean: np.ndarray, x: np.ndarray, rate: np.ndarray | np.float32) -> np.ndarray:
    """``mean + rate * (x - mean)`` in a new array."""
    out = x - mean
    out *= rate
    out += mean
    return out


def _rate(n: np.ndarray, n_min: int, a: float, floor: int = 0) -> np.ndarray | np.float32:
    """``max(1 / max(n, floor), a)``: a running mean's 1/n until the EW rate ``a`` takes over; a scalar once
    every ``n`` of the batch is past that point (the same value, computed once)."""
    if n_min >= max(floor, 1) and F32(1) / F32(n_min) <= F32(a):
        return F32(a)
    nn = np.maximum(n, floor) if floor else n
    return np.maximum(F32(1) / nn.astype(F32), F32(a))


def _max_weighted(acc: np.ndarray | None, u: np.ndarray, w: float) -> np.ndarray:
    """``max(acc, w * u)`` in place (``u`` is consumed). A weight of 0 becomes a tiny positive one, so that
    ``w * u > 0`` still says ``u > 0`` and ``nov0 + w * u`` is still ``nov0``."""
    u *= F32(w) if w > 0 else F32(1e-30)
    if acc is None:
        return u
    return np.fmax(acc, u, out=acc)  # fmax: a NaN excess (inf - inf on hostile input) is no evidence


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
