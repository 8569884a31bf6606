"""Dead letters: one small, bounded message per refused input, and a local quarantine for the bytes.

``build`` (pure) turns a message's rejects into one :class:`contract.models.DeadLetter`: the reasons with
counts, the first detail, the payload's size, SHA-256 and a 512-byte excerpt. Whatever the input was,
the result is a few KB, far below the broker's ``max_packet_size``: a dead letter can never be the
packet that gets the gateway disconnected (a 250 KB binary payload, base64-encoded whole, once was, and
the broker redelivered it forever).

:class:`Quarantine` keeps the whole payload on the gateway's disk (SQLite, bounded in bytes: the oldest
entries are evicted first and counted), so an operator can read exactly what a device sent
(``lampwatch-gateway quarantine list|show``). Entries are written in the same transaction cadence as
the batch they belong to, and the message is acknowledged only after that batch is durable.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.models import DEADLETTER_EXCERPT_BYTES, DEADLETTER_MAX_TOPIC, DeadLetter
from gateway.decode import Reject


def _excerpt(payload: bytes) -> tuple[str, str, bool]:
    cut = payload[:DEADLETTER_EXCERPT_BYTES]
    truncated = len(payload) > len(cut)
    try:
        return cut.decode("utf-8"), "utf8", truncated
    except UnicodeDecodeError as exc:
        if exc.start >= len(cut) - 3 and truncated:  # the cut split a multi-byte character
            try:
                return cut[:exc.start].decode("utf-8"), "utf8", True
            except UnicodeDecodeError:
                pass
        return base64.b64encode(cut).decode(), "base64", truncated


def build(rejects: Sequence[Reject], received_at: int, quarantine_id: int | None = None) -> DeadLetter:
    """One dead letter for every reject of one message (they share topic and payload)."""
    first = rejects[0]
    counts = Counter(r.reason for r in rejects)
    detail = first.detail if len(rejects) == 1 else f"{len(rejects)} refused, first: {first.detail}"
    text, enc, truncated = _excerpt(first.payload)
    topic_b = first.topic.encode("utf-8", "replace")
    return DeadLetter(topic=first.topic[:DEADLETTER_MAX_TOPIC], topic_bytes=len(topic_b), reason=first.reason,
                      rejects=dict(counts.most_common(32)), detail=detail[:500], size=len(first.payload),
                      sha256=hashlib.sha256(first.payload).hexdigest(), excerpt=text, encoding=enc,  # type: ignore[arg-type]
                      truncated=truncated, received_at=received_at, quarantine=quarantine_id,
                      pole=first.pole, seq=first.seq)


class Quarantine:
    """Refused payloads kept whole on local disk, bounded in bytes (oldest evicted first, counted)."""

    def __init__(self, path: str | Path, max_bytes: int = 256 << 20) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.evicted = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "received_at INTEGER NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, "
                         "sha256 TEXT NOT NULL, payload BLOB NOT NULL)")
        row = self._db.execute("SELECT coalesce(sum(length(payload) + length(topic)), 0), "
                               "coalesce(max(id), 0) FROM quarantine").fetchone()
        self._bytes, self._next = int(row[0]), int(row[1]) + 1

    def reserve(self) -> int:
        """The id the next entry will get (so the dead letter can name it before the write)."""
        with self._lock:
            n, self._next = self._next, self._next + 1
            return n

    def put_many(self, entries: Sequence[tuple[int, int, str, str, str, bytes]]) -> None:
        """Write (id, received_at, topic, reason, sha256, payload) rows in one transaction."""
        if not entries:
            return
        with self._lock:
            added = sum(len(e[5]) + len(e[2]) for e in entries)
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?)", entries)
                self._bytes += added
                while self._bytes > self.max_bytes:
                    row = self._db.execute("SELECT id, length(payload) + length(topic) FROM quarantine "
                                           "ORDER BY id LIMIT 1").fetchone()
                    if row is None:
                        break
                    self._db.execute("DELETE FROM quarantine WHERE id = ?", (row[0],))
                    self._bytes -= int(row[1])
                    self.evicted += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT id, received_at, topic, reason, sha256, length(payload) FROM "
                                    "quarantine ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(("id", "received_at", "topic", "reason", "sha256", "size"), r, strict=True))
                for r in rows]

    def get(self, entry_id: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT payload FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else bytes(row[0])

    @property
    def nbytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
