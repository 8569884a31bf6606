"""Open data: district-by-day aggregates a city can publish, computed from per-pole hourly aggregates.

Pure: values in, values out (the store reading is in :mod:`ingest.opendata_io`, the files in
:mod:`ingest.publish`). The input is what every store can give cheaply: one :class:`PoleHour` per pole
and hour (min/max/sum/count per metric, the shape of the ``telemetry_1h`` rollup), the alarm state
changes of the ``alerts`` measurement and the poles' last known status (district, location, rated
power). The output holds district-level aggregates only; privacy rules (suppression below
``min_poles`` reporting poles, no pole ids, no time finer than a day) are applied here, so no caller
can forget them. docs/open-data.md defines every figure.

Definitions, in local time (``utc_offset_h``; an hour belongs to the local date it starts on):

* **night hour** of a pole: an hour throughout which the lamp was commanded on (``dimming_pct`` min
  > 0), or, for a pole that does not report dimming, whose brightest ambient light stayed below
  ``DUSK_LUX``. The lamp was **lit as scheduled** in that hour when its mean power reached
  ``LIT_FRACTION`` of the rated power times the mean commanded level (the catalog's lamp-failure rule).
* **the night of date D** runs from 12:00 on D to 12:00 on D+1: lighting figures of D describe it.
  A pole is **dark** on a night when it was lit in less than half of that night's night hours that
  it reported; ``poles_dark_multi_night`` counts the poles dark on the night of D and the night before.
* **completeness**: readings received / readings expected. Expected: every known pole of the
  district (seen in ``status`` before the end of the range, or reporting in it), every hour, one
  reading per reporting interval (the pole's ``interval_s`` from its status, else
  ``Params.interval_s``); received per pole-hour: the largest count among the metrics read, capped
  at the expected count.
* **environment**: the daily mean of every reading of the district (count-weighted), against the WHO
  2021 24-hour guideline the catalog cites; noise: the energy average of hourly levels over the day
  (07-19) and night (23-07) periods of the Environmental Noise Directive.
* **fault response**: alarms raised on D per kind; minutes from raise to clear for those that cleared
  before the end of the range (median and 90th percentile, linear interpolation); ``open_at_end``
  the rest.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from contract import catalog
from ingest.rollup import Agg

NS = 1_000_000_000
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS
DUSK_LUX = 20.0  # as the gateway's lamp-on context (gateway.detect.rules.RuleParams.dusk_lux)
LIT_FRACTION = 0.8  # the catalog's lamp_failure rule: under 80 % of the expected power is not lit
NIGHT_STARTS_H = 12  # the night of date D: 12:00 on D to 12:00 on D+1
DAY_PERIOD = range(7, 19)  # Environmental Noise Directive: Lday 07-19, Lnight 23-07
NIGHT_PERIOD = (23, 0, 1, 2, 3, 4, 5, 6)
AIR = ("pm25_ugm3", "pm10_ugm3", "no2_ugm3")
NOISE = "noise_db"
LAMP = ("lamp_power_w", "dimming_pct", "illuminance_lux")
#: the metrics publication reads from the store
METRICS: tuple[str, ...] = (*LAMP, *AIR, NOISE)


def who_guideline(metric: str) -> float:
    """The WHO 2021 24-hour guideline of ``metric``: its catalog threshold on a 24-hour mean with the
    lowest trigger level (interim targets are higher)."""
    levels = [t.value for t in catalog.metric(metric).thresholds
              if t.mean_over_s == catalog.DAY_S and t.op == ">="]
    if not levels:
        raise ValueError(f"the catalog cites no 24-hour guideline for {metric}")
    return min(levels)


# --- input values ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PoleHour:
    district: str
    pole: str
    start_ns: int  # UTC hour start
    aggs: Mapping[str, Agg]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    district: str
    pole: str
    kind: str
    key: str
    state: str  # raised | cleared
    ts_ns: int


@dataclass(frozen=True, slots=True)
class PoleInfo:
    district: str
    pole: str
    lat: float | None = None
    lon: float | None = None
    rated_power_w: float | None = None
    interval_s: float | None = None  # the pole's reporting interval, as its birth message says


@dataclass(frozen=True, slots=True)
class Params:
    since: date  # first local date published
    until: date  # first local date not published
    utc_offset_h: int = 0
    interval_s: float = 60.0
    min_poles: int = 5

    def __post_init__(self) -> None:
        if not self.since < self.until:
            raise ValueError("--until must be after --since")
        if not -14 <= self.utc_offset_h <= 14:
            raise ValueError("the UTC offset must be between -14 and 14 hours")
        if not (math.isfinite(self.interval_s) and 0 < self.interval_s <= 3600):
            raise ValueError("the reporting interval must be between 0 and 3600 s")
        if self.min_poles < 1:
            raise ValueError("min_poles must be at least 1")

    def days(self) -> list[date]:
        return [self.since + timedelta(days=i) for i in range((self.until - self.since).days)]

    def local_ns(self, d: date, hour: int = 0) -> int:
        """UTC ns of local midnight (+ ``hour``) of ``d``."""
        midnight = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * NS
        return midnight + (hour - self.utc_offset_h) * HOUR_NS

    def read_range(self) -> tuple[int, int]:
        """The UTC range to read telemetry for: the range itself, the night before it (for the
        two-night rule) and the last night's morning after it."""
        return (self.local_ns(self.since, NIGHT_STARTS_H - 24), self.local_ns(self.until, NIGHT_STARTS_H))

    def alert_range(self) -> tuple[int, int]:
        return self.local_ns(self.since), self.local_ns(self.until)

    def expected_per_hour(self, pole: PoleInfo | None = None) -> float:
        """Readings expected per hour from ``pole`` (its own interval when its status gives one)."""
        interval = pole.interval_s if pole is not None and pole.interval_s else self.interval_s
        return 3600.0 / interval


# --- output values --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Air:
    mean: float | None
    guideline: float

    @property
    def above(self) -> bool | None:
        return None if self.mean is None else self.mean > self.guideline


@dataclass(frozen=True, slots=True)
class DistrictDay:
    day: date
    district: str
    published: bool
    reporting_poles: int = 0
    known_poles: int = 0
    expected_readings: int = 0
    received_readings: int = 0
    night_pole_hours: int = 0
    lit_pole_hours: int = 0
    poles_dark_multi_night: int = 0
    air: Mapping[str, Air] = field(default_factory=dict)
    noise_day_dba: float | None = None
    noise_night_dba: float | None = None
    alarms_raised: int = 0

    @property
    def completeness(self) -> float | None:
        return self.received_readings / self.expected_readings if self.expected_readings else None

    @property
    def lit_share(self) -> float | None:
        return self.lit_pole_hours / self.night_pole_hours if self.night_pole_hours else None


@dataclass(frozen=True, slots=True)
class FaultDay:
    day: date
    district: str
    kind: str
    raised: int
    cleared: int
    open_at_end: int
    median_min: float | None
    p90_min: float | None


@dataclass(frozen=True, slots=True)
class FaultSummary:
    """One district and alarm kind over the published days."""

    district: str
    kind: str
    raised: int
    cleared: int
    median_min: float | None
    p90_min: float | None


@dataclass(frozen=True, slots=True)
class DistrictSummary:
    """A district over the published days only (so no summary can be differenced against the daily
    rows to recover a suppressed day)."""

    district: str
    days_published: int
    days_suppressed: int
    centroid: tuple[float, float] | None  # (lon, lat), from >= min_poles located poles, rounded
    located_poles: int
    lit_share: float | None
    completeness: float | None
    air_mean: Mapping[str, float | None]
    alarms_raised: int


@dataclass(frozen=True, slots=True)
class Publication:
    params: Params
    days: list[DistrictDay]
    faults: list[FaultDay]
    districts: list[DistrictSummary]
    fault_summary: list[FaultSummary]

    @property
    def published(self) -> int:
        return sum(d.published for d in self.days)

    @property
    def suppressed(self) -> int:
        return sum(not d.published for d in self.days)


# --- the computation ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of nothing")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def energy_mean(levels: Sequence[float]) -> float:
    """Energy average of sound levels in dB: 10 log10(mean(10^(L/10)))."""
    return 10.0 * math.log10(sum(10.0 ** (x / 10.0) for x in levels) / len(levels))


def _local(ns: int, p: Params) -> datetime:
    return datetime.fromtimestamp(ns // NS + p.utc_offset_h * 3600, tz=UTC)


def _night_of(ns: int, p: Params) -> date:
    return (_local(ns, p) - timedelta(hours=NIGHT_STARTS_H)).date()


def _night_hour(h: PoleHour) -> tuple[bool, float] | None:
    """(scheduled on for the whole hour, mean commanded level %) or None when nothing tells."""
    dim = h.aggs.get("dimming_pct")
    if dim is not None and dim.count:
        return dim.min > 0, dim.mean
    lux = h.aggs.get("illuminance_lux")
    if lux is not None and lux.count:
        return lux.max < DUSK_LUX, 100.0
    return None


def _full_draw(h: PoleHour, level_pct: float) -> float:
    """The draw at full power the hour's mean implies (``power x 100 / level``); 0 without a power reading."""
    power = h.aggs.get("lamp_power_w")
    if power is None or not power.count or level_pct <= 0:
        return 0.0
    return power.mean * 100.0 / level_pct


def _lit(full_w: float, rated_w: float) -> bool:
    """Lit as scheduled: the catalog's lamp_failure rule on the hour's mean (80 % of rated x level)."""
    return full_w >= LIT_FRACTION * rated_w


def _received(h: PoleHour, cap: float) -> int:
    return int(min(max((a.count for a in h.aggs.values()), default=0), cap))


def aggregate(hours: Iterable[PoleHour], alerts: Iterable[AlertEvent], poles: Iterable[PoleInfo],
              p: Params) -> Publication:
    """Every district-day of ``p``'s range, suppressed where fewer than ``p.min_poles`` poles reported."""
    days = p.days()
    day_set = set(days)
    info = {(x.district, x.pole): x for x in poles}
    known: dict[str, set[str]] = defaultdict(set)
    for district, pole in info:
        known[district].add(pole)

    reporting: dict[tuple[date, str], set[str]] = defaultdict(set)
    received: dict[tuple[date, str], int] = defaultdict(int)
    air: dict[tuple[date, str, str], Agg] = {}
    noise: dict[tuple[date, str, str], list[float]] = defaultdict(list)
    # lighting per (night, district, pole): the full-power draw each of its night hours implies
    nights: dict[tuple[date, str, str], list[float]] = defaultdict(list)
    caps: dict[tuple[str, str], float] = {}
    lo_ns, hi_ns = p.alert_range()
    for h in hours:
        known[h.district].add(h.pole)
        sched = _night_hour(h)
        if sched is not None and sched[0]:
            nights[(_night_of(h.start_ns, p), h.district, h.pole)].append(_full_draw(h, sched[1]))
        if not lo_ns <= h.start_ns < hi_ns:
            continue
        local = _local(h.start_ns, p)
        key = (local.date(), h.district)
        reporting[key].add(h.pole)
        ident = (h.district, h.pole)
        if ident not in caps:
            caps[ident] = p.expected_per_hour(info.get(ident))
        received[key] += _received(h, caps[ident])
        for m in AIR:
            a = h.aggs.get(m)
            if a is not None and a.count:
                have = air.get((*key, m))
                if have is None:
                    air[(*key, m)] = Agg(a.min, a.max, a.sum, a.count)
                else:
                    have.merge(a)
        n = h.aggs.get(NOISE)
        if n is not None and n.count:
            if local.hour in DAY_PERIOD:
                noise[(*key, "day")].append(n.mean)
            elif local.hour in NIGHT_PERIOD:
                noise[(*key, "night")].append(n.mean)

    # a pole's rating: the declared one; else, as the gateway judges it, the draw it was seen lit at (its
    # brightest night hour in the read, the floor if it never showed more): the old 120 W default called
    # every unrated lamp under 96 W dark, every night
    brightest: dict[tuple[str, str], float] = defaultdict(lambda: catalog.UNRATED_FLOOR_W)
    for (_night, district, pole), draws in nights.items():
        brightest[(district, pole)] = max(brightest[(district, pole)], *draws)

    def rated(pole: tuple[str, str]) -> float:
        declared = info[pole].rated_power_w if pole in info else None
        return declared or brightest[pole]

    tally = {k: (len(draws), sum(_lit(w, rated(k[1:])) for w in draws)) for k, draws in nights.items()}
    dark = {k for k, (n_h, lit) in tally.items() if n_h and lit < n_h / 2}
    lighting: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for (night, district, pole), (n_h, lit) in tally.items():
        if night not in day_set:
            continue
        t = lighting[(night, district)]
        t[0] += n_h
        t[1] += lit
        if (night, district, pole) in dark and (night - timedelta(days=1), district, pole) in dark:
            t[2] += 1

    faults, raised_per_day, durations = _faults(alerts, p)
    rows: list[DistrictDay] = []
    districts = sorted(known)
    for d in days:
        for district in districts:
            key = (d, district)
            n_rep = len(reporting.get(key, ()))
            if n_rep < p.min_poles:
                rows.append(DistrictDay(d, district, published=False))
                continue
            n_known = len(known[district])
            per_hour = sum(p.expected_per_hour(info.get((district, q))) for q in known[district])
            light = lighting.get(key, [0, 0, 0])
            rows.append(DistrictDay(
                d, district, published=True, reporting_poles=n_rep, known_poles=n_known,
                expected_readings=round(24 * per_hour), received_readings=received[key],
                night_pole_hours=light[0], lit_pole_hours=light[1], poles_dark_multi_night=light[2],
                air={m: Air(air[(d, district, m)].mean if (d, district, m) in air else None, who_guideline(m))
                     for m in AIR},
                noise_day_dba=_energy_or_none(noise.get((d, district, "day"))),
                noise_night_dba=_energy_or_none(noise.get((d, district, "night"))),
                alarms_raised=raised_per_day.get(key, 0)))
    published = {(r.day, r.district) for r in rows if r.published}
    faults = [f for f in faults if (f.day, f.district) in published]
    summaries = [_summary(district, [r for r in rows if r.district == district],
                          _poles_on_published_days(reporting, published, district), info, air, p)
                 for district in districts]
    by_kind: dict[tuple[str, str], list[float]] = defaultdict(list)
    raised_kind: dict[tuple[str, str], int] = defaultdict(int)
    for f in faults:
        raised_kind[(f.district, f.kind)] += f.raised
        by_kind[(f.district, f.kind)] += durations.get((f.day, f.district, f.kind), [])
    fault_summary = [FaultSummary(district, kind, n, len(by_kind[(district, kind)]),
                                  percentile(by_kind[(district, kind)], 50) if by_kind[(district, kind)] else None,
                                  percentile(by_kind[(district, kind)], 90) if by_kind[(district, kind)] else None)
                     for (district, kind), n in sorted(raised_kind.items())]
    return Publication(p, rows, faults, summaries, fault_summary)


def _energy_or_none(levels: list[float] | None) -> float | None:
    return energy_mean(levels) if levels else None


def _poles_on_published_days(reporting: Mapping[tuple[date, str], set[str]], published: set[tuple[date, str]],
                district: str) -> set[str]:
    """The poles that reported on a published day of ``district``."""
    out: set[str] = set()
    for key, ps in reporting.items():
        if key[1] == district and key in published:
            out |= ps
    return out


Durations = dict[tuple[date, str, str], list[float]]


def _faults(alerts: Iterable[AlertEvent], p: Params
            ) -> tuple[list[FaultDay], dict[tuple[date, str], int], Durations]:
    lo_ns, hi_ns = p.alert_range()
    open_: dict[tuple[str, str, str], tuple[int, str, str]] = {}  # (district, pole, key) -> raise
    durations: Durations = defaultdict(list)
    raised: dict[tuple[date, str, str], int] = defaultdict(int)
    for e in sorted(alerts, key=lambda e: (e.ts_ns, e.district, e.pole, e.key, e.state)):
        if not lo_ns <= e.ts_ns < hi_ns:
            continue
        ident = (e.district, e.pole, e.key)
        if e.state == "raised":
            if ident in open_:
                continue  # a repeated raise of an open alarm is the same alarm
            open_[ident] = (e.ts_ns, e.kind, e.district)
            raised[(_local(e.ts_ns, p).date(), e.district, e.kind)] += 1
        elif e.state == "cleared" and ident in open_:
            t0, kind, district = open_.pop(ident)
            durations[(_local(t0, p).date(), district, kind)].append((e.ts_ns - t0) / (60 * NS))
    out: list[FaultDay] = []
    per_day: dict[tuple[date, str], int] = defaultdict(int)
    for (d, district, kind), n in sorted(raised.items()):
        ds = durations.get((d, district, kind), [])
        out.append(FaultDay(d, district, kind, n, len(ds), n - len(ds),
                            percentile(ds, 50) if ds else None, percentile(ds, 90) if ds else None))
        per_day[(d, district)] += n
    return out, per_day, durations


def _summary(district: str, rows: list[DistrictDay], poles_seen: set[str],
             info: Mapping[tuple[str, str], PoleInfo], air: Mapping[tuple[date, str, str], Agg],
             p: Params) -> DistrictSummary:
    pub = [r for r in rows if r.published]
    located = [info[(district, q)] for q in sorted(poles_seen) if (district, q) in info
               and info[(district, q)].lat is not None and info[(district, q)].lon is not None]
    centroid = None
    if len(located) >= p.min_poles:
        centroid = (round(sum(x.lon or 0.0 for x in located) / len(located), 3),
                    round(sum(x.lat or 0.0 for x in located) / len(located), 3))
    night = sum(r.night_pole_hours for r in pub)
    expected = sum(r.expected_readings for r in pub)
    air_mean: dict[str, float | None] = {}
    for m in AIR:
        aggs = [air[(r.day, district, m)] for r in pub if (r.day, district, m) in air]
        n = sum(a.count for a in aggs)
        air_mean[m] = sum(a.sum for a in aggs) / n if n else None
    return DistrictSummary(
        district, len(pub), len(rows) - len(pub), centroid, len(located) if centroid else 0,
        sum(r.lit_pole_hours for r in pub) / night if night else None,
        sum(r.received_readings for r in pub) / expected if expected else None,
        air_mean, sum(r.alarms_raised for r in pub))
