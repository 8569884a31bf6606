"""The embedded default store: one SQLite file, no server needed.

Points keep InfluxDB's semantics: a point is identified by (measurement, tags, time); writing the
same identity again merges its fields into the existing row, so retries and replays are idempotent
exactly as they are in InfluxDB. WAL mode with ``synchronous=FULL``: a committed batch survives a
process crash *and* a power failure. The gateway acknowledges the MQTT messages of a batch as soon as
``write`` returns, so ``NORMAL`` (durable against a crash only) would let a power cut lose data the
broker had already been told was safe.

The read side (``select``, ``count``, ``exposure``, ``per_bucket``) is what the simulator's scoring and
report and the open-data publisher read; ``SqliteStore(path, readonly=True)`` opens an existing store
without creating or locking anything, so a report can read a store a running gateway writes to.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contract import schema
from contract.errors import StoreError
from contract.readings import Point

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,          -- canonical JSON object, keys sorted
    ts_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,        -- JSON object
    PRIMARY KEY (measurement, tags, ts_ns)
) WITHOUT ROWID;
"""


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no SQLite store at {self.path}")
            try:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           check_same_thread=False)
                self._db.execute("SELECT 1 FROM points LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path} is not a lampwatch SQLite store: {exc}") from exc
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # the gateway acknowledges after write()
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open sqlite store {self.path}: {exc}") from exc

    def write(self, points: Sequence[Point]) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        rows = [(p.measurement, json.dumps(dict(p.tags), sort_keys=True, separators=(",", ":")),
                 p.ts_ns, json.dumps(dict(p.fields), separators=(",", ":"))) for p in points]
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO points VALUES (?,?,?,?) ON CONFLICT(measurement, tags, ts_ns) "
                    "DO UPDATE SET fields = json_patch(points.fields, excluded.fields)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"sqlite write failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- read side (ingest.stores.StoreReader) -------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite query failed on {self.path}: {exc}") from exc

    def count(self, measurement: str = "telemetry") -> int:
        ((n,),) = self._rows("SELECT count(*) FROM points WHERE measurement = ?", (measurement,))
        return int(n)

    def select(self, measurement: str, where_tags: Mapping[str, str] | None = None, limit: int | None = None,
               *, start_ns: int | None = None, end_ns: int | None = None) -> list[dict[str, Any]]:
        """Rows as dicts: tags and fields merged, plus ``time`` (ns), in time order (then by tags).
        ``start_ns`` is inclusive, ``end_ns`` exclusive."""
        sql = "SELECT tags, ts_ns, fields FROM points WHERE measurement = ?"
        args: list[Any] = [measurement]
        for k, v in (where_tags or {}).items():
            sql += " AND json_extract(tags, ?) = ?"
            args += [f"$.{k}", v]
        if start_ns is not None:
            sql += " AND ts_ns >= ?"
            args.append(start_ns)
        if end_ns is not None:
            sql += " AND ts_ns < ?"
            args.append(end_ns)
        sql += " ORDER BY ts_ns, tags"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [{**json.loads(t), **json.loads(f), "time": ts} for t, ts, f in self._rows(sql, args)]

    def exposure(self) -> tuple[int, int, int, int]:
        """(poles that reported telemetry, telemetry samples, first and last device time in ms)."""
        ((poles, n, lo, hi),) = self._rows(
            "SELECT count(DISTINCT json_extract(tags, '$.pole')), count(*), min(ts_ns), max(ts_ns) "
            "FROM points WHERE measurement = ?", (schema.TELEMETRY,))
        return int(poles), int(n), int(lo or 0) // 1_000_000, int(hi or 0) // 1_000_000

    def per_bucket(self, bucket_ms: int) -> list[tuple[int, int]]:
        """(bucket start ms, telemetry samples with device time in it), time order."""
        b = bucket_ms * 1_000_000
        rows = self._rows("SELECT (ts_ns / ?) * ?, count(*) FROM points WHERE measurement = ? GROUP BY 1 ORDER BY 1",
                          (b, b, schema.TELEMETRY))
        return [(int(t) // 1_000_000, int(c)) for t, c in rows]

    def describe(self) -> str:
        return f"sqlite {self.path}"
