"""Score alarms against ground truth (pure): precision, recall, detection latency, false-alarm rate.

Inputs are fault labels ``(pole, metric, kind, start_ms, end_ms)`` (see :mod:`simulator.faults`) and
alarm intervals ``(pole, metric, kind, raised_ms, cleared_ms)``.

Matching
    An alarm *matches* a label when all of these hold:

    * same pole;
    * compatible kind: ``alarm.kind`` is in ``COMPATIBLE[label.kind]`` (a label kind is always
      compatible with an alarm of the same name; e.g. a ``knockdown`` label is found by a ``tilt``
      alarm, a ``stuck`` label by an ``anomaly`` alarm);
    * compatible metric: either side has no metric, or both name the same metric;
    * raised inside the label's window widened by the grace: ``start_ms <= raised_ms <= end_ms + grace_ms``
      (``grace_ms`` defaults to ``GRACE_STEPS`` samples; a detector needs a few samples after the end).

    When an alarm matches several labels, it is given to the one that started first (then pole,
    kind, metric order); an alarm counts once.

Per fault kind K
    * ``labels``: labels of kind K; ``detected``: those matched by at least one alarm;
    * ``recall = detected / labels``;
    * ``tp``: alarms given to a label of kind K (several alarms on one label are all true: a flapping
      alarm inside a fault is not a false alarm); ``fp``: alarms that match no label at all and whose
      kind is compatible with K (an unmatched ``anomaly`` alarm is a false alarm for every kind it
      could have detected); ``precision = tp / (tp + fp)``, NaN when there are no such alarms;
    * latency of a detected label = first matching ``raised_ms`` - ``start_ms`` (>= 0); reported as the
      median (mean of the two middle values for an even count) and the 95th percentile by nearest rank
      (the ``ceil(0.95 n)``-th smallest), in ms and in samples (ms / ``step_ms``); NaN if none detected;
    * ``false_alarms_per_1000_pole_days = fp / pole_days * 1000``.

The end of a run is not an event: with ``end_ms`` (the last sample's device time) an ``offline`` alarm
raised after it (every pole falls silent when the simulator stops) is not scored at all.

The ``overall`` row counts every label and every alarm once: tp = all matched alarms, fp = all
unmatched alarms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from simulator.faults import KINDS, Label

DAY_MS = 86_400_000
GRACE_STEPS = 6

#: Which alarm kinds detect which fault kind (besides an alarm of the fault kind's own name).
#: Alarm kinds are the catalog's threshold kinds plus detector kinds ("anomaly", "stuck", ...).
COMPATIBLE: Mapping[str, frozenset[str]] = {
    "leakage": frozenset({"leakage", "anomaly"}),
    "tilt_lean": frozenset({"tilt", "tilt_trend", "anomaly"}),
    "knockdown": frozenset({"tilt", "tilt_trend", "anomaly"}),
    "flood": frozenset({"flood", "anomaly"}),
    "overheat": frozenset({"overheat", "anomaly"}),
    "smoke": frozenset({"smoke"}),
    "door_forced": frozenset({"door_open"}),
    "lamp_failure": frozenset({"lamp_failure", "anomaly"}),
    "flicker": frozenset({"lamp_failure", "anomaly"}),
    "voltage_sag": frozenset({"voltage_low", "anomaly"}),
    "voltage_surge": frozenset({"voltage_high", "anomaly"}),
    "backhaul_down": frozenset({"backhaul_down"}),
    # a sensor named broken is found whichever way it is named: a sensor drifting to the end of its
    # range reads a constant there (stuck), a stuck one walks away from its peers (drift)
    "stuck": frozenset({"anomaly", "flatline", "drift"}),
    # one inclinometer cannot tell its own drift from a lean (the same slow ramp in the same noise):
    # ``tilt_trend`` says "pole leaning or tilt sensor drifting" and finds a tilt drift (same metric)
    "drift": frozenset({"anomaly", "stuck", "tilt_trend"}),
    "sensor_dropout": frozenset(),
    # a pole whose messages are lost for longer than its silence limit *is* offline to the gateway
    "dropout": frozenset({"gap", "stale", "offline"}),
    "offline": frozenset({"offline", "stale", "gap"}),
    "clock_skew": frozenset({"ts_future", "ts_past"}),
    "duplicate": frozenset(),
    "malformed": frozenset(),
    "hostile": frozenset(),
}


#: Gateway alarm kinds -> the names the ground truth and :data:`COMPATIBLE` use. One table for every
#: reader of the gateway's alarms (``bench.eval`` in process, ``simulator.alarms_io`` from a store):
#: ``sensor_suspect`` (one pole's sensor disagrees with its district) is a sensor anomaly,
#: ``sensor_stuck``/``sensor_drift`` are the sensor faults of the same name.
KIND_ALIASES: Mapping[str, str] = {
    "pole_offline": "offline",
    "lamp_flicker": "flicker",
    "sensor_suspect": "anomaly",
    "sensor_stuck": "stuck",
    "sensor_drift": "drift",
}


def alarm_kind(gateway_kind: str) -> str:
    """The score's name for a gateway alarm kind (unchanged when it has no alias)."""
    return KIND_ALIASES.get(gateway_kind, gateway_kind)


class Alarm(NamedTuple):
    pole: str
    metric: str | None
    kind: str
    raised_ms: int
    cleared_ms: int | None = None


@dataclass(frozen=True, slots=True)
class KindScore:
    kind: str
    labels: int
    detected: int
    tp: int
    fp: int
    precision: float
    recall: float
    latency_median_ms: float
    latency_p95_ms: float
    latency_median_samples: float
    latency_p95_samples: float
    false_alarms_per_1000_pole_days: float

    @property
    def latency_median_min(self) -> float:
        """Median latency in minutes of device time."""
        return self.latency_median_ms / 60_000.0

    @property
    def latency_p95_min(self) -> float:
        return self.latency_p95_ms / 60_000.0


@dataclass(frozen=True, slots=True)
class Score:
    per_kind: dict[str, KindScore]
    overall: KindScore
    pole_days: float
    grace_ms: int
    unmatched: tuple[Alarm, ...]  # the false alarms

    def summary_line(self) -> str:
        o = self.overall
        return (f"faults: precision={o.precision:.3f} recall={o.recall:.3f} "
                f"latency_p50_s={o.latency_median_ms / 1000:.1f} latency_p95_s={o.latency_p95_ms / 1000:.1f} "
                f"fa_per_1000_pole_days={o.false_alarms_per_1000_pole_days:.2f}")


def compatible(label: Label, alarm: Alarm) -> bool:
    if alarm.pole != label.pole:
        return False
    if alarm.kind != label.kind and alarm.kind not in COMPATIBLE.get(label.kind, frozenset()):
        return False
    return label.metric is None or alarm.metric is None or label.metric == alarm.metric


def _median(xs: Sequence[float]) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


def _p95(xs: Sequence[float]) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return float(s[max(math.ceil(0.95 * len(s)), 1) - 1])


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def score(labels: Iterable[Label | Sequence[object]], alarms: Iterable[Alarm | Sequence[object]], *,
          step_ms: int, pole_days: float, grace_ms: int | None = None,
          kinds: Sequence[str] | None = None, end_ms: int | None = None) -> Score:
    """Score ``alarms`` against ``labels`` (see the module docstring for the exact rules).

    ``pole_days`` is the observed exposure (poles x days of the run), for the false-alarm rate.
    ``kinds`` lists the rows to report (default: every kind that has a label or a compatible alarm).
    ``end_ms``: device time of the run's last sample. An ``offline`` alarm raised after it is the run
    stopping, not an event of the city: it is left out (neither true nor false).
    """
    if step_ms <= 0 or pole_days <= 0:
        raise ValueError("step_ms and pole_days must be > 0")
    grace = GRACE_STEPS * step_ms if grace_ms is None else grace_ms
    lbs = sorted((Label(*x) for x in labels), key=lambda lb: (lb.start_ms, lb.pole, lb.kind, lb.metric or ""))
    als = [Alarm(*x) for x in alarms]
    if end_ms is not None:
        als = [a for a in als if not (a.kind == "offline" and a.raised_ms > end_ms)]
    by_pole: dict[str, list[int]] = {}
    for j, lb in enumerate(lbs):
        by_pole.setdefault(lb.pole, []).append(j)

    owner: list[int | None] = []
    first: dict[int, int] = {}  # label -> earliest matching raised_ms
    for a in als:
        got = None
        for j in by_pole.get(a.pole, ()):
            lb = lbs[j]
            if lb.start_ms <= a.raised_ms <= lb.end_ms + grace and compatible(lb, a):
                got = j
                break
        owner.append(got)
        if got is not None:
            first[got] = min(first.get(got, a.raised_ms), a.raised_ms)

    unmatched = tuple(a for a, o in zip(als, owner, strict=True) if o is None)
    report_kinds = list(kinds) if kinds is not None else [
        k for k in KINDS
        if any(lb.kind == k for lb in lbs)
        or any(a.kind == k or a.kind in COMPATIBLE.get(k, ()) for a in als)
    ]
    report_kinds += sorted({lb.kind for lb in lbs} - set(KINDS) - set(report_kinds))

    def row(kind: str, label_ix: list[int], tp: int, fp: int) -> KindScore:
        lat = [float(first[j] - lbs[j].start_ms) for j in label_ix if j in first]
        med, p95 = _median(lat), _p95(lat)
        return KindScore(kind, len(label_ix), len(lat), tp, fp, _ratio(tp, tp + fp),
                         _ratio(len(lat), len(label_ix)), med, p95, med / step_ms, p95 / step_ms,
                         fp / pole_days * 1000.0)

    per_kind: dict[str, KindScore] = {}
    for k in report_kinds:
        ix = [j for j, lb in enumerate(lbs) if lb.kind == k]
        tp = sum(1 for o in owner if o is not None and lbs[o].kind == k)
        fp = sum(1 for a in unmatched if a.kind == k or a.kind in COMPATIBLE.get(k, ()))
        per_kind[k] = row(k, ix, tp, fp)
    overall = row("overall", list(range(len(lbs))), sum(o is not None for o in owner), len(unmatched))
    return Score(per_kind, overall, pole_days, grace, unmatched)


def pole_days(n_poles: int, start_ms: int, end_ms: int) -> float:
    return n_poles * (end_ms - start_ms) / DAY_MS
