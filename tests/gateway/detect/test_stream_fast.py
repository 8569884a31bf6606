"""The streaming detector's shortcuts for throughput give the plain formulas' results (gateway/detect/stream.py).

Chunks of a big batch, scalar rates once every series of a batch is old enough, masks only for the rows that
need them, the state in one row per series and the cheap ``_mod``: each of these must not change a score.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.detect import stream
from gateway.detect.stream import _F32_FIELDS, DetectorParams, StreamDetector, _mod

F32 = np.float32


class Plain:
    """The detector's formulas written plainly (every mask a ``where`` on every row, rates always per series,
    ``np.mod``, one array per field, the profile a float16 array beside a scale per series): the reference
    the fast ``StreamDetector._step`` must match bit for bit."""

    def __init__(self, params: DetectorParams, cap: int) -> None:
        self.p = params
        self.s = {k: np.zeros(cap, F32) for k in _F32_FIELDS}
        self.n = np.zeros(cap, np.int32)
        self.t_prev = np.full(cap, np.nan)
        self.prof = np.full((cap, 2 * params.n_season), np.nan, np.float16)  # weekdays, then weekends

    def update(self, idx: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:  # distinct idx
        out = np.full(len(idx), np.nan)
        ok = np.isfinite(x)
        if ok.any():
            out[ok] = self._step(idx[ok], x[ok].astype(F32), t[ok])
        return out

    def _step(self, idx: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        p, s = self.p, self.s
        g = {k: v[idx] for k, v in s.items()}
        n1 = self.n[idx] + 1
        first = n1 == 1
        x_prev = np.where(first, x, g["x_prev"])
        level = np.where(first, x, g["level"])
        dt = (t - self.t_prev[idx]).astype(F32)
        has = np.isfinite(dt) & (dt > 0)
        typ = g["dt"]
        is_gap = has & (typ > 0) & (dt > F32(p.gap_factor) * typ)
        gap_w = np.where(is_gap, np.sqrt(typ / np.where(is_gap, dt, 1)), 1).astype(F32)
        g["dt"] = np.where(has, np.where(typ > 0, typ + F32(0.05) * (np.minimum(dt, 3 * typ) - typ), dt), typ)
        self.t_prev[idx] = t
        x_raw = x
        day, ns = p.season_s, p.n_season
        h = np.clip((np.mod(t, day) * (ns / day)).astype(np.int64), 0, ns - 1)
        h = h + ns * (np.mod(t + 3 * day, 7 * day) >= 5 * day)  # the epoch was a Thursday
        first_scale = np.ldexp(F32(1), np.ceil(np.log2(np.maximum(np.abs(x), F32(1e-30)) / F32(8192))).astype(int))
        scale = np.where(first, first_scale.astype(F32), np.maximum(g["season_scale"], F32(2.0**-60)))
        own, other = self.prof[idx, h].astype(F32), self.prof[idx, (h + ns) % (2 * ns)].astype(F32)
        seas = np.where(np.isnan(own), np.where(np.isnan(other), 0, other), own) * scale
        x = x - seas
        eps = F32(1e-6) * (np.abs(level) + F32(1e-3))
        sp = np.maximum(g["spread"], eps)
        step = np.abs(x_raw - x_prev) * gap_w
        sm = np.where(first, x, g["sm"] + F32(p.a_sm) * (x - g["sm"]))
        sm2 = np.where(first, x, g["sm2"] + F32(p.a_sm2) * (x - g["sm2"]))
        a_v = np.maximum(F32(1) / np.maximum(n1 - 1, 1).astype(F32), F32(p.a_vol))
        vol = np.where(first, 0, g["vol"] + a_v * (step - g["vol"]))
        early = n1 <= 20
        nov0, ae = F32(p.nov0), F32(p.a_env)
        new: dict[str, np.ndarray] = {}
        ev = np.zeros(len(idx), F32)
        for kh, kl, val, centre, w, reset in (
            ("hi", "lo", x_raw, level + (x_raw - x), p.w_x, first), ("hi_d", "lo_d", x, level, p.w_d, first),
            ("hi_s", "lo_s", sm, level, p.w_s, first), ("hi_s2", "lo_s2", sm2, level, p.w_s2, first),
            ("hi_v", "lo_v", vol, None, p.w_v, early),
        ):
            hi, lo = np.where(reset, val, g[kh]), np.where(reset, val, g[kl])
            u = np.maximum(val - hi, lo - val) / np.maximum(hi - lo, eps)
            ev = np.maximum(ev, np.where(u > 0, nov0 + F32(w) * u, 0))
            hi, lo = np.maximum(hi, val), np.minimum(lo, val)
            c = F32(0.5) * (hi + lo) if centre is None else centre
            new[kh], new[kl] = hi - ae * np.maximum(hi - c, 0), lo + ae * np.maximum(c - lo, 0)
        hj = np.where(early, step, g["hi_j"])
        u = (step - hj) / np.maximum(hj, eps)
        ev = np.maximum(ev, np.where(u > 0, nov0 + F32(p.w_j) * u, 0))
        hj = np.maximum(hj, step)
        new["hi_j"] = hj - ae * np.maximum(hj - F32(p.j_centre) * vol, 0)
        same = x_raw == x_prev
        run = np.where(same, g["run"] + 1, 0).astype(F32)
        u_st = run * -np.log(np.clip(g["p_eq"], F32(0.01), F32(0.999))) / F32(p.stuck_nats) - F32(1)
        ev = np.maximum(ev, np.where(u_st > 0, nov0 + F32(p.w_v) * u_st, 0))
        a_eq = np.maximum(F32(1) / n1.astype(F32), F32(p.a_eq))
        new["run"] = run
        new["p_eq"] = np.where(u_st > -0.5, g["p_eq"], g["p_eq"] + a_eq * (same.astype(F32) - g["p_eq"]))
        ev = ev * np.minimum(n1.astype(F32) / F32(max(p.n_conf, 1.0)), F32(1))
        warm = n1 > p.warmup
        peak = g["peak"] * F32(p.peak_decay)
        shaped = np.where(ev > peak, ev, ev * F32(p.refractory))
        since, since_strong = g["since"] + 1, g["since_strong"] + 1
        held = ((since <= F32(p.ref_rows)) & (shaped < F32(p.e_pass))) | (since_strong <= F32(p.strong_rows))
        shaped = np.where(held, np.minimum(shaped, F32(p.e_fire) * F32(0.999)), shaped)
        fired, strong = warm & (shaped >= F32(p.e_fire)), warm & (shaped >= F32(p.e_pass))
        score = np.where(warm, 1.0 - np.exp(shaped.astype(np.float64) / -p.out_scale), np.nan)
        a = np.maximum(F32(1) / n1.astype(F32), F32(p.a_level))
        c = F32(p.clip)
        xw = np.clip(x, level - c * sp, level + c * sp)
        dev = np.clip(x_raw - level, -c * sp, c * sp)
        new_bin = (seas + np.where(warm, F32(p.a_season), F32(p.a_season_warm)) * (dev - seas)) / scale
        big = np.abs(new_bin) > 16_384
        k = np.ceil(np.log2(np.where(big, np.abs(new_bin), 16_384) / 16_384)).astype(int)
        f = np.where(big, np.ldexp(F32(1), k), 1)
        f = f.astype(F32)
        self.prof[idx] = self.prof[idx].astype(F32) / f[:, None]
        self.prof[idx, h] = new_bin / f
        g["season_scale"] = scale * f
        new.update(
            x_prev=x_raw, dt=g["dt"], sm=sm, sm2=sm2, vol=vol, season_scale=g["season_scale"],
            level=np.where(first, x, level + a * (xw - level)),
            spread=np.where(first, 0, g["spread"] + a * (np.minimum(np.abs(x - level), c * sp) - g["spread"])),
            peak=np.where(warm, np.maximum(peak, ev), 0),
            since=np.where(fired, 0, np.minimum(since, F32(1e6))),
            since_strong=np.where(strong, 0, np.minimum(since_strong, F32(1e6))),
        )
        for k in _F32_FIELDS:
            s[k][idx] = new[k]
        self.n[idx] = n1
        return score


def _feed(det: StreamDetector, data: np.ndarray, t: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``data`` (series x samples) in lockstep, one batch per sample column."""
    out = np.empty_like(data)
    idx = np.arange(data.shape[0]) if order is None else order
    for k in range(data.shape[1]):
        out[idx, k] = det.update(idx, data[idx, k], t[idx, k])
    return out


def _city(n_series: int, steps: int, seed: int, start: float = 1_705_334_400.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(50.0, 20.0, (n_series, 1))
    base[1::17] = 0.0  # around 0: the profile's first scale is far too fine and must grow
    day = 5.0 * np.sin(np.arange(steps) * 2 * np.pi / 288)[None, :]
    data = base + day + rng.normal(0.0, 1.0, (n_series, steps))
    data[::7, steps // 2 :] = 3.0  # stuck sensors
    data[3::11, steps // 3] += 60.0  # spikes
    data[5::13, 20:25] = np.nan
    t = start + 300.0 * np.arange(steps)[None, :] + rng.uniform(0, 2, (n_series, 1))
    t[::9, steps // 4 :] += 7_200.0  # a two-hour gap
    return data, t


@pytest.mark.parametrize("chunk", [64, 16_384])
def test_fast_step_equals_the_plain_formulas(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Young and old series in shuffled batches, NaN, gaps, stuck runs, spikes: every score and every state
    field bit for bit those of :class:`Plain`."""
    monkeypatch.setattr(stream, "CHUNK", chunk)
    params = DetectorParams(warmup=20, n_conf=100.0)
    data, t = _city(300, 1200, seed=5, start=1_705_680_000.0)  # from a Friday 16:00 UTC into the weekend
    starts = np.random.default_rng(6).choice([0, 0, 0, 150, 600, 1000], 300)  # some series join late
    fast, plain = StreamDetector(params, capacity=300), Plain(params, 300)
    rng = np.random.default_rng(7)
    a, b = np.full_like(data, np.nan), np.full_like(data, np.nan)
    for k in range(data.shape[1]):
        idx = rng.permutation(np.flatnonzero(starts <= k))
        a[idx, k] = fast.update(idx, data[idx, k - starts[idx]], t[idx, k - starts[idx]])
        b[idx, k] = plain.update(idx, data[idx, k - starts[idx]], t[idx, k - starts[idx]])
    np.testing.assert_array_equal(a, b)
    state = fast.state_dict()
    for key in _F32_FIELDS:
        np.testing.assert_array_equal(state[key], plain.s[key], err_msg=key)
    np.testing.assert_array_equal(state["n"], plain.n)
    np.testing.assert_array_equal(state["season"], plain.prof)
    np.testing.assert_array_equal(state["season_scale"], plain.s["season_scale"])
    assert np.nanmax(a) > 0.9998 and (a[:, 200:] >= 0.48).mean() < 0.05  # alarms happen, and are rare


def test_chunked_batch_equals_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    data, t = _city(700, 90, seed=1)
    order = np.random.default_rng(2).permutation(700)
    whole = _feed(StreamDetector(DetectorParams(warmup=30), capacity=700), data, t, order)
    monkeypatch.setattr(stream, "CHUNK", 64)  # many chunks, the last one short
    chunked = _feed(StreamDetector(DetectorParams(warmup=30), capacity=700), data, t, order)
    np.testing.assert_array_equal(chunked, whole)
    assert np.isfinite(whole[:, 40:]).sum() > 0.9 * whole[:, 40:].size


def test_series_of_mixed_ages_in_one_batch_score_as_alone() -> None:
    """A batch of old series takes rates as scalars; one young series in it makes them per series again."""
    params = DetectorParams(warmup=20, n_conf=50.0)
    data, t = _city(6, 700, seed=3)
    alone = np.stack([_feed(StreamDetector(params, capacity=1), data[i : i + 1], t[i : i + 1])[0]
                      for i in range(6)])
    det = StreamDetector(params, capacity=6)
    mixed = np.full_like(data, np.nan)
    starts = (0, 0, 0, 250, 400, 650)  # series join late, so old and young share batches
    for k in range(data.shape[1]):
        idx = np.array([i for i in range(6) if k >= starts[i]])
        mixed[idx, k] = det.update(idx, data[idx, k - np.array(starts)[idx]], t[idx, k - np.array(starts)[idx]])
    for i, s in enumerate(starts):
        np.testing.assert_array_equal(mixed[i, s:], alone[i, : data.shape[1] - s])
    assert np.nanmax(alone[:, 400:]) > 0.9  # the stuck sensors and spikes are seen


def test_state_round_trips_through_the_row_layout() -> None:
    data, t = _city(40, 120, seed=4)
    det = StreamDetector(DetectorParams(warmup=10), capacity=3)  # grows while fed
    _feed(det, data[:, :60], t[:, :60])
    saved = det.state_dict()
    assert saved["n"].dtype == np.int32 and saved["t_prev"].dtype == np.float64
    assert saved["season"].shape == (det.capacity, 48) and saved["season"].dtype == np.float16
    assert np.nanmax(np.abs(saved["season"][:40])) > 0
    np.testing.assert_array_equal(saved["t_prev"][:40], t[:, 59])
    again = StreamDetector(DetectorParams(warmup=10), capacity=1)
    again.load_state_dict(saved)
    a, b = _feed(det, data[:, 60:], t[:, 60:]), _feed(again, data[:, 60:], t[:, 60:])
    np.testing.assert_array_equal(a, b)
    assert det.bytes_per_series() == 208


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.0, 4e9, allow_nan=False), min_size=1, max_size=50),
       st.sampled_from([86_400.0, 604_800.0, 3_600.0, 300.0, 1.0, 7.25]))
def test_mod_equals_numpy(t: list[float], period: float) -> None:
    tt = np.array(t)
    edges = np.round(tt / period) * period  # a period's edge and its neighbours: where the floor rounds
    tt = np.r_[tt, edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)]
    tt = tt[tt >= 0]
    np.testing.assert_array_equal(_mod(tt, period), np.mod(tt, period))


def test_mod_corrects_a_floor_that_rounds_down() -> None:
    below = np.nextafter(900.0, 0.0)  # just under 3 periods: its quotient rounds up to 3
    assert np.floor(below * (1.0 / 300.0)) == 3.0
    tt = np.array([below, 65_000.0, 1_705_334_400.0])
    np.testing.assert_array_equal(_mod(tt, 300.0), np.mod(tt, 300.0))
    assert 299.9 < _mod(tt, 300.0)[0] < 300.0


def _office(weeks: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A load with office hours on weekdays only (5-minute samples from a Monday 16:00 UTC)."""
    t = 1_705_334_400.0 + 300.0 * np.arange(int(288 * 7 * weeks))
    hour = np.mod(t, 86_400.0) / 3_600.0
    weekend = np.mod(t + 3 * 86_400.0, 7 * 86_400.0) >= 5 * 86_400.0
    x = 20.0 + np.where((hour >= 8) & (hour < 18) & ~weekend, 60.0, 0.0)
    return x + np.random.default_rng(seed).normal(0.0, 2.0, len(t)), t, weekend


def _offsets(det: StreamDetector) -> np.ndarray:
    """Series 0's profile bins in value units (stored: float16 in units of its scale)."""
    state = det.state_dict()
    assert state["season"].dtype == np.float16
    return state["season"][0].astype(np.float64) * max(float(state["season_scale"][0]), 2.0**-60)


def test_weekends_learn_a_daily_profile_of_their_own() -> None:
    x, t, _ = _office(weeks=3)
    det = StreamDetector(DetectorParams(), capacity=1)
    for k in range(len(x)):
        det.update(np.array([0]), x[k : k + 1], t[k : k + 1])
    season = _offsets(det)
    weekday_noon, weekend_noon = season[12], season[24 + 12]
    assert weekday_noon - weekend_noon > 30.0  # office hours on weekdays only
    assert abs(season[3] - season[24 + 3]) < 5.0  # the same night on both


def test_a_first_weekend_starts_from_the_weekday_profile() -> None:
    x, t, weekend = _office(weeks=1)
    first_sat = int(np.flatnonzero(weekend)[0])  # Saturday 00:00
    det = StreamDetector(DetectorParams(), capacity=1)
    for k in range(first_sat + 1):
        det.update(np.array([0]), x[k : k + 1], t[k : k + 1])
    season = _offsets(det)
    assert np.isnan(season[24 + 1 :]).all()  # the other weekend hours: never visited yet
    assert abs(season[24] - season[0]) < 0.2 * abs(season[0]) + 0.5  # midnight: began at the weekday's value
