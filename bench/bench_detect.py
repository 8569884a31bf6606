"""Throughput of the streaming detector: ``python -m bench.bench_detect``.

Measures series-updates per second on one core with batches of 100k distinct series (the gateway's shape,
with device times so the daily profile is used, as in the gateway) and the detector's state size per
series, and prints ``detect: updates_s=<n> updates_s_shuffled=<n> updates_s_young=<n> updates_s_no_t=<n>
bytes_per_series=<n>``:

* ``updates_s``: series past their warm-up (a running gateway's state), batches in series order, best round;
* ``updates_s_shuffled``: the same with the batch in a random order (every row a cache miss: the worst case;
  the gateway's batches come pole by pole, each pole's metrics in adjacent rows);
* ``updates_s_young``: series in their first samples (rates per series, the evidence ramp), both orders;
* ``no_t``: without times, i.e. without gap tracking and daily profile (warm series, series order).

Then ``detect_state: poles=<n> active_alarms=<n> save_ms=<ms> bytes=<n> alarm_save_ms=<ms> alarm_bytes=<n>
snapshot_ms=<ms>``: one save of the whole detection state for a 10,000-pole fleet (the pole table and
the learned rows), and one alarm-only save (the recent document, at most once a second after an alarm
change; see :func:`state_save`), and ``snapshot_ms``, the part the gateway's worker pays for the latter
(the active alarms as records; a saver thread writes them).
"""

from __future__ import annotations

import time

import numpy as np

from gateway.detect.stream import DetectorParams, StreamDetector

N_SERIES = 100_000
WARM_N = 10_000  # samples a "warm" series has seen (past warm-up, ramp and every 1/n rate)


def run(n_series: int = N_SERIES, rounds: int = 40, seed: int = 7, with_t: bool = True, warm: bool = True,
        ) -> dict[str, float]:
    """Best batch time over ``rounds`` batches alternating series order and a shuffled order."""
    rng = np.random.default_rng(seed)
    det = StreamDetector(DetectorParams(), capacity=n_series)
    idx = np.arange(n_series)
    base = rng.normal(100.0, 10.0, n_series)
    batches = [base + rng.normal(0.0, 1.0, n_series) for _ in range(8)]
    t0_s = 1_705_334_400.0
    ts = t0_s + 300.0 * np.arange(rounds + 2)
    for k, b in enumerate(batches[:2]):  # allocate and touch everything once
        det.update(idx, b, np.full(n_series, ts[k]) if with_t else None)
    if warm:  # the count is the only thing that makes a series young: set it as a running gateway's
        state = det.state_dict()
        state["n"][:] = WARM_N
        det.load_state_dict(state)
    perm = rng.permutation(n_series)  # a shuffled batch: every row a cache miss
    best = [float("inf"), float("inf")]
    for r in range(rounds):
        order = idx if r % 2 == 0 else perm
        tt = np.full(n_series, ts[r + 2]) if with_t else None
        t0 = time.perf_counter()
        det.update(order, batches[r % len(batches)][order], tt)
        best[r % 2] = min(best[r % 2], time.perf_counter() - t0)
    return {
        "updates_s": n_series / min(best),
        "updates_s_ordered": n_series / best[0],
        "updates_s_shuffled": n_series / best[1],
        "bytes_per_series": float(det.bytes_per_series()),
        "n_series": float(n_series),
    }


def state_save(poles: int = 10_000, samples: int = 3, repeats: int = 5) -> dict[str, float]:
    """What one save of the detection state costs the gateway's worker (it runs in the ack path): a
    stage of ``poles`` full-kit poles after ``samples`` readings each, one active alarm per 100 poles;
    the best of ``repeats`` saves (JSON + stream arrays, each written, fsynced and renamed)."""
    import logging
    import tempfile
    from pathlib import Path

    from contract.catalog import METRICS
    from contract.readings import Reading
    from gateway.detection import DetectionStage
    from gateway.pipeline import Outcome

    logging.getLogger("lampwatch.detect").setLevel(logging.ERROR)  # a thousand critical alarms, not logged
    rng = np.random.default_rng(3)
    names = [m.name for m in METRICS if m.dtype == "float"]
    now = [1_705_334_400.0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "detect-state.json"
        stage = DetectionStage(state_path=str(path), clock=lambda: now[0], save_every_s=1e12,
                               save_min_interval_s=1e12)
        for k in range(samples):
            now[0] += 300.0
            rs = []
            for i in range(poles):
                vals = {n: float(rng.uniform(1.0, 2.0)) for n in names}
                if k and i % 100 == 0:
                    vals["leakage_current_ma"] = 40.0  # a critical tier: raised at once
                rs.append(Reading(f"p-{i:06d}", f"d{i % 20}", "b", k + 1, int(now[0] * 1000), vals))
            stage(Outcome(readings=rs))
        best = {True: float("inf"), False: float("inf")}
        snap = float("inf")  # what the gateway's worker pays: the copy; the saver thread writes it
        for _ in range(repeats):
            for full in (True, False):
                t0 = time.perf_counter()
                stage.save(full)
                best[full] = min(best[full], time.perf_counter() - t0)
            t0 = time.perf_counter()
            stage._snapshot(False)
            snap = min(snap, time.perf_counter() - t0)
        recent = path.with_name(path.name + ".recent.json")  # what an alarm-only save writes
        alarms_only = recent.stat().st_size
        size = sum(f.stat().st_size for f in Path(tmp).iterdir() if f != recent)
        active = len(stage.active())
    return {"save_ms": best[True] * 1000.0, "snapshot_ms": snap * 1000.0, "alarm_save_ms": best[False] * 1000.0,
            "bytes": float(size),
            "alarm_bytes": float(alarms_only), "poles": float(poles), "active": float(active)}


def main() -> None:
    res, young, no_t = run(), run(warm=False), run(with_t=False, rounds=20)
    print(f"detect: updates_s={res['updates_s_ordered']:.0f} updates_s_shuffled={res['updates_s_shuffled']:.0f} "
          f"updates_s_young={young['updates_s']:.0f} updates_s_no_t={no_t['updates_s_ordered']:.0f} "
          f"bytes_per_series={res['bytes_per_series']:.0f}")
    sv = state_save()
    print(f"detect_state: poles={sv['poles']:.0f} active_alarms={sv['active']:.0f} save_ms={sv['save_ms']:.1f} "
          f"bytes={sv['bytes']:.0f} alarm_save_ms={sv['alarm_save_ms']:.1f} alarm_bytes={sv['alarm_bytes']:.0f} "
          f"snapshot_ms={sv['snapshot_ms']:.1f}")


if __name__ == "__main__":
    main()
