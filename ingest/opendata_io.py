"""Store readers for open-data publication: thin adapters from InfluxDB 1.x and SQLite to the values
of :mod:`ingest.opendata` (per-pole hourly aggregates, alarm state changes, pole status).

* InfluxDB 1.x: the server aggregates raw ``telemetry`` per pole and hour (``source="raw"``, InfluxQL
  ``GROUP BY time(1h)``), or the stored ``"rollup_1h"."telemetry_1h"`` rollup is read as it is
  (``source="rollup"``; raw data older than its retention is only there).
* SQLite (the embedded store): opened read-only (``SqliteStore(readonly=True)``), raw telemetry
  aggregated per hour in Python by :func:`ingest.rollup.rollup_points`.

Both read one UTC day at a time (:meth:`hours` takes any range; the caller chunks it for progress).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from contract import schema
from contract.readings import Point
from ingest import opendata as od
from ingest import rollup as roll
from ingest.influx1 import Influx1Store
from ingest.rollup import Agg
from ingest.sqlite import SqliteStore

Source = Literal["raw", "rollup"]


class Reader(Protocol):
    name: str

    def hours(self, lo_ns: int, hi_ns: int) -> list[od.PoleHour]: ...
    def alerts(self, lo_ns: int, hi_ns: int) -> list[od.AlertEvent]: ...
    def poles(self, until_ns: int) -> list[od.PoleInfo]: ...
    def close(self) -> None: ...


def _num(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _aggs(fields: Mapping[str, Any]) -> dict[str, Agg]:
    """The aggregates of the published metrics in one rollup point's fields."""
    out: dict[str, Agg] = {}
    for m in od.METRICS:
        lo, mean, hi, count = (_num(fields.get(f)) for f in roll.field_names(m))
        if lo is not None and mean is not None and hi is not None and count is not None and count > 0:
            out[m] = Agg(lo, hi, mean * int(count), int(count))
    return out


def _hours_from_points(points: Iterable[Point]) -> list[od.PoleHour]:
    out: list[od.PoleHour] = []
    for p in points:
        tags = dict(p.tags)
        aggs = _aggs(p.fields)
        if aggs and tags.get("district") and tags.get("pole"):
            out.append(od.PoleHour(tags["district"], tags["pole"], p.ts_ns, aggs))
    return out


def _latest_info(rows: Iterable[Mapping[str, Any]]) -> list[od.PoleInfo]:
    """Per pole the last non-null lat, lon, rated power and interval of time-ordered status rows."""
    seen: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        district, pole = r.get("district"), r.get("pole")
        if not district or not pole:
            continue
        have = seen.setdefault((str(district), str(pole)), {})
        for f in ("lat", "lon", "rated_power_w", "interval_s"):
            v = _num(r.get(f))
            if v is not None:
                have[f] = v
    return [od.PoleInfo(d, p, v.get("lat"), v.get("lon"), v.get("rated_power_w"), v.get("interval_s"))
            for (d, p), v in sorted(seen.items())]


def _events(rows: Iterable[Mapping[str, Any]]) -> list[od.AlertEvent]:
    out = []
    for r in rows:
        if all(r.get(k) for k in ("district", "pole", "kind", "key", "state")):
            out.append(od.AlertEvent(str(r["district"]), str(r["pole"]), str(r["kind"]), str(r["key"]),
                                     str(r["state"]), int(r["time"])))
    return out


class InfluxReader:
    name = "influxdb1"

    def __init__(self, store: Influx1Store, source: Source = "raw") -> None:
        self.store = store
        self.source = source

    def hours(self, lo_ns: int, hi_ns: int) -> list[od.PoleHour]:
        if self.source == "raw":
            rows = self.store.rows(roll.aggregate_query(lo_ns, hi_ns, "1h", metrics=od.METRICS))
        else:
            cols = ", ".join(f'"{f}"' for m in od.METRICS for f in roll.field_names(m))
            rows = self.store.rows(f'SELECT {cols} FROM "{roll.RETENTION_POLICY["1h"]}".'
                                   f'"{roll.MEASUREMENT["1h"]}" WHERE time >= {lo_ns} AND time < {hi_ns} '
                                   'GROUP BY "district", "pole"')
        return _hours_from_points(roll.points_from_aggregate_rows(rows, "1h"))

    def alerts(self, lo_ns: int, hi_ns: int) -> list[od.AlertEvent]:
        return _events(self.store.rows(
            f'SELECT "state", "key" FROM "{schema.ALERTS}" WHERE time >= {lo_ns} AND time < {hi_ns} '
            'GROUP BY "district", "pole", "kind"'))

    def poles(self, until_ns: int) -> list[od.PoleInfo]:
        # every status point: the fields may be missing from the measurement (older gateways), so no
        # selector functions; births are rare, the rows are few per pole
        rows = self.store.rows(f'SELECT * FROM "{schema.STATUS}" WHERE time < {until_ns}')
        return _latest_info(rows)

    def close(self) -> None:
        self.store.close()


class SqliteReader:
    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.store = SqliteStore(path, readonly=True)

    def _rows(self, measurement: str, lo_ns: int | None, hi_ns: int) -> list[dict[str, Any]]:
        return self.store.select(measurement, start_ns=lo_ns, end_ns=hi_ns)

    def hours(self, lo_ns: int, hi_ns: int) -> list[od.PoleHour]:
        points = [Point(schema.TELEMETRY, tuple(sorted((k, str(r[k])) for k in ("district", "pole") if k in r)),
                        {m: r[m] for m in od.METRICS if m in r}, int(r["time"]))
                  for r in self._rows(schema.TELEMETRY, lo_ns, hi_ns)]
        return _hours_from_points(roll.rollup_points(points, "1h"))

    def alerts(self, lo_ns: int, hi_ns: int) -> list[od.AlertEvent]:
        return _events(self._rows(schema.ALERTS, lo_ns, hi_ns))

    def poles(self, until_ns: int) -> list[od.PoleInfo]:
        return _latest_info(self._rows(schema.STATUS, None, until_ns))

    def close(self) -> None:
        self.store.close()
