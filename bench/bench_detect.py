"""Throughput of the streaming detector: ``python -m bench.bench_detect``.

Measures series-updates per second on one core with batches of 100k distinct series (the gateway's shape,
with device times so the daily profile is used, as in the gateway) and the detector's state size per
series, and prints ``detect: updates_s=<n> updates_s_no_t=<n> bytes_per_series=<n>`` (``no_t``: without
times, i.e. without gap tracking and daily profile).
"""

from __future__ import annotations

import time

import numpy as np

from gateway.detect.stream import DetectorParams, StreamDetector

N_SERIES = 100_000


def run(n_series: int = N_SERIES, rounds: int = 40, seed: int = 7, with_t: bool = True) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    det = StreamDetector(DetectorParams(), capacity=n_series)
    idx = np.arange(n_series)
    base = rng.normal(100.0, 10.0, n_series)
    batches = [base + rng.normal(0.0, 1.0, n_series) for _ in range(8)]
    t0_s = 1_705_334_400.0
    ts = t0_s + 300.0 * np.arange(rounds + 2)
    for k, b in enumerate(batches[:2]):  # allocate and touch everything once
        det.update(idx, b, np.full(n_series, ts[k]) if with_t else None)
    perm = rng.permutation(n_series)  # a shuffled batch: the fancy-indexing path the gateway takes
    best = float("inf")
    for r in range(rounds):
        order = idx if r % 2 == 0 else perm
        t0 = time.perf_counter()
        tt = np.full(n_series, ts[r + 2]) if with_t else None
        det.update(order, batches[r % len(batches)][order], tt)
        best = min(best, time.perf_counter() - t0)
    return {
        "updates_s": n_series / best,
        "bytes_per_series": float(det.bytes_per_series()),
        "n_series": float(n_series),
    }


def main() -> None:
    res, no_t = run(), run(with_t=False)
    print(f"detect: updates_s={res['updates_s']:.0f} updates_s_no_t={no_t['updates_s']:.0f} "
          f"bytes_per_series={res['bytes_per_series']:.0f}")


if __name__ == "__main__":
    main()
