"""The output stage: batches to the store on their own thread, the disk spool as its buffer.

    pipeline thread --put(Batch)--> [bounded queue] --> output thread
        quarantine entries of the batch -> local quarantine (fsync)
        points -> sink.write            ok: delivered(batch.tids) -> acks released in order
                  | StoreRejected (4xx) -> bisect: the offending points are dead-lettered with the
                  |                        store's reason, the rest stored
                  | StoreError / StoreAuthError (down, 5xx, 401/403) -> Spool.append (fsync) -> delivered
        spool replayed oldest first whenever the store takes writes again

Transactions (Telegraf's buffer idea): a batch taken from the spool is only removed (``pop``) after the
store accepted it (accept), or after its refused points were dead-lettered (reject); on a transient
error it stays at the head (keep).

Any I/O error on the local disk (spool or quarantine: disk full, read-only, permission) puts the stage
in **hold**: the batch in hand is kept in memory and *not* acknowledged, the bounded queue fills, the
pipeline stops taking messages, the broker keeps the rest (Receive Maximum); the health flag
``disk`` says why (status not ready, a critical gateway alarm). Every ``retry_s`` the stage tries again
and resumes by itself once the disk has room. Nothing is acknowledged that is not durable.

An unexpected exception ends the thread *loudly*: ``failed`` is set with the reason, the health goes
not-ready, and the process exits non-zero (``lampwatch-gateway run`` checks it) so the service manager
restarts it; whatever was not acknowledged is redelivered by the broker.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contract import schema
from contract.errors import SpoolFull, StoreAuthError, StoreRejected
from contract.readings import Point
from gateway import osthread
from gateway.sink import Sink
from gateway.spool import Spool

log = logging.getLogger("lampwatch.gateway.output")

QEntry = tuple[int, int, str, str, str, bytes]  # quarantine row: id, received_at, topic, reason, sha, payload


@dataclass(slots=True)
class Batch:
    points: list[Point]
    tids: list[int] = field(default_factory=list)  # tracking ids of the messages it carries
    quarantine: list[QEntry] = field(default_factory=list)


COUNTS = ("stored_points", "stored_samples", "stored_batches", "spooled_batches", "spooled_points",
          "replayed_batches", "store_errors", "store_auth_errors", "store_rejected_points",
          "store_bisect_writes", "disk_errors", "last_write_ms")


class Output:
    def __init__(self, sink: Sink, spool: Spool, *, delivered: Callable[[list[int]], object],
                 quarantine_put: Callable[[Sequence[QEntry]], None] | None = None,
                 on_store_rejected: Callable[[list[tuple[Point, str]]], None] | None = None,
                 set_health: Callable[[str, str | None], None] = lambda _k, _v: None,
                 retry_s: float = 1.0, max_queued: int = 4, clock: Callable[[], float] = time.time) -> None:
        self.sink, self.spool = sink, spool
        self._delivered, self._qput = delivered, quarantine_put
        self._on_rejected = on_store_rejected or (lambda _r: None)
        self._health = set_health
        self.retry_s, self.clock = retry_s, clock
        self._q: queue.Queue[Batch] = queue.Queue(maxsize=max_queued)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store_down_until = 0.0
        self.stats: dict[str, float] = dict.fromkeys(COUNTS, 0.0)
        self.failed: str | None = None
        self.holding = False

    # --- the pipeline side ---------------------------------------------------------------------------
    def put(self, batch: Batch, timeout: float) -> bool:
        """Hand a batch over; False when the stage is still busy after ``timeout`` (backpressure)."""
        try:
            self._q.put(batch, timeout=timeout)
            return True
        except queue.Full:
            return False

    def queued(self) -> int:
        return self._q.qsize()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="gateway-output", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Write what was handed over (or spool it), then end the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- the thread ----------------------------------------------------------------------------------
    def _main(self) -> None:
        osthread.name_this_thread(osthread.OUTPUT)
        try:
            self._loop()
        except BaseException as exc:  # no thread dies silently
            self.failed = f"output thread died: {type(exc).__name__}: {exc}"
            self._health("output", self.failed)
            log.critical("%s; no further message is acknowledged, exiting", self.failed, exc_info=True)

    def _loop(self) -> None:
        while True:
            try:
                batch: Batch | None = self._q.get(timeout=0.05)
            except queue.Empty:
                batch = None
                if self._stop.is_set():
                    return
            if batch is not None:
                while not self._deliver(batch):  # hold: the local disk failed; retry until it works
                    if self._stop.wait(self.retry_s):
                        log.error("stopping while holding a batch of %d points the disk could not take: "
                                  "it is not acknowledged, the broker will redeliver it", len(batch.points))
                        return
            # one spooled batch replayed per batch delivered (or per idle turn): the spool drains even
            # while new batches keep arriving (they go to the spool's tail meanwhile, to keep order)
            if self.spool.depth and self.clock() >= self._store_down_until:
                try:
                    self._replay_one()
                except (OSError, sqlite3.Error) as exc:
                    self._disk_error(exc)
                    self._stop.wait(self.retry_s)

    def _deliver(self, batch: Batch) -> bool:
        """Make the batch durable (store or spool) and release its acks; False = hold (disk error)."""
        try:
            if batch.quarantine and self._qput is not None:
                self._qput(batch.quarantine)
                batch.quarantine = []
            direct = not self.spool.depth and self.clock() >= self._store_down_until  # order: spool first
            if not (direct and self._write(batch.points)):
                self._spool(batch.points)
        except (OSError, sqlite3.Error) as exc:
            self._disk_error(exc)
            return False
        if self.holding:
            self.holding = False
            self._health("disk", None)
            log.warning("local disk writable again: acknowledging resumed")
        self._delivered(batch.tids)
        return True

    def _disk_error(self, exc: BaseException) -> None:
        self.stats["disk_errors"] += 1
        if not self.holding:
            self.holding = True
            why = f"local disk error ({type(exc).__name__}: {exc}): holding acknowledgements"
            self._health("disk", why)
            log.critical("%s; retrying every %.0f s", why, self.retry_s)

    def _spool(self, points: list[Point]) -> None:
        """Append to the spool; when it is full, hold (no ack) while the store drains it. A batch larger
        than the whole bound goes straight to the store once the store takes writes again."""
        full = False
        while True:
            try:
                self.spool.append(points)
                break
            except SpoolFull as exc:  # bounded: hold acks while the store drains the spool
                if not full:
                    full = True
                    self._health("spool", str(exc))
                    log.error("%s: holding acknowledgements until the store drains it", exc)
                if self._replay_one():
                    continue
                if self.clock() >= self._store_down_until and self._write(points):
                    self._health("spool", None)
                    return
                if self._stop.wait(self.retry_s):
                    raise OSError("stopping with a full spool") from exc
        if full:
            self._health("spool", None)
        self.stats["spooled_batches"] += 1
        self.stats["spooled_points"] += len(points)

    def _write(self, points: list[Point]) -> bool:
        """Write to the store; True when it is durable there (or the refused points were dead-lettered)."""
        if not points:
            return True
        t0 = time.perf_counter()
        try:
            rejected = self._write_split(points)
        except StoreAuthError as exc:
            self.stats["store_auth_errors"] += 1
            self._store_down(exc, "store refuses the gateway's credentials")
            return False
        except Exception as exc:  # StoreError, or a sink bug: either way the data goes to disk
            self.stats["store_errors"] += 1
            self._store_down(exc, "store unavailable")
            return False
        self.stats["last_write_ms"] = (time.perf_counter() - t0) * 1000
        self._health("store", None)
        n = len(points) - len(rejected)
        self.stats["stored_points"] += n
        self.stats["stored_samples"] += sum(1 for p in points if p.measurement == schema.TELEMETRY) - sum(
            1 for p, _r in rejected if p.measurement == schema.TELEMETRY)
        self.stats["stored_batches"] += 1
        if rejected:
            self.stats["store_rejected_points"] += len(rejected)
            self._on_rejected(rejected)
        return True

    def _write_split(self, points: list[Point]) -> list[tuple[Point, str]]:
        """Write; on a 4xx find the refused points by bisection (writes are idempotent, so the halves
        that InfluxDB already took in a partial write are simply written again). Returns them with the
        store's reason."""
        try:
            self.sink.write(points)
            return []
        except StoreRejected as exc:
            if len(points) == 1:
                return [(points[0], str(exc))]
            mid = len(points) // 2
            self.stats["store_bisect_writes"] += 2
            return self._write_split(points[:mid]) + self._write_split(points[mid:])

    def _store_down(self, exc: Exception, what: str) -> None:
        self._store_down_until = self.clock() + self.retry_s
        self._health("store", f"{what}: {type(exc).__name__}: {exc}")
        log.warning("%s (%s: %s): spooling", what, type(exc).__name__, exc)

    def _replay_one(self) -> bool:
        head = self.spool.peek()
        if head is None:
            return False
        batch_id, points = head
        if not self._write(points):
            return False
        self.spool.pop(batch_id)
        self.stats["replayed_batches"] += 1
        return True
