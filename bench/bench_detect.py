"""Throughput of the streaming detector: ``python -m bench.bench_detect``.

Measures series-updates per second on one core with batches of 100k distinct series (the gateway's shape)
and the detector's state size per series, and prints ``detect: updates_s=<n> bytes_per_series=<n>``.
"""

from __future__ import annotations

import time

import numpy as np

from gateway.detect.stream import DetectorParams, StreamDetector

N_SERIES = 100_000


def run(n_series: int = N_SERIES, rounds: int = 40, seed: int = 7) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    det = StreamDetector(DetectorParams(), capacity=n_series)
    idx = np.arange(n_series)
    base = rng.normal(100.0, 10.0, n_series)
    batches = [base + rng.normal(0.0, 1.0, n_series) for _ in range(8)]
    for b in batches[:2]:  # allocate and touch everything once
        det.update(idx, b)
    perm = rng.permutation(n_series)  # a shuffled batch: the fancy-indexing path the gateway takes
    best = float("inf")
    for r in range(rounds):
        order = idx if r % 2 == 0 else perm
        t0 = time.perf_counter()
        det.update(order, batches[r % len(batches)][order])
        best = min(best, time.perf_counter() - t0)
    return {
        "updates_s": n_series / best,
        "bytes_per_series": float(det.bytes_per_series()),
        "n_series": float(n_series),
    }


def main() -> None:
    res = run()
    print(f"detect: updates_s={res['updates_s']:.0f} bytes_per_series={res['bytes_per_series']:.0f}")


if __name__ == "__main__":
    main()
