"""Offline replay: run a streaming detector over CSV files and whole NAB corpora.

The detector only ever sees rows in order (no look-ahead); one parameter set serves every file. Many files
are replayed in lockstep as separate series of one vectorised detector, which is how the gateway runs it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from gateway import nab
from gateway.detect.stream import DetectorParams, StreamDetector


class Detector(Protocol):
    def update(self, series_idx: np.ndarray, values: np.ndarray, t: np.ndarray | None = None) -> np.ndarray: ...


def parse_timestamps(timestamps: Sequence[str]) -> np.ndarray:
    """``YYYY-MM-DD HH:MM:SS[.f]`` strings to float seconds since the epoch (UTC)."""
    return np.array([ts[:19] for ts in timestamps], dtype="datetime64[s]").astype(np.int64).astype(np.float64)


def run_many(
    series: Sequence[np.ndarray],
    times: Sequence[np.ndarray | None] | None = None,
    detector: Detector | None = None,
) -> list[np.ndarray]:
    """Score several series in lockstep (row k of every series in one batch); NaN = warm-up/unknown."""
    det = detector if detector is not None else StreamDetector(DetectorParams(), capacity=max(len(series), 1))
    lengths = np.array([len(v) for v in series], dtype=np.int64)
    n_max = int(lengths.max()) if len(series) else 0
    vals = np.full((len(series), n_max), np.nan)
    use_t = times is not None and all(t is not None for t in times)
    tmat = np.full((len(series), n_max), np.nan) if use_t else None
    for i, v in enumerate(series):
        vals[i, : len(v)] = v
        if tmat is not None and times is not None:
            tmat[i, : len(v)] = np.asarray(times[i], dtype=np.float64)
    out = np.full((len(series), n_max), np.nan)
    order = np.argsort(-lengths, kind="stable")  # active series form a prefix of `order`
    for k in range(n_max):
        act = order[: int(np.searchsorted(-lengths[order], -k, side="left"))]
        out[act, k] = det.update(act, vals[act, k], None if tmat is None else tmat[act, k])
    return [out[i, : lengths[i]] for i in range(len(series))]


def run_series(values: np.ndarray, t: np.ndarray | None = None, detector: Detector | None = None) -> np.ndarray:
    return run_many([np.asarray(values, dtype=np.float64)], None if t is None else [t], detector)[0]


def _write_rows(
    path: Path, timestamps: Sequence[str], values: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = np.nan_to_num(scores, nan=0.0)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for ts, v, sc, lab in zip(timestamps, values, clean, labels, strict=True):
            w.writerow([ts, repr(float(v)) if not float(v).is_integer() else int(v), f"{sc:.9f}", int(lab)])


def replay_csv(
    in_path: Path,
    out_path: Path,
    params: DetectorParams | None = None,
    windows: Sequence[Sequence[str]] = (),
) -> np.ndarray:
    """Score a ``timestamp,value`` CSV; write ``timestamp,value,anomaly_score,label`` (NaN written as 0).

    ``windows`` (``[[start, end], ...]`` timestamps) fills the label column; without it labels are 0.
    """
    ts, vals = nab.read_series(Path(in_path))
    det = StreamDetector(params or DetectorParams(), capacity=1)
    scores = run_series(vals, parse_timestamps(ts), det)
    layout = nab.layout_for(str(in_path), ts, windows)
    _write_rows(Path(out_path), ts, vals, scores, _labels(layout))
    return scores


def _labels(layout: nab.FileLayout) -> np.ndarray:
    lab = np.zeros(layout.n_rows, dtype=np.int64)
    for start, end in layout.windows:
        lab[start : end + 1] = 1
    return lab


def score_corpus_values(
    layouts: Sequence[nab.FileLayout],
    values: Sequence[np.ndarray],
    times: Sequence[np.ndarray] | None = None,
    params: DetectorParams | None = None,
) -> list[np.ndarray]:
    """Detector scores for every corpus file (NaN during warm-up), all files as one vectorised batch."""
    det = StreamDetector(params or DetectorParams(), capacity=len(layouts))
    return run_many(values, times, det)


def replay_nab(
    nab_dir: Path,
    out_dir: Path,
    name: str = "lampwatch",
    params: DetectorParams | None = None,
) -> tuple[list[nab.FileLayout], list[np.ndarray]]:
    """Run over ``nab_dir/data`` and write NAB results ``out_dir/<name>/<category>/<name>_<file>.csv``."""
    if "_" in name:
        raise ValueError("NAB detector names must not contain underscores")
    windows = nab.load_windows(Path(nab_dir))
    layouts, values, stamps = [], [], []
    for key in nab.data_files(Path(nab_dir)):
        ts, vals = nab.read_series(Path(nab_dir) / "data" / key)
        layouts.append(nab.layout_for(key, ts, windows.get(key, [])))
        values.append(vals)
        stamps.append(ts)
    scores = score_corpus_values(layouts, values, [parse_timestamps(ts) for ts in stamps], params)
    for lay, ts, vals, sc in zip(layouts, stamps, values, scores, strict=True):
        _write_rows(nab.result_path(Path(out_dir), name, lay.key), ts, vals, sc, _labels(lay))
    return layouts, scores
