"""Acknowledgements released in arrival order, only once what a message carried is durable (pure
bookkeeping; the send function is injected).

MQTT requires PUBACKs in the order the PUBLISHes arrived (MQTT 3.1.1 and 5, section 4.6). Every
message gets a tracking id when the pipeline takes it; the output stage calls :meth:`delivered` with
the ids of a batch once the store (or the fsynced spool) holds it; acks are then sent for the longest
delivered prefix. A message refused as malformed is delivered with its batch too (its reject point and
quarantine entry travel in that batch). Thread-safe: the pipeline thread tracks, the output thread
delivers.

With ``send_many`` the QoS 1 acknowledgements released together (a flush's worth: up to a batch of
5,000) go out as one call, in order: the gateway writes them to the socket as one buffer instead of one
packet, one wake-up of the network thread and one ``send`` each (:meth:`gateway.service.Gateway`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable


class AckTracker:
    def __init__(self, send: Callable[[int, int], object],
                 send_many: Callable[[list[int]], object] | None = None) -> None:
        self._send = send
        self._send_many = send_many  # QoS 1 message ids, in release order
        self._lock = threading.Lock()
        self._order: deque[int] = deque()  # tracking ids in arrival order
        self._msg: dict[int, tuple[int, int]] = {}  # tracking id -> (mid, qos)
        self._done: set[int] = set()
        self._next = 0
        self.acked = 0

    def track(self, mid: int, qos: int) -> int:
        with self._lock:
            tid = self._next
            self._next += 1
            self._order.append(tid)
            self._msg[tid] = (mid, qos)
            return tid

    def delivered(self, tids: Iterable[int]) -> int:
        """Mark ``tids`` durable; send the acks now releasable, in order. Returns how many were sent."""
        out: list[tuple[int, int]] = []
        with self._lock:
            self._done.update(tids)
            while self._order and self._order[0] in self._done:
                tid = self._order.popleft()
                self._done.discard(tid)
                out.append(self._msg.pop(tid))
            self.acked += len(out)
        if self._send_many is not None:
            ones = [mid for mid, qos in out if qos == 1]
            if ones:
                self._send_many(ones)
            if len(ones) == len(out):
                return len(out)
        for mid, qos in out:
            if qos > 1 or (qos == 1 and self._send_many is None):
                self._send(mid, qos)
        return len(out)

    def pending(self) -> int:
        with self._lock:
            return len(self._order)
