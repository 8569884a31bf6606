"""Constants and small helpers shared by the simulator tests (imported by module name)."""

from __future__ import annotations

import numpy as np

from contract.catalog import INDEX

#: 2024-01-15T00:00:00Z, a winter Monday: long nights in Amsterdam.
T0 = 1_705_276_800_000
HOUR = 3_600_000
MIN = 60_000


def col(name: str) -> int:
    return INDEX[name]


def times(start: int, end: int, step: int) -> np.ndarray:
    return np.arange(start, end, step, dtype=np.int64)
