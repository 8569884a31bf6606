"""Edge fault drills: real Mosquitto, a real gateway (SQLite store), real edge agents.

    broker_restart  agents sample at 5 Hz; the broker goes down for ``down_s`` seconds and comes back
    edge_offline    one or more agents lose the network (a TCP proxy between them and the broker cuts
                    every connection and refuses new ones) for minutes of accelerated device time
                    (``ScaledClock``), then get it back and drain their outbox in batches

Both count ``published`` = samples the agents produced (their outbox sequence numbers),
``stored`` = distinct (pole, seq) telemetry rows in the store, ``duplicates`` = rows beyond one per
sample, and return a :class:`simulator.drills.DrillResult`.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from edge.agent import EdgeAgent
from edge.clock import Clock, ScaledClock
from edge.config import EdgeConfig
from gateway.service import Gateway, GatewayConfig
from ingest.sqlite import SqliteStore
from simulator.drills import DrillResult
from testbed.servers import LOOPBACK, Mosquitto, free_port

DISTRICT = "drill"


class CutProxy:
    """A TCP relay 127.0.0.1:port -> upstream that can cut the network: ``cut()`` drops every
    connection and refuses new ones (accept + close) until ``restore()``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = LOOPBACK
        self.port = free_port()
        self._sel = selectors.DefaultSelector()
        self._listener = socket.create_server((self.host, self.port), reuse_port=False)
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._down = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cut-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self._down.set()
        with self._lock:
            socks = list(self._pairs)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for s in list(self._pairs):
                self._drop(s)
        self._sel.close()
        self._listener.close()

    def _drop(self, s: socket.socket) -> None:
        peer = self._pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(x)
            x.close()
        if peer is not None:
            self._pairs.pop(peer, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ev in self._sel.select(0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is self._listener:
                    with contextlib.suppress(BlockingIOError, OSError):
                        client, _ = self._listener.accept()
                        if self._down.is_set():
                            client.close()
                            continue
                        try:
                            up = socket.create_connection(self.upstream, timeout=2)
                        except OSError:
                            client.close()
                            continue
                        for x in (client, up):
                            x.setblocking(True)
                            self._sel.register(x, selectors.EVENT_READ, None)
                        with self._lock:
                            self._pairs[client], self._pairs[up] = up, client
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                with self._lock:
                    peer = self._pairs.get(s)
                    if not data or peer is None or self._down.is_set():
                        self._drop(s)
                        continue
                try:
                    peer.sendall(data)
                except OSError:
                    with self._lock:
                        self._drop(s)


def _count(store: SqliteStore, poles: set[str]) -> tuple[int, int]:
    rows = [r for r in store.select("telemetry") if r.get("pole") in poles]
    per = Counter((r["pole"], int(r["seq"])) for r in rows)
    return len(per), len(rows) - len(per)


def _wait(pred: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


def _agent_cfg(pole: str, port: int, tmp: Path, interval_s: float, **kw: object) -> EdgeConfig:
    fields: dict[str, object] = dict(pole=pole, district=DISTRICT, mqtt_port=port, report_interval_s=interval_s,
                                     safety_interval_s=max(interval_s, 1.0), mqtt_keepalive_s=10,
                                     backoff_min_s=0.2, backoff_max_s=2.0,
                                     outbox_path=tmp / f"outbox-{pole}.sqlite")
    fields.update(kw)
    return EdgeConfig(**fields)  # type: ignore[arg-type]


class _Rig:
    """Broker + gateway(SqliteStore) in a temp dir; closes everything it started."""

    def __init__(self, tmp: Path, gateway_clock: Callable[[], float] = time.time) -> None:
        self.tmp = tmp
        self.broker = Mosquitto().start()
        self.store = SqliteStore(tmp / "store.sqlite")
        self.gateway = Gateway(GatewayConfig(host=self.broker.host, port=self.broker.port,
                                             client_id="drill-gateway", spool_path=str(tmp / "spool.sqlite"),
                                             deadletter_publish=False), self.store, clock=gateway_clock)
        self.gateway.start(wait_connected_s=30)
        self.agents: list[EdgeAgent] = []

    def settle(self, agents: list[EdgeAgent], timeout_s: float) -> tuple[int, int, int, list[str]]:
        """Drain and stop the agents, wait for the store; return (published, stored, duplicates, notes)."""
        notes = []
        for a in agents:
            if not a.wait_drained(timeout_s):
                notes.append(f"{a.pole}: {a.backlog()} samples still in the outbox")
        for a in agents:
            a.stop(flush_timeout_s=5)
        published = sum(int(a.counters().get("produced", 0)) for a in agents)
        poles = {a.pole for a in agents}
        _wait(lambda: _count(self.store, poles)[0] >= published, timeout_s, 0.2)
        time.sleep(0.5)  # let a late duplicate show itself, if any
        stored, dups = _count(self.store, poles)
        return published, stored, dups, notes

    def close(self) -> None:
        for a in self.agents:  # after an error: stop what is still running (stop is idempotent)
            with contextlib.suppress(Exception):
                a.stop(flush_timeout_s=0)
        with contextlib.suppress(Exception):
            self.gateway.stop()
        with contextlib.suppress(Exception):
            self.store.close()
        self.broker.close()


def broker_restart(agents: int = 3, rate_hz: float = 5.0, down_s: float = 30.0, before_s: float = 3.0,
                   after_s: float = 3.0, settle_timeout_s: float = 120.0,
                   workdir: str | Path | None = None) -> DrillResult:
    """Agents sampling at ``rate_hz``; the broker is stopped for ``down_s`` s, then started again.

    Short form for tests: ``broker_restart(agents=2, down_s=5, before_s=1, after_s=1)``.
    """
    with tempfile.TemporaryDirectory(prefix="lampwatch-drill-", dir=workdir) as d:
        tmp = Path(d)
        rig = _Rig(tmp)
        try:
            interval = 1.0 / rate_hz
            fleet = [EdgeAgent(_agent_cfg(f"br-{i:03d}", rig.broker.port, tmp, interval)) for i in range(agents)]
            rig.agents = fleet
            for a in fleet:
                a.start()
            _wait(lambda: all(a.connected for a in fleet), 30)
            time.sleep(before_s)
            rig.broker.stop()
            time.sleep(down_s)
            backlog = sum(a.backlog() for a in fleet)
            rig.broker.start()
            time.sleep(after_s)
            published, stored, dups, notes = rig.settle(fleet, settle_timeout_s)
            c = Counter[str]()
            for a in fleet:
                c.update(a.counters())
            extra = {"backlog_at_restart": float(backlog), "messages_sent": float(c["messages_sent"]),
                     "samples_sent": float(c["samples_sent"]), "reconnects": float(c["connects"] - agents),
                     "evicted": float(c["evicted"]), "gateway_duplicates": float(
                         rig.gateway.counters().get("duplicates", 0))}
            return DrillResult("broker-restart", published, stored, dups, extra=extra, notes=tuple(notes))
        finally:
            rig.close()


def edge_offline(agents: int = 2, offline_s: float = 300.0, interval_s: float = 5.0, speed: float = 60.0,
                 before_s: float = 60.0, after_s: float = 60.0, settle_timeout_s: float = 120.0,
                 workdir: str | Path | None = None) -> DrillResult:
    """Agents lose the network for ``offline_s`` seconds of device time, then get it back.

    Device time runs ``speed`` times faster than real time (``ScaledClock``), so the default — 5 min
    offline at one sample per 5 s, 1 min before and after — takes about 7 s of real time. The clock
    starts in the past, so device timestamps stay behind the gateway's real clock.
    """
    total_sim = before_s + offline_s + after_s
    origin = time.time() - total_sim - 60.0
    with tempfile.TemporaryDirectory(prefix="lampwatch-drill-", dir=workdir) as d:
        tmp = Path(d)
        rig = _Rig(tmp)
        proxy = CutProxy(rig.broker.host, rig.broker.port)
        try:
            clock: Clock = ScaledClock(speed, origin)
            fleet = [EdgeAgent(_agent_cfg(f"off-{i:03d}", proxy.port, tmp, interval_s,
                                          safety_interval_s=max(1.0, interval_s / 5)), clock=clock)
                     for i in range(agents)]
            rig.agents = fleet
            for a in fleet:
                a.start()
            _wait(lambda: all(a.connected for a in fleet), 30)
            time.sleep(before_s / speed)
            proxy.cut()
            time.sleep(offline_s / speed)
            backlog = sum(a.backlog() for a in fleet)
            proxy.restore()
            time.sleep(after_s / speed)
            published, stored, dups, notes = rig.settle(fleet, settle_timeout_s)
            c = Counter[str]()
            for a in fleet:
                c.update(a.counters())
            extra = {"backlog_at_restore": float(backlog), "messages_sent": float(c["messages_sent"]),
                     "samples_sent": float(c["samples_sent"]), "evicted": float(c["evicted"]),
                     "offline_sim_s": offline_s, "speed": speed}
            return DrillResult("edge-offline", published, stored, dups, extra=extra, notes=tuple(notes))
        finally:
            proxy.close()
            rig.close()


def main() -> None:  # pragma: no cover - convenience: python -m simulator.drills.edge_drills
    import sys

    short = "--short" in sys.argv
    r1 = broker_restart(agents=2, down_s=5, before_s=1, after_s=1) if short else broker_restart()
    print(r1.line(), r1.extra)
    r2 = edge_offline()
    print(r2.line(), r2.extra)


if __name__ == "__main__":  # pragma: no cover
    main()
