"""The gateway's durable disk spool: batches the store could not take, replayed in order.

One SQLite file in WAL mode with ``synchronous=FULL``: once :meth:`Spool.append` returns, the batch
survives kill -9 and power loss, so the gateway may acknowledge the MQTT messages it carried. The
spool is bounded in bytes; when full, :class:`SpoolFull` is raised and the gateway stops acknowledging,
so the broker keeps the messages (nothing is dropped silently).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from contract.errors import SpoolFull
from contract.readings import Point


def _dump(points: Sequence[Point]) -> bytes:
    return json.dumps([[p.measurement, p.tags, dict(p.fields), p.ts_ns] for p in points],
                      separators=(",", ":")).encode()


def _load(blob: bytes) -> list[Point]:
    return [Point(m, tuple((k, v) for k, v in tags), f, ts) for m, tags, f, ts in json.loads(blob)]


class Spool:
    def __init__(self, path: str | Path, max_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "n INTEGER NOT NULL, body BLOB NOT NULL)")
        row = self._db.execute("SELECT count(*), coalesce(sum(length(body)),0), coalesce(sum(n),0) "
                               "FROM batches").fetchone()
        self._depth, self._bytes, self._points = int(row[0]), int(row[1]), int(row[2])

    def append(self, points: Sequence[Point]) -> None:
        body = _dump(points)
        with self._lock:
            if self._bytes + len(body) > self.max_bytes:
                raise SpoolFull(f"spool {self.path} holds {self._bytes} bytes (bound {self.max_bytes})")
            self._db.execute("INSERT INTO batches (n, body) VALUES (?, ?)", (len(points), body))
            self._depth += 1
            self._bytes += len(body)
            self._points += len(points)

    def peek(self) -> tuple[int, list[Point]] | None:
        """The oldest batch, without removing it."""
        with self._lock:
            row = self._db.execute("SELECT id, body FROM batches ORDER BY id LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), _load(row[1]))

    def pop(self, batch_id: int) -> None:
        with self._lock:
            row = self._db.execute("SELECT n, length(body) FROM batches WHERE id = ?",
                                   (batch_id,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            self._depth -= 1
            self._points -= int(row[0])
            self._bytes -= int(row[1])

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def points(self) -> int:
        return self._points

    @property
    def nbytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SpoolWatch:
    """Turns spool depth into an alarm level (pure): 0 none, 2 warning, 3 critical.

    Warning once the spool has held data for ``warn_after_s`` (the store has been down or slow for a
    while: operators should know before disk fills); critical at ``critical_fraction`` of the bound.
    Cleared when the spool is empty again. ``update`` returns the new level when it changes, else None.
    """

    def __init__(self, warn_after_s: float = 30.0, critical_fraction: float = 0.5) -> None:
        self.warn_after_s, self.critical_fraction = warn_after_s, critical_fraction
        self.level = 0
        self._since: float | None = None

    def update(self, now: float, points: int, nbytes: int, max_bytes: int) -> int | None:
        if points == 0:
            self._since = None
            new = 0
        else:
            self._since = now if self._since is None else self._since
            if nbytes >= self.critical_fraction * max_bytes:
                new = 3
            elif now - self._since >= self.warn_after_s:
                new = 2
            else:
                new = self.level if self.level else 0
        if new != self.level:
            self.level = new
            return new
        return None
