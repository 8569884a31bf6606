"""Alarms read back from a store, as :class:`simulator.score.Alarm` intervals (shared with ``bench/eval.py``).

The gateway writes one ``alerts`` point per alarm state change (tags district, pole, kind, severity;
fields state ``raised|cleared``, metric, value, score, explain, key; time = device time of the change
plus a sub-millisecond per-key offset). :func:`alarms_from_rows` pairs them per (pole, key) in time
order: the first ``raised`` opens an interval (a later ``raised`` of an open alarm is an escalation or
de-escalation of the same alarm and keeps the first time), ``cleared`` closes it; an alarm still open
at the end has ``cleared_ms = None``. District-level alarms (pole ``district``) are not pole alarms
and are left out.

Stores are named like this::

    sqlite:PATH                       the embedded SQLite store (read-only)
    influx1 URL DB                    InfluxDB 1.x (open_store_reader(url=..., db=...))

:func:`exposure` measures what the false-alarm rate is normalised by: the poles that reported
telemetry and the span of device time they covered; :func:`score_store` puts it all together.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import schema
from contract.errors import StoreError
from gateway.detect.spatial import DISTRICT_POLE
from simulator.faults import Label, read_labels
from simulator.score import COMPATIBLE, DAY_MS, Alarm, Score, alarm_kind, score

#: label kinds no alarm is expected for (injected traffic the gateway refuses or dedups, not a fault)
UNSCORED_KINDS: frozenset[str] = frozenset(k for k, v in COMPATIBLE.items() if not v)


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """One alarm interval with what the report needs besides the score."""

    alarm: Alarm
    district: str
    key: str
    severity: str  # the highest severity it reached


_SEV_RANK = {"info": 0, "warning": 1, "critical": 2}


def severity_rank(sev: str) -> int:
    return _SEV_RANK.get(sev, -1)


def alarm_rows(rows: Iterable[Mapping[str, Any]]) -> list[AlarmRow]:
    """Pair ``alerts`` rows (tags and fields merged, ``time`` in ns) into alarm intervals."""
    ordered = sorted(rows, key=lambda r: int(r["time"]))
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    out: list[AlarmRow] = []

    def close(st: dict[str, Any], cleared_ms: int | None) -> None:
        kind = alarm_kind(st["kind"])
        out.append(AlarmRow(Alarm(st["pole"], st["metric"] or None, kind, st["raised_ms"], cleared_ms),
                            st["district"], st["key"], st["severity"]))

    for r in ordered:
        pole = str(r.get("pole") or "")
        if not pole or pole == DISTRICT_POLE:
            continue
        key = str(r.get("key") or r.get("kind") or "")
        t_ms = int(r["time"]) // 1_000_000
        state = r.get("state")
        sev = str(r.get("severity") or "info")
        st = open_.get((pole, key))
        if state == "raised":
            if st is None:
                open_[(pole, key)] = {"pole": pole, "key": key, "kind": str(r.get("kind") or key),
                                      "metric": str(r.get("metric") or ""), "district": str(r.get("district") or ""),
                                      "raised_ms": t_ms, "severity": sev}
            elif severity_rank(sev) > severity_rank(st["severity"]):
                st["severity"] = sev
        elif state == "cleared" and st is not None:
            close(open_.pop((pole, key)), t_ms)
    for st in open_.values():
        close(st, None)
    out.sort(key=lambda a: (a.alarm.raised_ms, a.alarm.pole, a.key))
    return out


def alarms_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Alarm]:
    return [a.alarm for a in alarm_rows(rows)]


# --- stores ---------------------------------------------------------------------------------------
class StoreReader:
    """Read side of a store, just what scoring and the report need. ``parse(spec)`` or the constructors."""

    def alerts(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def telemetry(self, pole: str, fields: Sequence[str], start_ns: int, end_ns: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def exposure(self) -> tuple[int, int, int, int]:
        """(poles that reported telemetry, samples, first device time ms, last device time ms)."""
        raise NotImplementedError

    def per_bucket(self, bucket_ms: int) -> list[tuple[int, int]]:
        """(bucket start ms, telemetry samples stored with device time in it), time order."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqliteReader(StoreReader):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"no SQLite store at {self.path}")
        try:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("SELECT count(*) FROM points WHERE measurement = 'alerts'").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path} is not a lampwatch SQLite store: {exc}") from exc

    def _rows(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite query failed on {self.path}: {exc}") from exc

    def alerts(self) -> list[dict[str, Any]]:
        import json

        rows = self._rows("SELECT tags, ts_ns, fields FROM points WHERE measurement = ? ORDER BY ts_ns",
                          (schema.ALERTS,))
        return [{**json.loads(t), **json.loads(f), "time": ts} for t, ts, f in rows]

    def telemetry(self, pole: str, fields: Sequence[str], start_ns: int, end_ns: int) -> list[dict[str, Any]]:
        cols = ", ".join("json_extract(fields, ?)" for _ in fields)
        rows = self._rows(f"SELECT ts_ns{', ' + cols if cols else ''} FROM points WHERE measurement = ? "
                          "AND json_extract(tags, '$.pole') = ? AND ts_ns >= ? AND ts_ns <= ? ORDER BY ts_ns",
                          [*(f"$.{f}" for f in fields), schema.TELEMETRY, pole, start_ns, end_ns])
        return [{"time": r[0], **dict(zip(fields, r[1:], strict=True))} for r in rows]

    def exposure(self) -> tuple[int, int, int, int]:
        ((poles, n, lo, hi),) = self._rows(
            "SELECT count(DISTINCT json_extract(tags, '$.pole')), count(*), min(ts_ns), max(ts_ns) "
            "FROM points WHERE measurement = ?", (schema.TELEMETRY,))
        return int(poles), int(n), int(lo or 0) // 1_000_000, int(hi or 0) // 1_000_000

    def per_bucket(self, bucket_ms: int) -> list[tuple[int, int]]:
        b = bucket_ms * 1_000_000
        rows = self._rows("SELECT (ts_ns / ?) * ?, count(*) FROM points WHERE measurement = ? GROUP BY 1 ORDER BY 1",
                          (b, b, schema.TELEMETRY))
        return [(int(t) // 1_000_000, int(c)) for t, c in rows]

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def close(self) -> None:
        self._db.close()


class Influx1Reader(StoreReader):
    def __init__(self, url: str, db: str) -> None:
        from ingest.influx1 import Influx1Store

        self.url, self.db = url, db
        self._s = Influx1Store(url, db, create=False)
        names = {r.get("name") for r in self._s.rows("SHOW DATABASES")}
        if db not in names:
            raise StoreError(f"influxdb {url} has no database {db!r}")

    @staticmethod
    def _ident(name: str) -> str:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    @staticmethod
    def _lit(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def alerts(self) -> list[dict[str, Any]]:
        return self._s.rows(f"SELECT * FROM {self._ident(schema.ALERTS)}")

    def telemetry(self, pole: str, fields: Sequence[str], start_ns: int, end_ns: int) -> list[dict[str, Any]]:
        if not fields:
            return []
        cols = ", ".join(self._ident(f) for f in fields)
        return self._s.rows(f"SELECT {cols} FROM {self._ident(schema.TELEMETRY)} WHERE \"pole\" = {self._lit(pole)} "
                            f"AND time >= {int(start_ns)} AND time <= {int(end_ns)}")

    def exposure(self) -> tuple[int, int, int, int]:
        t = self._ident(schema.TELEMETRY)
        per_pole = self._s.rows(f'SELECT count("seq") FROM {t} GROUP BY "pole"')
        first = self._s.rows(f'SELECT first("seq") FROM {t}')
        last = self._s.rows(f'SELECT last("seq") FROM {t}')
        if not per_pole or not first or not last:
            return 0, 0, 0, 0
        n = sum(int(r["count"]) for r in per_pole)
        return len(per_pole), n, int(first[0]["time"]) // 1_000_000, int(last[0]["time"]) // 1_000_000

    def per_bucket(self, bucket_ms: int) -> list[tuple[int, int]]:
        _, n, lo, hi = self.exposure()
        if not n:
            return []
        rows = self._s.rows(f'SELECT count("seq") FROM {self._ident(schema.TELEMETRY)} WHERE time >= {lo}ms '
                            f'AND time <= {hi}ms GROUP BY time({int(bucket_ms)}ms)')
        return [(int(r["time"]) // 1_000_000, int(r["count"] or 0)) for r in rows]

    def describe(self) -> str:
        return f"influxdb1 {self.url} db={self.db}"

    def close(self) -> None:
        self._s.close()


def open_reader(store: str | None = None, *, influx_url: str | None = None, db: str | None = None) -> StoreReader:
    """``store="sqlite:PATH"`` (or a bare path to a ``.sqlite`` file), or ``influx_url`` + ``db``."""
    if influx_url:
        if store:
            raise ValueError("give either --store or --influx-url, not both")
        if not db:
            raise ValueError("--influx-url needs --db")
        return Influx1Reader(influx_url, db)
    if not store:
        raise ValueError("give --store sqlite:PATH or --influx-url URL --db DB")
    kind, sep, rest = store.partition(":")
    if sep and kind == "sqlite":
        return SqliteReader(rest)
    if not sep or len(kind) == 1:  # a bare path (or a Windows drive letter)
        return SqliteReader(store)
    raise ValueError(f"unknown store {store!r}: use sqlite:PATH (or --influx-url URL --db DB)")


# --- scoring ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoreScore:
    score: Score
    labels: int
    unscored: int  # labels of UNSCORED_KINDS left out
    alarms: int
    poles: int
    step_ms: int
    pole_days: float

    def line(self) -> str:
        o = self.score.overall
        return (f"faults: precision={_f(o.precision, 3)} recall={_f(o.recall, 3)} "
                f"latency_p50_samples={_f(o.latency_median_samples, 1)} "
                f"false_per_1000_pole_days={_f(o.false_alarms_per_1000_pole_days, 2)}")


def _f(x: float, nd: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{nd}f}"


def scorable(labels: Iterable[Label]) -> tuple[list[Label], int]:
    keep = [lb for lb in labels if lb.kind not in UNSCORED_KINDS]
    return keep, sum(1 for lb in labels if lb.kind in UNSCORED_KINDS)


def score_store(reader: StoreReader, labels: Sequence[Label] | str | Path, *, step_ms: int | None = None,
                pole_days: float | None = None, poles: int | None = None) -> StoreScore:
    """Score the store's alarms against ``labels`` (a list or a labels CSV path).

    ``step_ms`` defaults to the sampling step seen in the store (device-time span / samples per pole);
    ``pole_days`` to poles that reported x that span (``poles`` overrides the count)."""
    lbs = read_labels(labels) if isinstance(labels, str | Path) else list(labels)
    keep, unscored = scorable(lbs)
    n_poles, n, lo, hi = reader.exposure()
    n_poles = poles or n_poles
    if step_ms is None:
        per_pole = n / max(n_poles, 1)
        step_ms = round((hi - lo) / (per_pole - 1)) if per_pole > 1 and hi > lo else 10_000
    step_ms = max(1, int(step_ms))
    if pole_days is None:
        pole_days = n_poles * (hi - lo + step_ms) / DAY_MS if n else 0.0
    if pole_days <= 0:
        raise StoreError("the store holds no telemetry: cannot measure pole-days (give --pole-days)")
    alarms = alarms_from_rows(reader.alerts())
    sc = score(keep, alarms, step_ms=step_ms, pole_days=pole_days, end_ms=hi if n else None)
    return StoreScore(sc, len(keep), unscored, len(alarms), n_poles, step_ms, pole_days)
