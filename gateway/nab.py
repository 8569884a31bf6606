"""Scoring against the Numenta Anomaly Benchmark (NAB v1.1), written from its published rules.

Pure functions on numpy arrays plus a small loader for the NAB folder layout::

    data/<category>/<file>.csv                               timestamp,value
    labels/combined_windows.json                             {"<category>/<file>.csv": [[start, end], ...]}
    results/<detector>/<category>/<detector>_<file>.csv      timestamp,value,anomaly_score,label

Rules (see the corpus README): the first ``min(floor(0.15 N), 750)`` rows of a file are ignored; inside
a window only the earliest detection counts and earns ``A_TP * sigma(y) / sigma(-1)``; a missed window
costs ``A_FN``; a detection outside windows costs ``A_FP * sigma(y)`` with ``y`` the distance past the
previous window in window widths (``-A_FP`` if no window precedes it). One threshold per profile is
chosen over the whole corpus to maximise the summed raw score; the result is normalised so that the
never-firing detector scores 0 and the perfect one 100.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Profile:
    name: str
    a_tp: float
    a_fp: float
    a_fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


@dataclass(frozen=True)
class FileLayout:
    """One corpus file in row indices: ``windows`` is an (k, 2) int array of inclusive [start, end]."""

    key: str  # "<category>/<file>.csv"
    n_rows: int
    windows: np.ndarray


@dataclass(frozen=True)
class CorpusScore:
    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float

    @property
    def normalized(self) -> float:
        return 100.0 * (self.raw - self.null) / (self.perfect - self.null)


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's ``2/(1+e^{5y}) - 1``; beyond 3 window widths it is exactly -1."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, val)


def probation_length(n_rows: int, percent: float = 0.15) -> int:
    return int(min(math.floor(percent * n_rows), percent * 5000))


def row_weights(layout: FileLayout) -> tuple[np.ndarray, np.ndarray]:
    """Unweighted per-row values and window ids for one file.

    Returns ``(tp_value, window_id)``: inside window ``k`` a row has ``window_id == k`` and
    ``tp_value = sigma(y)/sigma(-1)``; outside windows ``window_id == -1`` and ``tp_value`` holds the
    unweighted false-positive value ``sigma(y)`` (negative). Probation rows get ``window_id == -2``.
    """
    n = layout.n_rows
    idx = np.arange(n)
    win_id = np.full(n, -1, dtype=np.int64)
    value = np.full(n, -1.0)
    max_tp = float(scaled_sigmoid(-1.0))
    prev_right = -1
    prev_width = 0.0
    for k, (start, end) in enumerate(np.asarray(layout.windows, dtype=np.int64).reshape(-1, 2)):
        width = float(end - start + 1)
        if prev_right >= 0:
            gap = idx[prev_right + 1 : start]
            value[prev_right + 1 : start] = scaled_sigmoid(np.abs(prev_right - gap) / (prev_width - 1.0))
        inside = idx[start : end + 1]
        value[start : end + 1] = scaled_sigmoid(-(end - inside + 1) / width) / max_tp
        win_id[start : end + 1] = k
        prev_right, prev_width = int(end), width
    if prev_right >= 0:
        tail = idx[prev_right + 1 :]
        value[prev_right + 1 :] = scaled_sigmoid(np.abs(prev_right - tail) / (prev_width - 1.0))
    win_id[: probation_length(n)] = -2
    return value, win_id


def _prepare(layouts: Sequence[FileLayout], scores: Sequence[np.ndarray],
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.int64]:
    vals, wins, scs = [], [], []
    offset = 0
    for layout, score in zip(layouts, scores, strict=True):
        score = np.asarray(score, dtype=np.float64)
        if score.shape != (layout.n_rows,):
            raise ValueError(f"{layout.key}: {score.shape[0]} scores for {layout.n_rows} rows")
        value, win = row_weights(layout)
        keep = win != -2
        win = win[keep]
        vals.append(value[keep])
        wins.append(np.where(win >= 0, win + offset, -1))
        scs.append(np.nan_to_num(score[keep], nan=0.0))
        offset += len(layout.windows)
    return np.concatenate(vals), np.concatenate(wins), np.concatenate(scs), np.int64(offset)


def sweep(
    layouts: Sequence[FileLayout], scores: Sequence[np.ndarray], profile: Profile
) -> tuple[np.ndarray, np.ndarray]:
    """Raw corpus score for every candidate threshold, vectorised.

    Returns ``(thresholds, raw_scores)``; threshold ``t`` means "score >= t is a detection", and the
    first entry (threshold +inf) is the never-firing detector.
    """
    value, win, score, n_windows = _prepare(layouts, scores)
    order = np.argsort(-score, kind="stable")
    s_sorted = score[order]
    delta = np.zeros(len(score))
    fp = win[order] == -1
    delta[fp] = profile.a_fp * value[order][fp]
    # Per window: credit is the best (earliest) row detected so far; each new best adds its increment.
    in_win = np.flatnonzero(~fp)
    if len(in_win):
        w = win[order][in_win]
        v = value[order][in_win] * profile.a_tp
        by_win = np.lexsort((in_win, w))  # group by window, keep score order inside a group
        w_g, v_g = w[by_win], v[by_win]
        starts = np.r_[True, w_g[1:] != w_g[:-1]]
        group = np.cumsum(starts) - 1
        run_max = _grouped_cummax(v_g, group)
        prev = np.where(starts, -profile.a_fn, np.r_[0.0, run_max[:-1]])
        inc = run_max - prev
        delta[in_win[by_win]] = inc
    total = -profile.a_fn * float(n_windows) + np.cumsum(delta)
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    thresholds = np.r_[np.inf, s_sorted[last_of_tie]]
    raws = np.r_[-profile.a_fn * float(n_windows), total[last_of_tie]]
    return thresholds, raws


def _grouped_cummax(v: np.ndarray, group: np.ndarray) -> np.ndarray:
    # Shift every group onto its own band so one global cummax never crosses a group boundary.
    span = float(np.ptp(v)) + 1.0 if len(v) else 1.0
    shifted = v + group * span * 2.0
    return np.maximum.accumulate(shifted) - group * span * 2.0


def score_corpus(layouts: Sequence[FileLayout], scores: Sequence[np.ndarray], profile: Profile | str) -> CorpusScore:
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    thresholds, raws = sweep(layouts, scores, prof)
    best = int(np.argmax(raws))
    n_windows = sum(len(x.windows) for x in layouts)
    return CorpusScore(
        profile=prof.name,
        threshold=float(thresholds[best]),
        raw=float(raws[best]),
        null=-prof.a_fn * n_windows,
        perfect=prof.a_tp * n_windows,
    )


def score_all(layouts: Sequence[FileLayout], scores: Sequence[np.ndarray]) -> dict[str, CorpusScore]:
    return {name: score_corpus(layouts, scores, p) for name, p in PROFILES.items()}


def perfect_scores(layouts: Iterable[FileLayout]) -> list[np.ndarray]:
    """A detector that fires exactly at the first row of every window."""
    out = []
    for lay in layouts:
        s = np.zeros(lay.n_rows)
        if len(lay.windows):
            s[np.asarray(lay.windows)[:, 0]] = 1.0
        out.append(s)
    return out


# ---------------------------------------------------------------- loading (I/O at the edge)


def read_series(path: Path) -> tuple[list[str], np.ndarray]:
    """Read a ``timestamp,value`` CSV (extra columns ignored)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    body = rows[1:]
    return [r[0] for r in body], np.array([float(r[1]) for r in body], dtype=np.float64)


def load_windows(nab_dir: Path) -> dict[str, list[list[str]]]:
    with (nab_dir / "labels" / "combined_windows.json").open() as fh:
        data: dict[str, list[list[str]]] = json.load(fh)
    return data


def data_files(nab_dir: Path) -> list[str]:
    """Corpus keys ``<category>/<file>.csv``, sorted."""
    root = nab_dir / "data"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.csv"))


def layout_for(key: str, timestamps: Sequence[str], windows: Sequence[Sequence[str]]) -> FileLayout:
    pos = {ts[:19]: i for i, ts in enumerate(timestamps)}
    idx = []
    for start, end in windows:
        try:
            idx.append((pos[start[:19]], pos[end[:19]]))
        except KeyError as exc:
            raise ValueError(f"{key}: window edge {exc} is not a row timestamp") from exc
    arr = np.array(idx, dtype=np.int64).reshape(-1, 2)
    return FileLayout(key=key, n_rows=len(timestamps), windows=arr)


def load_corpus(nab_dir: Path) -> tuple[list[FileLayout], list[np.ndarray]]:
    """All files' layouts and values, in ``data_files`` order."""
    windows = load_windows(nab_dir)
    layouts, values = [], []
    for key in data_files(nab_dir):
        ts, vals = read_series(nab_dir / "data" / key)
        layouts.append(layout_for(key, ts, windows.get(key, [])))
        values.append(vals)
    return layouts, values


def result_path(results_dir: Path, detector: str, key: str) -> Path:
    category, fname = key.split("/", 1)
    return results_dir / detector / category / f"{detector}_{fname}"


def read_result_scores(results_dir: Path, detector: str, keys: Iterable[str]) -> list[np.ndarray]:
    out = []
    for key in keys:
        with result_path(results_dir, detector, key).open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            col = header.index("anomaly_score")
            out.append(np.array([float(r[col]) for r in reader], dtype=np.float64))
    return out


def score_results(
    nab_dir: Path, detector: str, results_dir: Path | None = None, layouts: Sequence[FileLayout] | None = None
) -> dict[str, CorpusScore]:
    """Score a detector's NAB-format result files (default: ``nab_dir/results``)."""
    lays = list(layouts) if layouts is not None else load_corpus(nab_dir)[0]
    scores = read_result_scores(results_dir or nab_dir / "results", detector, [x.key for x in lays])
    return score_all(lays, scores)


def summary_line(scores: Mapping[str, CorpusScore]) -> str:
    return "nab: standard={:.2f} low_fp={:.2f} low_fn={:.2f}".format(
        scores["standard"].normalized,
        scores["reward_low_FP_rate"].normalized,
        scores["reward_low_FN_rate"].normalized,
    )


def score_at(layouts: Sequence[FileLayout], scores: Sequence[np.ndarray], profile: Profile | str,
             threshold: float) -> CorpusScore:
    """The corpus score at a threshold chosen elsewhere (no optimisation on these files)."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    thresholds, raws = sweep(layouts, scores, prof)
    # candidates are +inf then distinct scores descending: "score >= t" detects what the smallest
    # candidate >= t detects
    i = int(np.flatnonzero(thresholds >= threshold)[-1])
    n_windows = sum(len(x.windows) for x in layouts)
    return CorpusScore(prof.name, float(threshold), float(raws[i]), -prof.a_fn * n_windows, prof.a_tp * n_windows)


def half_split(layouts: Sequence[FileLayout]) -> tuple[list[int], list[int]]:
    """Indices of the files in odd (1st, 3rd, ...) and even (2nd, 4th, ...) positions of the sorted keys."""
    order = sorted(range(len(layouts)), key=lambda i: layouts[i].key)
    return order[0::2], order[1::2]


def half_corpus(layouts: Sequence[FileLayout], scores: Sequence[np.ndarray],
                profile: Profile | str = "standard") -> CorpusScore:
    """Out-of-sample figure: the threshold chosen on the files in odd positions, scored on the even ones."""
    odd, even = half_split(layouts)
    chosen = score_corpus([layouts[i] for i in odd], [scores[i] for i in odd], profile)
    return score_at([layouts[i] for i in even], [scores[i] for i in even], profile, chosen.threshold)
