"""The agent's clock: device time for timestamps and for the sampling schedule.

``SystemClock`` is the real one. ``ScaledClock`` runs ``speed`` times faster than real time from a
chosen origin, so a drill can play minutes of a pole's life in seconds. Only sampling and timestamps
follow this clock; the network (keepalive, reconnect backoff) always runs on real time.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (UTC), as the device believes."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Block up to ``seconds`` of this clock's time or until ``event`` is set; return event.is_set()."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class ScaledClock:
    """Device time = ``origin + speed * (real seconds elapsed since construction)``."""

    def __init__(self, speed: float, origin: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.speed = speed
        self.origin = time.time() if origin is None else origin
        self._m0 = time.monotonic()

    def time(self) -> float:
        return self.origin + (time.monotonic() - self._m0) * self.speed

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds) / self.speed)
