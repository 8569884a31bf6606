"""Rollups: min/mean/max/count of every catalog metric per pole over 1-minute and 1-hour windows.

lampwatch computes its own rollups instead of relying on InfluxDB 1.x continuous queries or 2.x
tasks, because the same mechanism then works on 1.x, 2.x and 3.x and also covers late data (an edge
agent replaying its outbox after an outage) by simply recomputing recent windows (see docs/schema.md).

A rollup point::

    telemetry_1m,district=north,pole=p-000001 lamp_power_w_min=..,lamp_power_w_mean=..,
        lamp_power_w_max=..,lamp_power_w_count=60i,...  <window start, ns>

Its time is the window start (aligned to the epoch, so to whole UTC minutes/hours) and its tags are
the raw series' tags: recomputing a window overwrites the same points, so reruns are idempotent.

Everything here is pure (values in, values out) except :func:`run`, which takes its reader and
writers as arguments (anything with ``rows(q)`` / ``write(points)``, e.g. ``Influx1Store``).

* :func:`rollup_points` aggregates raw telemetry ``Point`` s in Python (any store, or in-stream);
* :func:`aggregate_query` is the InfluxQL that makes the server do the 1-minute aggregation, and
  :func:`points_from_aggregate_rows` turns its rows into rollup points;
* :func:`coarsen` merges finer rollups into coarser ones (1 m -> 1 h), weighting means by counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contract import catalog, schema
from contract.readings import FieldValue, Point
from ingest.influxql import ident, literal

NS = 1_000_000_000
#: window name -> length in seconds
WINDOWS: Mapping[str, int] = {"1m": 60, "1h": 3600}
#: window name -> measurement holding its rollups
MEASUREMENT: Mapping[str, str] = {"1m": "telemetry_1m", "1h": "telemetry_1h"}
#: window name -> InfluxDB 1.x retention policy (2.x: bucket "<db>/<rp>", 3.x: database "<db>/<rp>")
RETENTION_POLICY: Mapping[str, str] = {"1m": "rollup_1m", "1h": "rollup_1h"}
STATS = ("min", "mean", "max", "count")
SERIES_TAGS = ("district", "pole")


@dataclass(slots=True)
class Agg:
    """Running min/max/sum/count of one metric in one window."""

    min: float
    max: float
    sum: float
    count: int

    @classmethod
    def of(cls, value: float) -> Agg:
        return cls(value, value, value, 1)

    def add(self, value: float) -> None:
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.sum += value
        self.count += 1

    def merge(self, other: Agg) -> None:
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sum += other.sum
        self.count += other.count

    @property
    def mean(self) -> float:
        return self.sum / self.count


Key = tuple[int, tuple[tuple[str, str], ...]]  # (window start ns, sorted tags)
Table = dict[Key, dict[str, Agg]]


def window_seconds(window: str) -> int:
    try:
        return WINDOWS[window]
    except KeyError:
        raise ValueError(f"unknown rollup window {window!r}; expected one of {', '.join(WINDOWS)}") from None


def window_start(ts_ns: int, window: str) -> int:
    w = window_seconds(window) * NS
    return ts_ns - ts_ns % w


def field_names(metric: str) -> tuple[str, str, str, str]:
    """Rollup field names of one metric: ``<metric>_min/_mean/_max/_count``."""
    return f"{metric}_min", f"{metric}_mean", f"{metric}_max", f"{metric}_count"


def _to_points(table: Table, window: str) -> list[Point]:
    out: list[Point] = []
    for (start, tags), aggs in sorted(table.items()):
        fields: dict[str, FieldValue] = {}
        for metric in catalog.NAMES:  # catalog order, unknown fields never appear
            a = aggs.get(metric)
            if a is None or a.count == 0:
                continue
            fmin, fmean, fmax, fcount = field_names(metric)
            fields[fmin], fields[fmean], fields[fmax], fields[fcount] = (
                float(a.min), float(a.mean), float(a.max), int(a.count))
        if fields:
            out.append(Point(MEASUREMENT[window], tags, fields, start))
    return out


def _series_tags(tags: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in tags if k in SERIES_TAGS and v))


def _number(value: Any) -> float | None:
    if type(value) is not float and type(value) is not int:  # bool, str, None: not a measurement
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def rollup_points(points: Iterable[Point], window: str) -> list[Point]:
    """Aggregate raw ``telemetry`` points (other measurements are ignored) into rollup points."""
    window_seconds(window)
    table: Table = {}
    for p in points:
        if p.measurement != schema.TELEMETRY:
            continue
        key = (window_start(p.ts_ns, window), _series_tags(p.tags))
        aggs = table.setdefault(key, {})
        for name, raw in p.fields.items():
            if name not in catalog.BY_NAME:
                continue  # seq and anything else that is not a sensor metric
            value = _number(raw)
            if value is None:
                continue
            a = aggs.get(name)
            if a is None:
                aggs[name] = Agg.of(value)
            else:
                a.add(value)
    return _to_points(table, window)


def _row_key(row: Mapping[str, Any], window: str) -> Key:
    tags = tuple(sorted((k, str(row[k])) for k in SERIES_TAGS if row.get(k)))
    return window_start(int(row["time"]), window), tags


def _row_aggs(row: Mapping[str, Any]) -> dict[str, Agg]:
    """The per-metric aggregates in one rollup (or aggregate-query) row; nulls are skipped."""
    out: dict[str, Agg] = {}
    for metric in catalog.NAMES:
        fmin, fmean, fmax, fcount = field_names(metric)
        values = [_number(row.get(f)) for f in (fmin, fmean, fmax, fcount)]
        lo, mean, hi, count = values
        if lo is None or mean is None or hi is None or count is None or count <= 0:
            continue
        n = int(count)
        out[metric] = Agg(lo, hi, mean * n, n)
    return out


def points_from_aggregate_rows(rows: Iterable[Mapping[str, Any]], window: str) -> list[Point]:
    """Rows of :func:`aggregate_query` (or of a stored rollup measurement) -> rollup points."""
    table: Table = {}
    for row in rows:
        aggs = _row_aggs(row)
        if aggs:
            table.setdefault(_row_key(row, window), {}).update(aggs)
    return _to_points(table, window)


def coarsen(rows: Iterable[Mapping[str, Any]], window: str) -> list[Point]:
    """Merge finer rollups (rows or field mappings with ``time``, tags and ``<metric>_min/..``)
    into ``window``: min of mins, max of maxes, count-weighted mean, sum of counts."""
    table: Table = {}
    for row in rows:
        aggs = table.setdefault(_row_key(row, window), {})
        for metric, a in _row_aggs(row).items():
            have = aggs.get(metric)
            if have is None:
                aggs[metric] = a
            else:
                have.merge(a)
    return _to_points(table, window)


def point_rows(points: Iterable[Point]) -> list[dict[str, Any]]:
    """Points as flat rows (``time`` in ns, tags merged in), the shape ``Influx1Store.rows`` returns."""
    return [{"time": p.ts_ns, **dict(p.tags), **p.fields} for p in points]


def aggregate_query(start_ns: int, end_ns: int, window: str = "1m", *,
                    metrics: Sequence[str] = catalog.NAMES, measurement: str = schema.TELEMETRY,
                    district: str | None = None) -> str:
    """InfluxQL computing min/mean/max/count per metric, pole and window over [start, end).

    Works unchanged on InfluxDB 1.x, on 2.x through the v1-compatible ``/query`` (DBRP mapping) and on
    3.x's InfluxQL. ``fill(none)``: a window without samples yields no row (and so no rollup point),
    never a row of nulls.
    """
    w = window_seconds(window)
    if end_ns <= start_ns:
        raise ValueError("empty time range")
    exprs = []
    for m in metrics:
        catalog.metric(m)  # unknown names raise here, never reach the query
        fmin, fmean, fmax, fcount = field_names(m)
        exprs += [f"min({ident(m)}) AS {ident(fmin)}", f"mean({ident(m)}) AS {ident(fmean)}",
                  f"max({ident(m)}) AS {ident(fmax)}", f"count({ident(m)}) AS {ident(fcount)}"]
    where = f"time >= {int(start_ns)} AND time < {int(end_ns)}"
    if district is not None:
        where = f"{ident('district')} = {literal(district)} AND {where}"
    return (f"SELECT {', '.join(exprs)} FROM {ident(measurement)} WHERE {where} "
            f"GROUP BY time({w}s), {ident('district')}, {ident('pole')} fill(none)")


# --- the job: query -> compute -> write (I/O injected) ---------------------------------------------
class Reader(Protocol):
    def rows(self, q: str) -> list[dict[str, Any]]: ...


class Writer(Protocol):
    def write(self, points: Sequence[Point]) -> None: ...


def chunks(start_ns: int, end_ns: int, hours: int = 6) -> list[tuple[int, int]]:
    """Runs of ``hours`` whole UTC hours covering [start, end): the job's unit of work."""
    if hours < 1:
        raise ValueError("a chunk is at least one hour")
    h = WINDOWS["1h"] * NS
    first = start_ns - start_ns % h
    return [(t, t + hours * h) for t in range(first, end_ns, hours * h)]


def run(reader: Reader, writers: Mapping[str, Writer], start_ns: int, end_ns: int, *,
        districts: Sequence[str | None] = (None,), measurement: str = schema.TELEMETRY,
        chunk_hours: int = 6) -> dict[str, int]:
    """Recompute the 1 m and 1 h rollups of every whole hour touching [start, end) and write them.

    Per chunk of whole hours (and per district when ``districts`` is given, to bound the size of one
    answer): the server aggregates raw samples into 1-minute rows, which are written as
    ``telemetry_1m`` and merged in memory into each hour's ``telemetry_1h`` point. Returns the number
    of points written per window. Idempotent: run it again (e.g. every 5 minutes over the last hours)
    and late samples are folded in.
    """
    written = {w: 0 for w in WINDOWS}
    for lo, hi in chunks(start_ns, end_ns, chunk_hours):
        for district in districts:
            rows = reader.rows(aggregate_query(lo, hi, "1m", measurement=measurement, district=district))
            minute = points_from_aggregate_rows(rows, "1m")
            hour = coarsen(point_rows(minute), "1h")
            for window, pts in (("1m", minute), ("1h", hour)):
                if pts and window in writers:
                    writers[window].write(pts)
                    written[window] += len(pts)
    return written
