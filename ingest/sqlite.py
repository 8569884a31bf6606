"""The embedded default store: one SQLite file, no server needed.

Points keep InfluxDB's semantics: a point is identified by (measurement, tags, time); writing the
same identity again merges its fields into the existing row, so retries and replays are idempotent
exactly as they are in InfluxDB. WAL mode with ``synchronous=FULL``: a committed batch survives a
process crash *and* a power failure. The gateway acknowledges the MQTT messages of a batch as soon as
``write`` returns, so ``NORMAL`` (durable against a crash only) would let a power cut lose data the
broker had already been told was safe.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # the gateway acknowledges after write()
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open sqlite store {self.path}: {exc}") from exc

    def write(self, points: Sequence[Point]) -> None:
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

    # --- read side ---------------------------------------------------------------------------
    def count(self, measurement: str = "telemetry") -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM points WHERE measurement = ?",
                                    (measurement,)).fetchone()
        return int(n)

    def select(self, measurement: str, where_tags: dict[str, str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """Rows as dicts: tags and fields merged, plus ``time`` (ns), in time order."""
        sql = "SELECT tags, ts_ns, fields FROM points WHERE measurement = ?"
        args: list[Any] = [measurement]
        for k, v in (where_tags or {}).items():
            sql += " AND json_extract(tags, ?) = ?"
            args += [f"$.{k}", v]
        sql += " ORDER BY ts_ns"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{**json.loads(t), **json.loads(f), "time": ts} for t, ts, f in rows]
