"""A pure size/age batcher (Telegraf's RunningOutput idea): add items, take a batch when it is full
or when its oldest item is older than ``max_age_s``. The clock is passed in, never read here."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, max_items: int = 5000, max_age_s: float = 0.2) -> None:
        if max_items < 1 or max_age_s <= 0:
            raise ValueError("max_items must be >= 1 and max_age_s > 0")
        self.max_items, self.max_age_s = max_items, max_age_s
        self._items: list[T] = []
        self._weight = 0
        self._first: float | None = None

    def add(self, item: T, now: float, weight: int = 1) -> list[T] | None:
        """Add one item; returns a full batch when the size bound is reached."""
        if self._first is None:
            self._first = now
        self._items.append(item)
        self._weight += weight
        return self.take() if self._weight >= self.max_items else None

    def due(self, now: float) -> list[T] | None:
        """The pending batch if its oldest item is at least ``max_age_s`` old."""
        if self._first is not None and now - self._first >= self.max_age_s:
            return self.take()
        return None

    def next_deadline(self) -> float | None:
        return None if self._first is None else self._first + self.max_age_s

    def take(self) -> list[T]:
        items, self._items, self._weight, self._first = self._items, [], 0, None
        return items

    def __len__(self) -> int:
        return len(self._items)
