"""The edge loop: drives N >= 1 agents. A real pole is this loop with one agent; the simulator's
fleet is the same loop with thousands, so the simulator runs the code a pole runs.

Two threads, whatever N is::

    network thread   one selector over every member's MQTT socket (:class:`edge.link.MqttLink`:
                     ``read`` / ``write`` on readiness, ``wants_write`` for the write interest) and a
                     timer heap of the deadlines each ``MqttLink.step`` returned (keepalive, CONNACK
                     timeout, reconnect backoff, shutdown). A member is stepped when its socket was
                     ready, when it was woken (:meth:`EdgeLoop.wake`: the sampler stored a sample) or
                     when its deadline came; after a step on a live connection its ``pump`` (the
                     agent's forwarder) publishes what is due. New connections are paced
                     (``connect_rate`` per second) so thousands of agents do not storm the broker at
                     start or after it comes back.
    sampler thread   a timer heap of (next due device time, member): calls the member's ``tick`` on
                     the loop's clock (read the sensors, store the sample). Sensor drivers may block
                     (a command, a Modbus device): that is why sampling has its own thread and the
                     network thread never waits on a sensor.

Usage (the agent does this itself when it is given no loop)::

    with EdgeLoop(clock) as loop:
        agents = [EdgeAgent(cfg, loop=loop) for cfg in configs]
        for a in agents:
            a.start()
        ...
        for a in agents:
            a.stop()

Limit: paho opens a connection with a blocking ``connect()`` (bounded by ``connect_timeout_s``); a
broker that drops SYNs stalls the network thread for that long per attempt. Against a broker that
answers or refuses, attempts take well under a millisecond.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.clock import Clock, SystemClock
from edge.link import MqttLink

log = logging.getLogger("lampwatch.edge.loop")

_RW = selectors.EVENT_READ | selectors.EVENT_WRITE
#: the network thread sleeps at most this long (stop requests are seen within it)
_MAX_WAIT_S = 1.0


@dataclass(eq=False)
class Member:
    """One agent as the loop sees it: its link, what to do on a live connection, how to sample."""

    name: str
    link: MqttLink
    pump: Callable[[], None]  # network thread, while connected: publish what is due
    tick: Callable[[float], float | None]  # sampler thread: sample at device time; next due, None = done
    mask: int = 0  # network thread: the selector interest of the link's socket (0 = not registered)
    due: float | None = field(default=None)  # network thread: the deadline in the heap


class EdgeLoop:
    """Shared threads for one or many agents (see the module docstring). ``start()`` before the
    agents start; ``stop()`` after they stopped."""

    def __init__(self, clock: Clock | None = None, *, connect_rate: float = 200.0, name: str = "edge-loop") -> None:
        if connect_rate <= 0:
            raise ValueError("connect_rate must be positive")
        self.clock: Clock = clock or SystemClock()
        self.connect_rate = connect_rate
        self.name = name
        self.running = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # network side: _members and the heap are touched by the network thread only
        self._members: set[Member] = set()
        self._by_link: dict[MqttLink, Member] = {}
        self._new: list[Member] = []
        self._woken: set[Member] = set()
        self._wake_sent = False
        self._tokens = 1.0
        self._tokens_t = time.monotonic()
        # sampler side
        self._new_samplers: list[Member] = []
        self._resample: set[Member] = set()
        self._sample_event = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EdgeLoop:
        if self.running:
            return self
        self.running = True
        for target, what in ((self._net_loop, "net"), (self._sample_loop, "sampler")):
            t = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop both threads (stop the agents first: links still open are left as they are)."""
        if self._wake_w.fileno() < 0:
            return  # stopped before
        self._stopping.set()
        self._sample_event.set()
        self._poke()
        for t in self._threads:
            t.join(timeout_s)
        self.running = False
        with contextlib.suppress(OSError):
            self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> EdgeLoop:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def members(self) -> int:
        return len(self._members)

    # --- called by agents (any thread) ---------------------------------------------------------
    def add(self, name: str, link: MqttLink, *, pump: Callable[[], None],
            tick: Callable[[float], float | None]) -> Member:
        """Drive ``link`` (connect at once) and sample through ``tick`` (due at once)."""
        m = Member(name, link, pump, tick)
        link.watch(self)
        with self._lock:
            self._new.append(m)
            self._new_samplers.append(m)
        self._sample_event.set()
        self._poke()
        return m

    def wake(self, m: Member) -> None:
        """Step ``m`` on the network thread soon (something to publish)."""
        with self._lock:
            self._woken.add(m)
            if self._wake_sent:
                return
            self._wake_sent = True
        self._poke()

    def resample(self, m: Member) -> None:
        """Tick ``m`` on the sampler thread now (its schedule changed)."""
        with self._lock:
            self._resample.add(m)
        self._sample_event.set()

    def close(self, m: Member, final: tuple[str, bytes] | None, timeout_s: float) -> None:
        """Shut ``m``'s link down cleanly (see :meth:`MqttLink.request_close`) and wait for it."""
        m.link.request_close(final, timeout_s)
        self.wake(m)
        if self.running:
            m.link.closed.wait(timeout_s + 5.0)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # --- SocketWatcher: paho opens / closes a socket (network thread) ----------------------------
    def socket_opened(self, link: MqttLink, sock: Any) -> None:
        m = self._by_link.get(link)
        if m is not None:
            self._sel.register(sock, selectors.EVENT_READ, m)
            m.mask = selectors.EVENT_READ

    def socket_closed(self, link: MqttLink, sock: Any) -> None:
        m = self._by_link.get(link)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(sock)
        if m is not None:
            m.mask = 0

    def _may_connect(self, now: float) -> bool:
        """Token bucket for new connection attempts (burst of a tenth of a second's worth)."""
        burst = max(1.0, self.connect_rate / 10)
        self._tokens = min(burst, self._tokens + (now - self._tokens_t) * self.connect_rate)
        self._tokens_t = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    # --- network thread --------------------------------------------------------------------------
    def _net_loop(self) -> None:
        heap: list[tuple[float, int, Member]] = []
        order = itertools.count()
        while not self._stopping.is_set():
            now = time.monotonic()
            timeout = min(_MAX_WAIT_S, max(0.0, heap[0][0] - now)) if heap else _MAX_WAIT_S
            try:
                events = self._sel.select(timeout)
            except (OSError, ValueError):  # pragma: no cover - a socket closed under us; next turn
                events = []
            touched: set[Member] = set()
            for key, mask in events:
                m = key.data
                if m is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        self._wake_r.recv(65536)
                    continue
                touched.add(m)
                try:
                    if mask & selectors.EVENT_READ:
                        m.link.read()
                    if mask & selectors.EVENT_WRITE:
                        m.link.write()
                except Exception:  # pragma: no cover - a bug in one agent must not stop the others
                    log.exception("edge loop: network I/O of %s failed", m.name)
            with self._lock:
                new, self._new = self._new, []
                touched |= self._woken
                self._woken = set()
                self._wake_sent = False
            for m in new:
                self._members.add(m)
                self._by_link[m.link] = m
                touched.add(m)
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, _, m = heapq.heappop(heap)
                if m.due == due:
                    m.due = None
                    touched.add(m)
            for m in touched:
                if m not in self._members:
                    continue
                nxt = self._step(m, now)
                if nxt is None:
                    self._members.discard(m)
                    self._by_link.pop(m.link, None)
                elif m.due is None or nxt < m.due:
                    m.due = nxt
                    heapq.heappush(heap, (nxt, next(order), m))

    def _step(self, m: Member, now: float) -> float | None:
        """Step the link, pump on a live connection, keep the write interest true; the next deadline."""
        try:
            nxt = m.link.step(now, self._may_connect)
            if nxt is not None and m.link.connected and not m.link.closing:
                m.pump()
        except Exception:  # pragma: no cover - a bug in one agent must not stop the others
            log.exception("edge loop: step of %s failed", m.name)
            return now + 1.0
        sock = m.link.socket()
        if sock is not None and m.mask:
            want = _RW if m.link.wants_write() else selectors.EVENT_READ
            if m.mask != want:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.modify(sock, want, m)
                    m.mask = want
        return nxt

    # --- sampler thread ----------------------------------------------------------------------------
    def _sample_loop(self) -> None:
        heap: list[tuple[float, int, Member]] = []
        order = itertools.count()
        due_at: dict[Member, float] = {}
        while not self._stopping.is_set():
            self._sample_event.clear()
            with self._lock:
                due_now = self._new_samplers + list(self._resample)
                self._new_samplers = []
                self._resample = set()
            now = self.clock.time()
            for m in due_now:
                due_at[m] = now
                heapq.heappush(heap, (now, next(order), m))
            while heap and heap[0][0] <= now:
                due, _, m = heapq.heappop(heap)
                if due_at.get(m) != due:
                    continue  # rescheduled since (woken by a command)
                try:
                    nxt = m.tick(now)
                except Exception:  # pragma: no cover - the agent's tick handles its own errors
                    log.exception("edge loop: sampling %s failed", m.name)
                    nxt = now + 1.0
                if nxt is None:
                    due_at.pop(m, None)
                    continue
                due_at[m] = nxt
                heapq.heappush(heap, (nxt, next(order), m))
            wait = heap[0][0] - self.clock.time() if heap else 3600.0
            self.clock.wait(self._sample_event, wait)
