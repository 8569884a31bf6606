"""When each pole was last heard, read from the store (for the operator CLI's ``poles`` commands).

Device time of the newest ``telemetry`` point per pole, in ms. InfluxDB 1.x (InfluxQL ``last()``)
and the embedded SQLite store answer it; InfluxDB 2.x/3.x stores are read through Grafana instead.
"""

from __future__ import annotations

import sqlite3

from contract import schema
from contract.errors import ConfigError, StoreError
from contract.ids import PoleId
from ingest.influx1 import Influx1Store
from ingest.sqlite import SqliteStore


def last_seen(store: object, pole: str | None = None, lookback: str = "30d") -> dict[str, int]:
    """pole -> device time (ms) of its newest telemetry point (only ``pole`` when given)."""
    if pole is not None:
        pole = str(PoleId(pole))
    if isinstance(store, Influx1Store):
        where = f"time > now() - {lookback}" + (f" AND \"pole\" = '{pole}'" if pole else "")
        rows = store.rows(f'SELECT last("seq") FROM "{schema.TELEMETRY}" WHERE {where} GROUP BY "pole"', epoch="ms")
        return {str(r["pole"]): int(r["time"]) for r in rows}
    if isinstance(store, SqliteStore):
        sql = ("SELECT json_extract(tags, '$.pole'), max(ts_ns) FROM points WHERE measurement = ?"
               + (" AND json_extract(tags, '$.pole') = ?" if pole else "") + " GROUP BY 1")
        args: list[str] = [schema.TELEMETRY] + ([pole] if pole else [])
        try:
            with sqlite3.connect(f"file:{store.path}?mode=ro", uri=True) as db:
                got = db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {store.path}: {exc}") from exc
        return {str(p): int(ts) // 1_000_000 for p, ts in got if p is not None}
    raise ConfigError(f"last seen needs InfluxDB 1.x or SQLite, not {type(store).__name__}")


