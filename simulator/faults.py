"""Faults with ground truth: what goes wrong on a pole, when, and the label a detector is scored on.

A :class:`Fault` is active on ``start_ms <= t < end_ms``. Two levels:

* **signal faults** change the fleet's sample array (``apply_signal_faults``, called by
  :meth:`simulator.signals.SignalModel.sample`): leakage rising, slow lean and knock-down, flood,
  cabinet overheating and smoke, door forced open, lamp failure and flicker, voltage sag/surge,
  backhaul down, stuck and drifting sensors, a safety sensor that stops answering (``sensor_dropout``:
  its driver reports an error value outside the valid range, which the decoder refuses). Safety
  faults really cross the catalog's critical threshold with their default magnitudes (leakage
  >= 30 mA, tilt >= 5 deg beyond baseline, water >= 15 cm, cabinet >= 75 degC, lamp power far under
  80 % of rated, voltage beyond +/-15 %), but ``random_faults`` draws sizes from ranges that start
  just above the *warning* tier (leakage 16 mA, lean 2.3 deg, water 6 cm, cabinet 62 degC, voltage
  0.84 / 1.16 of nominal), so a fault that stays below critical is part of every evaluation.
* **delivery faults** change the message stream (:mod:`simulator.stream`): dropout (messages lost at
  random), offline (nothing sent; the pole reboots when it comes back), clock skew (device time
  shifted by ``magnitude`` ms), duplicate delivery, malformed and hostile payloads.

``magnitude`` is per kind (see ``SPECS``): a peak value, a factor, a probability or a skew in ms;
``None`` means the kind's default. Labels (pole, metric, kind, start_ms, end_ms) are written and read
as CSV with :func:`write_labels` / :func:`read_labels`; the writer sorts, so the same faults always
give the same bytes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from contract.catalog import BY_NAME, INDEX, METRICS
from simulator.sun import sun_elevation_deg

if TYPE_CHECKING:
    from simulator.city import City

Level = Literal["signal", "delivery"]
MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class KindSpec:
    level: Level
    metric: str | None  # the metric the fault shows on; None: chosen per fault (sensor) or delivery
    duration_ms: tuple[int, int]
    magnitude: tuple[float, float]  # range random_faults draws from; the default is the midpoint
    night: bool = False  # random_faults starts it after dark (only visible while the lamp is lit)
    weight: float = 1.0


#: Every fault kind. Sensor faults (stuck, drift) pick a metric from ``SENSOR_FAULT_METRICS``.
SPECS: dict[str, KindSpec] = {
    "leakage": KindSpec("signal", "leakage_current_ma", (20 * MIN_MS, 6 * HOUR_MS), (16.0, 90.0)),
    "tilt_lean": KindSpec("signal", "tilt_deg", (2 * HOUR_MS, 2 * DAY_MS), (2.3, 9.0)),
    "knockdown": KindSpec("signal", "tilt_deg", (30 * MIN_MS, DAY_MS), (25.0, 85.0), weight=0.5),
    "flood": KindSpec("signal", "water_level_cm", (HOUR_MS, 12 * HOUR_MS), (6.0, 60.0)),
    "overheat": KindSpec("signal", "cabinet_temp_c", (30 * MIN_MS, 4 * HOUR_MS), (62.0, 95.0)),
    "smoke": KindSpec("signal", "smoke", (10 * MIN_MS, HOUR_MS), (1.0, 1.0), weight=0.3),
    "door_forced": KindSpec("signal", "door_open", (5 * MIN_MS, 2 * HOUR_MS), (1.0, 1.0), night=True),
    "lamp_failure": KindSpec("signal", "lamp_power_w", (6 * HOUR_MS, 3 * DAY_MS), (0.2, 0.6), night=True),
    "flicker": KindSpec("signal", "lamp_power_w", (HOUR_MS, 12 * HOUR_MS), (0.3, 0.6), night=True),
    "voltage_sag": KindSpec("signal", "supply_voltage_v", (5 * MIN_MS, 2 * HOUR_MS), (0.72, 0.84)),
    "voltage_surge": KindSpec("signal", "supply_voltage_v", (5 * MIN_MS, HOUR_MS), (1.16, 1.25)),
    "backhaul_down": KindSpec("signal", "backhaul_up", (10 * MIN_MS, 4 * HOUR_MS), (0.0, 0.0)),
    "stuck": KindSpec("signal", None, (HOUR_MS, DAY_MS), (0.0, 0.0)),
    "drift": KindSpec("signal", None, (6 * HOUR_MS, 3 * DAY_MS), (20.0, 40.0)),  # x catalog noise
    # one safety sensor stops answering while its pole reports: its driver returns an error code outside
    # the valid range, which the gateway's decoder refuses (that one value), so the metric goes missing
    "sensor_dropout": KindSpec("signal", None, (30 * MIN_MS, 12 * HOUR_MS), (0.0, 0.0), weight=0.5),
    "dropout": KindSpec("delivery", None, (10 * MIN_MS, 3 * HOUR_MS), (0.3, 0.8)),
    "offline": KindSpec("delivery", None, (10 * MIN_MS, 6 * HOUR_MS), (0.0, 0.0)),
    "clock_skew": KindSpec("delivery", None, (30 * MIN_MS, DAY_MS), (90_000.0, 2 * HOUR_MS)),
    "duplicate": KindSpec("delivery", None, (10 * MIN_MS, 2 * HOUR_MS), (0.5, 1.0)),
    "malformed": KindSpec("delivery", None, (10 * MIN_MS, HOUR_MS), (0.1, 0.5)),
    "hostile": KindSpec("delivery", None, (10 * MIN_MS, HOUR_MS), (0.1, 0.5), weight=0.5),
}
KINDS: tuple[str, ...] = tuple(SPECS)
SIGNAL_KINDS: tuple[str, ...] = tuple(k for k, s in SPECS.items() if s.level == "signal")
DELIVERY_KINDS: tuple[str, ...] = tuple(k for k, s in SPECS.items() if s.level == "delivery")
#: Metrics a stuck or drifting sensor can hit: noisy float readings (not commands, not switches).
SENSOR_FAULT_METRICS: tuple[str, ...] = tuple(
    m.name for m in METRICS if m.dtype == "float" and m.signal.noise > 0 and m.name != "dimming_pct"
)
#: Metrics a sensor dropout can hit: the safety sensors (fast-path ones and the float channels a
#: threshold judges), whose silence blinds a safety rule.
DROPOUT_FAULT_METRICS: tuple[str, ...] = tuple(
    m.name for m in METRICS if m.critical or (m.group == "safety" and m.dtype == "float" and m.thresholds)
)
#: What a dead sensor's driver reports: a value just below the valid range (the decoder refuses it).
DEAD_VALUE: dict[str, float] = {m.name: m.lo - 1.0 for m in METRICS}


def fault_metrics(kind: str) -> tuple[str, ...]:
    """The metrics a fault of ``kind`` without a fixed metric may be put on."""
    return DROPOUT_FAULT_METRICS if kind == "sensor_dropout" else SENSOR_FAULT_METRICS


@dataclass(frozen=True, slots=True)
class Fault:
    pole: str
    metric: str | None
    kind: str
    start_ms: int
    end_ms: int
    magnitude: float | None = None

    def __post_init__(self) -> None:
        spec = SPECS.get(self.kind)
        if spec is None:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(KINDS)}")
        if not self.start_ms < self.end_ms:
            raise ValueError(f"{self.kind} on {self.pole}: start_ms must be before end_ms")
        if spec.level == "delivery" and self.metric is not None:
            raise ValueError(f"{self.kind} is a delivery fault: it has no metric")
        if spec.level == "signal":
            if self.metric is None:
                raise ValueError(f"{self.kind} needs a metric")
            if spec.metric is not None and self.metric != spec.metric:
                raise ValueError(f"{self.kind} shows on {spec.metric}, not {self.metric}")
            if spec.metric is None and self.metric not in fault_metrics(self.kind):
                raise ValueError(f"{self.kind}: {self.metric!r} is not a {self.kind} metric")
        if self.magnitude is not None and not math.isfinite(self.magnitude):
            raise ValueError("magnitude must be finite")

    @classmethod
    def make(cls, kind: str, pole: str, start_ms: int, end_ms: int, *, metric: str | None = None,
             magnitude: float | None = None) -> Fault:
        """A fault with the kind's own metric filled in (sensor faults need ``metric``)."""
        spec = SPECS.get(kind)
        if spec is None:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
        return cls(pole, metric if metric is not None else spec.metric, kind, start_ms, end_ms, magnitude)

    @property
    def level(self) -> Level:
        return SPECS[self.kind].level

    @property
    def mag(self) -> float:
        """The magnitude, or the kind's default."""
        if self.magnitude is not None:
            return self.magnitude
        if self.kind == "drift":
            return 30.0 * BY_NAME[self.metric or ""].signal.noise
        lo, hi = SPECS[self.kind].magnitude
        return (lo + hi) / 2.0

    def active(self, t_ms: int) -> bool:
        return self.start_ms <= t_ms < self.end_ms

    @property
    def label(self) -> Label:
        return Label(self.pole, self.metric, self.kind, self.start_ms, self.end_ms)


class Label(NamedTuple):
    pole: str
    metric: str | None
    kind: str
    start_ms: int
    end_ms: int


# --- labels CSV -------------------------------------------------------------------------------
LABEL_FIELDS = ("pole", "metric", "kind", "start_ms", "end_ms")


def _label_key(lb: Label) -> tuple[int, str, str, str, int]:
    return (lb.start_ms, lb.pole, lb.kind, lb.metric or "", lb.end_ms)


def labels_csv(items: Iterable[Fault | Label]) -> str:
    """The labels CSV text (header, sorted rows, ``\\n`` line ends; empty metric for None)."""
    labels = sorted((x.label if isinstance(x, Fault) else x for x in items), key=_label_key)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LABEL_FIELDS)
    for lb in labels:
        w.writerow((lb.pole, lb.metric or "", lb.kind, lb.start_ms, lb.end_ms))
    return buf.getvalue()


def write_labels(path: str | Path, items: Iterable[Fault | Label]) -> None:
    Path(path).write_text(labels_csv(items), encoding="utf-8", newline="")


def parse_labels(text: str) -> list[Label]:
    """Parse labels CSV text; ``ValueError`` names the bad line."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or tuple(header) != LABEL_FIELDS:
        raise ValueError(f"labels CSV must start with the header {','.join(LABEL_FIELDS)}")
    out: list[Label] = []
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        try:
            pole, metric, kind, start, end = row
            lb = Label(pole, metric or None, kind, int(start), int(end))
        except ValueError as exc:
            raise ValueError(f"labels CSV line {n}: {exc}") from exc
        if lb.start_ms >= lb.end_ms:
            raise ValueError(f"labels CSV line {n}: start_ms must be before end_ms")
        out.append(lb)
    return out


def read_labels(path: str | Path) -> list[Label]:
    return parse_labels(Path(path).read_text(encoding="utf-8"))


# --- random fault mix -------------------------------------------------------------------------
def random_faults(city: City, seed: int, start_ms: int, end_ms: int, rate: float = 0.2,
                  kinds: Sequence[str] | None = None, *, smoke_after_overheat: float = 0.6) -> list[Fault]:
    """A seeded fault mix: ``rate`` faults per pole-day on average, kinds drawn by their weights.

    Faults on one pole never overlap in time (so each shows cleanly in the signals), windows lie
    inside ``[start_ms, end_ms)``, night-only kinds start after dark, and an overheat is followed by
    smoke with probability ``smoke_after_overheat``. Sorted by (start_ms, pole, kind).
    """
    if end_ms <= start_ms:
        raise ValueError("end_ms must be after start_ms")
    kinds = tuple(kinds) if kinds is not None else KINDS
    for k in kinds:
        if k not in SPECS:
            raise ValueError(f"unknown fault kind {k!r}")
    if not kinds or rate <= 0:
        return []
    rng = np.random.default_rng([seed, 0xFA17])
    days = (end_ms - start_ms) / DAY_MS
    count = int(rng.poisson(rate * len(city) * days))
    w = np.array([SPECS[k].weight for k in kinds])
    busy: dict[str, list[tuple[int, int]]] = {}
    out: list[Fault] = []
    span = end_ms - start_ms

    def free(pole: str, s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b in busy.get(pole, ()))

    def night_start(s: int, lat: float, lon: float) -> int | None:
        for step in range(0, 48 * 6):  # look ahead up to two days, ten minutes at a time
            t = s + step * 10 * MIN_MS
            if t >= end_ms:
                return None
            if float(sun_elevation_deg(t, lat, lon)) < -6.0:
                return t
        return None

    for _ in range(count):
        kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
        spec = SPECS[kind]
        pole = city.poles[int(rng.integers(len(city)))]
        lo, hi = spec.duration_ms
        dur = min(int(rng.integers(lo, hi + 1)), span)
        s = start_ms + int(rng.integers(0, max(span - dur, 0) + 1))
        if spec.night:
            ns = night_start(s, pole.lat, pole.lon)
            if ns is None:
                continue
            s = ns
        e = min(s + dur, end_ms)
        if e - s < MIN_MS:
            continue
        metric = spec.metric
        if metric is None and spec.level == "signal":
            options = [m for m in fault_metrics(kind) if pole.has(m)]
            metric = options[int(rng.integers(len(options)))]
        if metric is not None and not pole.has(metric):
            continue
        mlo, mhi = spec.magnitude
        mag = float(rng.uniform(mlo, mhi))
        if kind == "drift":
            mag *= BY_NAME[metric or ""].signal.noise * (1.0 if rng.random() < 0.5 else -1.0)
        elif kind == "clock_skew" and rng.random() < 0.3:
            mag = -mag / 4.0  # a clock running behind: still accepted by the gateway
        mag = round(mag, 3) if kind != "clock_skew" else float(round(mag))
        if not free(pole.pole_id, s, e):
            continue
        fault = Fault(pole.pole_id, metric, kind, s, e, mag)
        busy.setdefault(pole.pole_id, []).append((s, e))
        out.append(fault)
        if kind == "overheat" and "smoke" in SPECS and rng.random() < smoke_after_overheat:
            ss = s + int(0.6 * (e - s))
            if pole.has("smoke") and e - ss >= MIN_MS:
                out.append(Fault(pole.pole_id, "smoke", "smoke", ss, e, 1.0))
    out.sort(key=lambda f: (f.start_ms, f.pole, f.kind, f.metric or ""))
    return out


# --- applying signal faults -------------------------------------------------------------------
class FaultSet:
    """Faults compiled for fast lookup per tick: which are active at ``t`` (vectorized)."""

    def __init__(self, faults: Iterable[Fault], city: City) -> None:
        self.faults: tuple[Fault, ...] = tuple(faults)
        for f in self.faults:
            p = city.pole(f.pole)
            if f.metric is not None and not p.has(f.metric):
                raise ValueError(f"{f.kind}: pole {f.pole} has no {f.metric} sensor")
        self.pole_index = np.array([city.pole(f.pole).index for f in self.faults], dtype=np.intp)
        self.starts = np.array([f.start_ms for f in self.faults], dtype=np.int64)
        self.ends = np.array([f.end_ms for f in self.faults], dtype=np.int64)
        self.is_signal = np.array([f.level == "signal" for f in self.faults], dtype=bool)
        self.signal = tuple(f for f in self.faults if f.level == "signal")
        self.delivery = tuple(f for f in self.faults if f.level == "delivery")

    def __len__(self) -> int:
        return len(self.faults)

    def active(self, t_ms: int, level: Level) -> list[int]:
        """Indices into ``faults`` of the faults of ``level`` active at ``t_ms``, in list order."""
        if not self.faults:
            return []
        mask = (self.starts <= t_ms) & (t_ms < self.ends)
        mask &= self.is_signal if level == "signal" else ~self.is_signal
        return [int(i) for i in np.flatnonzero(mask)]


@dataclass(frozen=True, slots=True)
class FaultContext:
    """What applying signal faults needs at one instant (passed in by the signal model)."""

    t_ms: int
    rng: np.random.Generator
    lamp_on: np.ndarray  # (n_poles,) bool
    clean: Callable[[int], np.ndarray]  # t_ms -> clean rounded (n_poles, n_metrics) array
    tilt_baseline: np.ndarray


_C = INDEX


def apply_signal_faults(values: np.ndarray, fs: FaultSet, ctx: FaultContext) -> None:
    """Apply the signal faults active at ``ctx.t_ms`` to the raw (unrounded) array, in place."""
    for k in fs.active(ctx.t_ms, "signal"):
        f = fs.faults[k]
        i = int(fs.pole_index[k])
        p = (ctx.t_ms - f.start_ms) / (f.end_ms - f.start_ms)
        _APPLY[f.kind](values, i, f, p, ctx)


_Apply = Callable[[np.ndarray, int, Fault, float, FaultContext], None]


def _ramp(p: float, over: float) -> float:
    return min(1.0, p / over)


def _leakage(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    c = _C["leakage_current_ma"]
    v[i, c] += (f.mag - v[i, c]) * _ramp(p, 0.25)


def _tilt_lean(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    v[i, _C["tilt_deg"]] += f.mag * p


def _knockdown(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    v[i, _C["tilt_deg"]] = ctx.tilt_baseline[i] + f.mag + ctx.rng.normal(0.0, 0.2)
    if ctx.t_ms - f.start_ms < 60_000:  # the impact
        v[i, _C["vibration_g"]] += ctx.rng.uniform(2.0, 6.0)


def _flood(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    v[i, _C["water_level_cm"]] += f.mag * _ramp(p, 0.3)


def _overheat(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    c = _C["cabinet_temp_c"]
    v[i, c] += (f.mag - v[i, c]) * _ramp(p, 0.5)


def _set_one(metric: str) -> _Apply:
    def apply(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
        v[i, _C[metric]] = 1.0
    return apply


def _lamp_power(v: np.ndarray, i: int, power: float) -> None:
    v[i, _C["lamp_power_w"]] = power
    v[i, _C["lamp_current_a"]] = power / (max(v[i, _C["supply_voltage_v"]], 1.0)
                                          * max(v[i, _C["power_factor"]], 0.1))


def _lamp_failure(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    # a dead driver: standby draw, whatever the commanded level (magnitude: residual watts)
    _lamp_power(v, i, f.mag + abs(ctx.rng.normal(0.0, 0.05)))


def _flicker(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    if ctx.lamp_on[i] and ctx.rng.random() < f.mag:  # magnitude: share of samples caught dark
        _lamp_power(v, i, v[i, _C["lamp_power_w"]] * 0.03)


def _voltage(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    c = _C["supply_voltage_v"]
    new = v[i, c] * f.mag  # the clean value carries the nominal level, load swing and noise
    v[i, _C["lamp_current_a"]] *= v[i, c] / new  # constant-power driver: current follows 1/V
    v[i, c] = new


def _backhaul_down(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    v[i, _C["backhaul_up"]] = 0.0
    v[i, _C["radio_tx_power_dbm"]] = -40.0 + ctx.rng.normal(0.0, 0.3)  # radio idles


def _stuck(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    c = _C[f.metric or ""]
    v[i, c] = ctx.clean(f.start_ms)[i, c]


def _drift(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    v[i, _C[f.metric or ""]] += f.mag * p


def _sensor_dropout(v: np.ndarray, i: int, f: Fault, p: float, ctx: FaultContext) -> None:
    v[i, _C[f.metric or ""]] = np.nan  # no reading; the signal model writes the driver's error value


_APPLY: dict[str, _Apply] = {
    "leakage": _leakage,
    "tilt_lean": _tilt_lean,
    "knockdown": _knockdown,
    "flood": _flood,
    "overheat": _overheat,
    "smoke": _set_one("smoke"),
    "door_forced": _set_one("door_open"),
    "lamp_failure": _lamp_failure,
    "flicker": _flicker,
    "voltage_sag": _voltage,
    "voltage_surge": _voltage,
    "backhaul_down": _backhaul_down,
    "stuck": _stuck,
    "drift": _drift,
    "sensor_dropout": _sensor_dropout,
}
if set(_APPLY) != set(SIGNAL_KINDS):  # pragma: no cover - a kind added without its effect
    raise RuntimeError("every signal fault kind needs an apply function")


def shifted(faults: Iterable[Fault], offset_ms: int) -> list[Fault]:
    """The same faults moved in time (scenario files give offsets from the run start)."""
    return [replace(f, start_ms=f.start_ms + offset_ms, end_ms=f.end_ms + offset_ms) for f in faults]
