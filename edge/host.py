"""Many agents in one process: one network thread and one sampler thread for all of them.

A real pole runs one :class:`edge.agent.EdgeAgent` with its own two threads. The simulator's
per-device mode runs thousands in one process; with two threads each they spend their time handing
the GIL around (and the sampler threads queue on the shared signal cache). An :class:`AgentHost`
gives them two threads in all::

    network thread   one selector over every agent's paho socket (paho's external-loop API:
                     loop_read / loop_write / loop_misc, want_write), plus a wake-up socketpair;
                     per turn it steps only the links that had traffic or were woken (the sampler
                     stored a sample), and every ``sweep_s`` all of them (keepalive, CONNACK
                     timeouts, reconnects). New connections are paced (``connect_rate`` per second)
                     so thousands of agents do not storm the broker at start or after it comes back.
    sampler thread   a heap of (next due device time, agent): ticks each agent's Sampler on the
                     host's clock, appends to that agent's outbox and wakes its link.

Each agent keeps everything that makes it a device: its MQTT client and client id, retained birth,
Last Will, on-disk outbox, sequence numbers, reconnect backoff and command handling. Only the
threads are shared. Usage::

    with AgentHost(clock) as host:
        agents = [EdgeAgent(cfg, host=host) for cfg in configs]
        for a in agents:
            a.start()
        ...
        for a in agents:
            a.stop()

Limit: paho opens a connection with a blocking ``connect()`` (bounded by ``connect_timeout_s``); a
broker that drops SYNs stalls the shared network thread for that long per attempt. Against a broker
that answers or refuses, attempts take well under a millisecond.
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
from typing import TYPE_CHECKING, Any

from edge.clock import Clock, SystemClock

if TYPE_CHECKING:
    from edge.agent import EdgeAgent
    from edge.link import MqttLink

log = logging.getLogger("lampwatch.edge.host")

_RW = selectors.EVENT_READ | selectors.EVENT_WRITE


class AgentHost:
    """Shared threads for many agents (see the module docstring). ``start()`` before the agents start;
    ``stop()`` after they stopped."""

    def __init__(self, clock: Clock | None = None, *, connect_rate: float = 200.0, sweep_s: float = 0.5,
                 name: str = "edge-host") -> None:
        if connect_rate <= 0:
            raise ValueError("connect_rate must be positive")
        self.clock: Clock = clock or SystemClock()
        self.connect_rate = connect_rate
        self.sweep_s = sweep_s
        self.name = name
        self.running = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # network side: _links, _masks and _unconnected are touched by the network thread only
        self._links: set[MqttLink] = set()
        self._masks: dict[MqttLink, int] = {}
        self._unconnected: set[MqttLink] = set()
        self._new_links: list[MqttLink] = []
        self._woken: set[MqttLink] = set()
        self._wake_sent = False
        self._tokens = 1.0
        self._tokens_t = time.monotonic()
        # sampler side
        self._new_agents: list[EdgeAgent] = []
        self._sample_woken: set[EdgeAgent] = set()
        self._sample_event = threading.Event()
        self._due: dict[EdgeAgent, float] = {}  # sampler thread only
        self._threads: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> AgentHost:
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

    def __enter__(self) -> AgentHost:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def links(self) -> int:
        return len(self._links)

    # --- called by agents and links (any thread) ---------------------------------------------------
    def _add_agent(self, agent: EdgeAgent) -> None:
        with self._lock:
            self._new_agents.append(agent)
        self._sample_event.set()

    def _wake_sampler(self, agent: EdgeAgent) -> None:
        with self._lock:
            self._sample_woken.add(agent)
        self._sample_event.set()

    def _add_link(self, link: MqttLink) -> None:
        with self._lock:
            self._new_links.append(link)
        self._poke()

    def _wake_link(self, link: MqttLink) -> None:
        with self._lock:
            self._woken.add(link)
            if self._wake_sent:
                return
            self._wake_sent = True
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # --- paho socket callbacks (network thread) --------------------------------------------------------
    def _sock_opened(self, link: MqttLink, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, link)
        self._masks[link] = selectors.EVENT_READ
        self._unconnected.discard(link)

    def _sock_closed(self, link: MqttLink, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(sock)
        self._masks.pop(link, None)
        if link in self._links:
            self._unconnected.add(link)

    def _may_connect(self, now: float) -> bool:
        """Token bucket for new connection attempts (burst of a tenth of a second's worth)."""
        burst = max(1.0, self.connect_rate / 10)
        self._tokens = min(burst, self._tokens + (now - self._tokens_t) * self.connect_rate)
        self._tokens_t = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    # --- network thread ------------------------------------------------------------------------------
    def _net_loop(self) -> None:
        next_sweep = 0.0
        next_scan = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            timeout = max(0.0, min(next_sweep, next_scan if self._unconnected else next_sweep) - now)
            try:
                events = self._sel.select(min(timeout, 0.25))
            except (OSError, ValueError):  # pragma: no cover - a socket closed under us; next turn
                events = []
            touched: set[MqttLink] = set()
            for key, mask in events:
                link = key.data
                if link is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        self._wake_r.recv(65536)
                    continue
                touched.add(link)
                try:
                    if mask & selectors.EVENT_READ:
                        link.client.loop_read()
                    if mask & selectors.EVENT_WRITE and link.client.socket() is not None:
                        link.client.loop_write()
                except Exception:  # pragma: no cover - a bug in one agent must not stop the others
                    log.exception("edge host: network I/O of %s failed", link.s.client_id)
            with self._lock:
                new, self._new_links = self._new_links, []
                touched |= self._woken
                self._woken = set()
                self._wake_sent = False
            for link in new:
                self._links.add(link)
                self._unconnected.add(link)
                touched.add(link)
            now = time.monotonic()
            sweep = now >= next_sweep
            if sweep:
                next_sweep = now + self.sweep_s
                touched = set(self._links)
            elif self._unconnected and now >= next_scan:
                next_scan = now + 0.02
                touched |= self._unconnected
            for link in touched:
                if link not in self._links:
                    continue
                try:
                    done = link._host_step(now, sweep)
                except Exception:  # pragma: no cover - a bug in one agent must not stop the others
                    log.exception("edge host: step of %s failed", link.s.client_id)
                    continue
                if done:
                    self._links.discard(link)
                    self._unconnected.discard(link)
                    self._masks.pop(link, None)
                    link._closed.set()
                else:
                    self._sync(link)

    def _sync(self, link: MqttLink) -> None:
        """Ask the selector for writability exactly while paho has something to write."""
        sock = link.client.socket()
        if sock is None:
            return
        want = _RW if link.client.want_write() else selectors.EVENT_READ
        if self._masks.get(link) != want:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.modify(sock, want, link)
                self._masks[link] = want

    # --- sampler thread ------------------------------------------------------------------------------
    def _sample_loop(self) -> None:
        heap: list[tuple[float, int, EdgeAgent]] = []
        order = itertools.count()
        while not self._stopping.is_set():
            self._sample_event.clear()
            with self._lock:
                due_now = self._new_agents + list(self._sample_woken)
                self._new_agents = []
                self._sample_woken = set()
            now = self.clock.time()
            for a in due_now:
                self._due[a] = now
                heapq.heappush(heap, (now, next(order), a))
            while heap and heap[0][0] <= now:
                due, _, a = heapq.heappop(heap)
                if self._due.get(a) != due:
                    continue  # rescheduled since (woken by a command)
                try:
                    nxt = a._host_tick(now)
                except Exception:  # pragma: no cover - _host_tick handles its own errors
                    log.exception("edge host: sampling %s failed", a.pole)
                    nxt = now + 1.0
                if nxt is None:
                    self._due.pop(a, None)
                    continue
                self._due[a] = nxt
                heapq.heappush(heap, (nxt, next(order), a))
            wait = heap[0][0] - self.clock.time() if heap else 3600.0
            self.clock.wait(self._sample_event, wait)
