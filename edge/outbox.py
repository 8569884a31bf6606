"""The store-and-forward outbox: every sample is on disk before it is published.

One SQLite file in WAL mode, two tables::

    samples(seq PRIMARY KEY, ts, boot, body)   body = the Sample's JSON, encoded once at append
    meta(k PRIMARY KEY, v)                     next_seq, last_ts, evicted (lifetime)

* ``append`` allocates the next sequence number and writes the sample and the new counter in ONE
  transaction, so a sequence number is never handed out twice, across kill -9 and power loss alike
  (with ``sync="full"``, the default: the WAL is fsynced at every append's commit).
* ``ack`` deletes what the broker acknowledged. Acks commit with ``synchronous=NORMAL`` (no fsync of
  their own): a process crash keeps them (the WAL lives in the OS page cache), a power loss may undo
  the last ones, and the undone samples are simply re-sent: the gateway drops them by ``(pole, seq)``
  and the store write is idempotent. The next append's fsync makes earlier acks durable anyway.
* Bounds: ``max_bytes`` (sum of the stored bodies) and ``max_age_s`` (device time). Both evict the
  oldest samples first, and every eviction is counted (``evicted_total`` persisted,
  ``evicted_session`` since this process opened the file, which the agent reports upstream).
* Timestamps are made strictly increasing per outbox (``ts = max(ts, last_ts + 1)``): stores key a
  point by (pole, time), so two samples in one millisecond would otherwise overwrite each other.

Thread-safe: one connection guarded by a lock (the sampler appends, the network thread acks).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from contract.errors import LampwatchError
from contract.models import Sample

Sync = Literal["full", "normal", "off"]
_ROW_OVERHEAD = 32  # bytes accounted per row beyond its body (key, ts, boot, b-tree slack)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    boot TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_ts ON samples(ts);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


class OutboxError(LampwatchError):
    """The outbox file cannot be opened or written (disk full, corrupt file, permissions)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """One stored, unacknowledged sample."""

    seq: int
    ts: int
    boot: str
    body: str  # {"seq":..,"ts":..,"m":{..}}: a contract Sample as JSON

    @property
    def size(self) -> int:
        return len(self.body) + _ROW_OVERHEAD


class Outbox:
    def __init__(self, path: str | Path, *, max_bytes: int = 64 << 20, max_age_s: float = 7 * 86_400,
                 sync: Sync = "full") -> None:
        if max_bytes < 1024:
            raise ValueError("outbox max_bytes must be at least 1024")
        if max_age_s <= 0:
            raise ValueError("outbox max_age_s must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_s * 1000)
        self.sync = sync
        self._lock = threading.Lock()
        self.evicted_session = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        try:
            # synchronous first: switching a new file to WAL then costs no fsync with "off"/"normal";
            # the schema in one transaction (one commit instead of three)
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
            meta = dict(self._db.execute("SELECT k, v FROM meta").fetchall())
            n, total = self._db.execute(
                f"SELECT count(*), coalesce(sum(length(body)), 0) + {_ROW_OVERHEAD} * count(*) "
                "FROM samples").fetchone()
            (max_seq,) = self._db.execute("SELECT max(seq) FROM samples").fetchone()
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"outbox {self.path} is unusable: {exc}") from exc
        # next_seq never goes backwards, even if meta were older than the rows (it cannot be: one txn)
        self._next_seq = max(int(meta.get("next_seq", 0)), (max_seq + 1) if max_seq is not None else 0)
        self._last_ts = int(meta.get("last_ts", 0))
        self.evicted_total = int(meta.get("evicted", 0))
        self._depth = int(n)
        self._bytes = int(total)

    # --- properties ------------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def last_seq(self) -> int:
        """The highest sequence number handed out so far (-1 before the first sample)."""
        return self._next_seq - 1

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def bytes(self) -> int:
        return self._bytes

    # --- write side ------------------------------------------------------------------------------
    def append(self, ts_ms: int, values: Mapping[str, float], boot: str) -> int:
        """Store one sample durably; return its sequence number. May evict the oldest samples."""
        with self._lock:
            seq = self._next_seq
            ts = max(int(ts_ms), self._last_ts + 1)
            try:
                body = Sample(seq=seq, ts=ts, m={k: float(v) for k, v in values.items()}).model_dump_json()
            except ValidationError as exc:
                raise ValueError(f"invalid sample: {exc.errors()[0]['msg']}") from exc
            size = len(body) + _ROW_OVERHEAD
            try:
                self._db.execute("BEGIN IMMEDIATE")
                evicted = self._evict_for(size)
                self._db.execute("INSERT INTO samples VALUES (?,?,?,?)", (seq, ts, boot, body))
                self._put_meta(next_seq=seq + 1, last_ts=ts, evicted=self.evicted_total + evicted)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox append failed: {exc}") from exc
            self._next_seq, self._last_ts = seq + 1, ts
            self._count_evicted(evicted)
            self._depth += 1
            self._bytes += size
            return seq

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged samples (unknown or already deleted ones are ignored); return how many."""
        keys = [(int(s),) for s in seqs]
        if not keys:
            return 0
        with self._lock:
            try:
                if self.sync == "full":
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                freed = 0
                removed = 0
                for (s,) in keys:
                    row = self._db.execute("DELETE FROM samples WHERE seq = ? RETURNING length(body)",
                                           (s,)).fetchone()
                    if row is not None:
                        removed += 1
                        freed += int(row[0]) + _ROW_OVERHEAD
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox ack failed: {exc}") from exc
            finally:
                if self.sync == "full":
                    self._db.execute("PRAGMA synchronous=FULL")
            self._depth -= removed
            self._bytes -= freed
            return removed

    def evict_expired(self, now_ms: int) -> int:
        """Evict samples older than ``max_age_s`` (device time); return how many were evicted."""
        cutoff = int(now_ms) - self.max_age_ms
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                rows = self._db.execute("DELETE FROM samples WHERE ts < ? RETURNING length(body)",
                                        (cutoff,)).fetchall()
                if rows:
                    self._put_meta(evicted=self.evicted_total + len(rows))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox eviction failed: {exc}") from exc
            self._count_evicted(len(rows))
            self._depth -= len(rows)
            self._bytes -= sum(int(r[0]) + _ROW_OVERHEAD for r in rows)
            return len(rows)

    # --- read side -------------------------------------------------------------------------------
    def peek(self, after_seq: int = -1, max_samples: int = 1000, max_bytes: int = 128 * 1024) -> list[Pending]:
        """The oldest pending samples with seq > ``after_seq``, in order, all of one boot, capped by
        count and by total body size (at least one sample is returned if any is pending)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, ts, boot, body FROM samples WHERE seq > ? ORDER BY seq "
                                    "LIMIT ?", (after_seq, max_samples)).fetchall()
        out: list[Pending] = []
        size = 0
        for seq, ts, boot, body in rows:
            if out and (boot != out[0].boot or size + len(body) + 1 > max_bytes):
                break
            out.append(Pending(seq, ts, boot, body))
            size += len(body) + 1
        return out

    def pending_seqs(self) -> list[int]:
        with self._lock:
            return [s for (s,) in self._db.execute("SELECT seq FROM samples ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    # --- internals (lock held) -----------------------------------------------------------------
    def _evict_for(self, incoming: int) -> int:
        """Delete the oldest rows until ``incoming`` bytes fit under max_bytes; return the count."""
        excess = self._bytes + incoming - self.max_bytes
        evicted = 0
        while excess > 0:
            rows = self._db.execute("SELECT seq, length(body) FROM samples ORDER BY seq LIMIT 256").fetchall()
            if not rows:
                break
            upto = None
            for seq, blen in rows:
                excess -= int(blen) + _ROW_OVERHEAD
                evicted += 1
                upto = seq
                if excess <= 0:
                    break
            self._db.execute("DELETE FROM samples WHERE seq <= ?", (upto,))
        if evicted:
            # recompute from the table: exact, and cheap next to an fsync
            self._bytes, self._depth = self._totals()
        return evicted

    def _totals(self) -> tuple[int, int]:
        n, total = self._db.execute(f"SELECT count(*), coalesce(sum(length(body)), 0) + {_ROW_OVERHEAD} * "
                                    "count(*) FROM samples").fetchone()
        return int(total), int(n)

    def _put_meta(self, **kv: int) -> None:
        self._db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                             list(kv.items()))

    def _count_evicted(self, n: int) -> None:
        if n:
            self.evicted_total += n
            self.evicted_session += n

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._bytes, self._depth = self._totals()
        except sqlite3.Error:
            pass
