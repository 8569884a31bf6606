"""Alarm notifications through Prometheus Alertmanager (its v2 API, ``POST /api/v2/alerts``).

    notifier = AlertNotifier(NotifyConfig(url="http://127.0.0.1:9093", spool_path=".lampwatch/notify.sqlite"))
    notifier.start()
    DetectionStage(..., on_alert=notifier.offer)   # every raise, escalation, clear, acknowledgement
    notifier.close()

Threads and bounds::

    caller (the gateway's worker) --offer(alert): put_nowait--> hand-off queue (bounded; full: drop, counted)
    notifier thread: hand-off -> durable queue (SQLite in state_dir, bounded; full: drop oldest, counted)
                     -> POST the oldest batch -> delete it; Alertmanager down: retry, jittered backoff
                     every ``resend_s``: every active alarm again, with ``endsAt`` pushed forward

``offer`` never blocks and never does I/O. An active alarm is sent with ``endsAt = now + ends_after_s``
(explicit, so Alertmanager's own resolve_timeout never decides), and re-sent every ``resend_s``
(< ``ends_after_s``) so it stays firing while it is active; a clear is sent with ``endsAt = now``. The
durable queue keeps at most one pending firing and one pending resolved message per alarm (a newer one
replaces the older of the same kind), so a long outage costs one row per alarm, not one per re-send;
it survives a gateway restart. Alertmanager deduplicates what it receives twice. Firing alarms that
inhibit others (``pole_offline``) go alone, a moment before the rest of a batch: after an outage
Alertmanager flushes groups of old alerts at once, racing its own inhibitor, and an offline pole's
sensor alarm must not beat its pole_offline there.

Labels: alertname (= kind), pole, district, kind, severity, metric, key. Annotations: explanation,
value, a link to the Grafana pole dashboard, and acknowledgement / shelve state when there is one.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract.models import Alert
from gateway import osthread

log = logging.getLogger("lampwatch.notify")

#: the Grafana pole dashboard (``ingest.grafana``'s uid ``lampwatch-pole``; gateway may not import ingest)
POLE_DASHBOARD_UID = "lampwatch-pole"


@dataclass(frozen=True)
class NotifyConfig:
    url: str  # Alertmanager base URL, e.g. http://127.0.0.1:9093
    spool_path: str = ".lampwatch/notify.sqlite"
    grafana_url: str | None = None  # links in annotations; None: no link
    resend_s: float = 60.0  # active alarms re-sent this often ...
    ends_after_s: float = 300.0  # ... each time valid this long (must be > resend_s)
    handoff_max: int = 10_000  # offer() queue; full: the alert is dropped and counted
    spool_max: int = 50_000  # durable queue rows; full: the oldest is dropped and counted
    batch_max: int = 500  # alerts per POST
    timeout_s: float = 5.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    generator: str = "lampwatch-gateway"
    #: alarms that inhibit others in alertmanager.yml: posted first, alone, ``sources_gap_s`` before the rest
    inhibit_sources: tuple[str, ...] = ("pole_offline",)
    sources_gap_s: float = 0.25

    def __post_init__(self) -> None:
        if self.ends_after_s <= self.resend_s:
            raise ValueError("ends_after_s must be longer than resend_s, or active alarms would expire")


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint(a: Alert) -> str:
    return f"{a.district}/{a.pole}/{a.key}"


def pole_link(grafana_url: str, a: Alert) -> str:
    q = urllib.parse.urlencode({"var-district": a.district, "var-pole": a.pole})
    return f"{grafana_url.rstrip('/')}/d/{POLE_DASHBOARD_UID}/?{q}"


def am_alert(a: Alert, now_ms: int, cfg: NotifyConfig) -> dict[str, Any]:
    """The Alertmanager v2 form of one alarm state (pure)."""
    labels = {"alertname": a.kind, "pole": a.pole, "district": a.district, "kind": a.kind,
              "severity": a.severity, "metric": a.metric or "", "key": a.key}
    ann = {"explanation": a.explain, "value": "" if a.value is None else f"{a.value:g}",
           "raised_at": _iso(a.raised_at)}
    if cfg.grafana_url:
        ann["dashboard"] = pole_link(cfg.grafana_url, a)
    if a.acked_by:
        ann["acknowledged"] = f"{a.acked_by} at {_iso(a.acked_at or now_ms)}" + (
            f": {a.ack_note}" if a.ack_note else "")
    if a.shelved_until:
        ann["shelved_until"] = _iso(a.shelved_until)
    firing = a.state == "raised"
    starts = min(a.raised_at, now_ms)  # a device clock ahead of ours must not start it in the future
    ends = now_ms + int(cfg.ends_after_s * 1000) if firing else max(now_ms, starts + 1)
    out: dict[str, Any] = {"labels": labels, "annotations": ann, "startsAt": _iso(starts), "endsAt": _iso(ends)}
    if cfg.grafana_url:
        out["generatorURL"] = ann["dashboard"]
    return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fp TEXT NOT NULL,
    firing INTEGER NOT NULL,
    alert TEXT NOT NULL,       -- contract.models.Alert JSON
    UNIQUE (fp, firing)
);
"""


class NotifySpool:
    """The durable queue: one pending firing and one pending resolved row per alarm, oldest first."""

    def __init__(self, path: str | Path, max_rows: int) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def put(self, alerts: list[Alert]) -> int:
        """Queue alerts (a newer state replaces a pending one of the same alarm and kind); returns how
        many old rows were dropped to stay within ``max_rows``."""
        with self._db:
            self._db.execute("BEGIN")
            for a in alerts:
                firing = int(a.state == "raised")
                self._db.execute("DELETE FROM pending WHERE fp = ? AND firing = ?", (fingerprint(a), firing))
                self._db.execute("INSERT INTO pending (fp, firing, alert) VALUES (?, ?, ?)",
                                 (fingerprint(a), firing, a.model_dump_json()))
            over = self.depth() - self.max_rows
            if over > 0:
                self._db.execute("DELETE FROM pending WHERE id IN (SELECT id FROM pending ORDER BY id LIMIT ?)",
                                 (over,))
        return max(over, 0)

    def head(self, n: int) -> list[tuple[int, Alert]]:
        rows = self._db.execute("SELECT id, alert FROM pending ORDER BY id LIMIT ?", (n,)).fetchall()
        return [(int(i), Alert.model_validate_json(t)) for i, t in rows]

    def remove(self, ids: list[int]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids])

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def post_alerts(url: str, body: list[dict[str, Any]], timeout_s: float) -> None:
    """POST /api/v2/alerts; raises OSError (connection) or ValueError (an error status)."""
    req = urllib.request.Request(f"{url.rstrip('/')}/api/v2/alerts", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read()[:300]
        if exc.code >= 500:
            raise OSError(f"alertmanager answered {exc.code}: {detail!r}") from exc
        raise ValueError(f"alertmanager refused the alerts ({exc.code}): {detail!r}") from exc


class AlertNotifier:
    """Feeds Alertmanager from the detection stage; its own thread, never blocks the caller."""

    def __init__(self, cfg: NotifyConfig, *, clock: Callable[[], float] = time.time,
                 post: Callable[[str, list[dict[str, Any]], float], None] = post_alerts,
                 rng: random.Random | None = None) -> None:
        self.cfg, self.clock, self._post = cfg, clock, post
        self._rng = rng or random.Random()
        self._handoff: queue.Queue[Alert] = queue.Queue(maxsize=cfg.handoff_max)
        self._spool = NotifySpool(cfg.spool_path, cfg.spool_max)
        self._active: dict[str, Alert] = {}  # the notifier thread's view; only it touches this
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = {"notify_sent": 0, "notify_failed": 0, "notify_dropped": 0, "notify_refused": 0,
                        "notify_posts": 0}
        self._queued = self._spool.depth()
        self._last_error = ""

    # --- the caller's side ------------------------------------------------------------------------
    def offer(self, alert: Alert) -> None:
        """Hand one alarm state over (put_nowait); a full hand-off queue drops it, counted and logged."""
        try:
            self._handoff.put_nowait(alert)
        except queue.Full:
            self._count("notify_dropped")
            log.error("notification hand-off full (%d): dropped %s %s", self.cfg.handoff_max,
                      fingerprint(alert), alert.state)
            return
        self._wake.set()

    def resync(self, active: list[Alert]) -> None:
        """After a restart: the alarms still active (from the detection state), to keep them firing."""
        for a in active:
            self.offer(a)

    def counters(self) -> dict[str, float]:
        with self._lock:
            out = {k: float(v) for k, v in self._counts.items()}
            out["notify_queued"] = float(self._queued + self._handoff.qsize())
        return out

    @property
    def last_error(self) -> str:
        return self._last_error

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> AlertNotifier:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alert-notifier", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (what is queued stays in the durable queue for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        else:
            self._drain_handoff()
        self._spool.close()

    def flush(self, timeout_s: float) -> bool:
        """Wait (bounded) until nothing is queued; True if it got there."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.counters()["notify_queued"] == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    # --- the notifier thread ------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _drain_handoff(self) -> int:
        got: list[Alert] = []
        while len(got) < 10_000:
            try:
                got.append(self._handoff.get_nowait())
            except queue.Empty:
                break
        for a in got:
            fp = fingerprint(a)
            if a.state == "raised":
                self._active[fp] = a
            else:
                self._active.pop(fp, None)
        if got:
            self._enqueue(got)
        return len(got)

    def _enqueue(self, alerts: list[Alert]) -> None:
        dropped = self._spool.put(alerts)
        if dropped:
            self._count("notify_dropped", dropped)
            log.error("notification queue at its bound (%d rows): dropped the %d oldest", self.cfg.spool_max,
                      dropped)
        with self._lock:
            self._queued = self._spool.depth()

    def _run(self) -> None:
        osthread.name_this_thread(osthread.NOTIFIER)
        backoff = 0.0
        retry_at = 0.0
        next_resend = time.monotonic() + self.cfg.resend_s
        while not self._stop.is_set():
            self._drain_handoff()
            now = time.monotonic()
            if now >= next_resend:
                next_resend = now + self.cfg.resend_s
                if self._active:
                    self._enqueue(list(self._active.values()))
            if self._queued and now >= retry_at:
                if self._send_batch():
                    backoff = 0.0
                    continue  # more may be queued: go again at once
                backoff = min(self.cfg.backoff_max_s, max(self.cfg.backoff_min_s, backoff * 2))
                retry_at = now + backoff * (0.5 + self._rng.random())  # jittered: gateways never march in step
            wait = min(next_resend, retry_at if self._queued else next_resend) - time.monotonic()
            self._wake.wait(max(0.01, min(wait, 1.0)))
            self._wake.clear()
        self._drain_handoff()

    def _send_batch(self) -> bool:
        head = self._spool.head(self.cfg.batch_max)
        if not head:
            return True
        # After an outage Alertmanager flushes a group of old alerts at once, racing its own inhibitor:
        # an inhibiting alarm (pole_offline) must be there before the alarms it inhibits arrive.
        sources = [x for x in head if x[1].state == "raised" and x[1].kind in self.cfg.inhibit_sources]
        if sources and len(sources) < len(head):
            ok = self._post_rows(sources)
            if ok:
                self._stop.wait(self.cfg.sources_gap_s)
            return ok
        return self._post_rows(head)

    def _post_rows(self, head: list[tuple[int, Alert]]) -> bool:
        now_ms = int(self.clock() * 1000)
        body = [am_alert(a, now_ms, self.cfg) for _i, a in head]
        self._count("notify_posts")
        try:
            self._post(self.cfg.url, body, self.cfg.timeout_s)
        except ValueError as exc:  # refused: retrying the same body would not help
            outcome = "notify_refused"
            self._last_error = str(exc)
            log.error("%s; %d alerts discarded", exc, len(head))
        except OSError as exc:
            self._count("notify_failed")
            if not self._last_error.startswith("unreachable"):
                log.warning("alertmanager %s unreachable (%s): %d notifications queued", self.cfg.url, exc,
                            self._queued)
            self._last_error = f"unreachable: {exc}"
            return False
        else:
            if self._last_error:
                log.info("alertmanager %s reachable again", self.cfg.url)
            self._last_error = ""
            outcome = "notify_sent"
        self._spool.remove([i for i, _a in head])
        with self._lock:  # counted with the queue it left: a reader never sees one sent and still queued
            self._counts[outcome] += len(head)
            self._queued = self._spool.depth()
        return True
