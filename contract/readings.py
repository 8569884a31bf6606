"""What a validated telemetry sample becomes inside lampwatch, and the store-neutral point.

``Reading`` is the gateway's unit of work after validation; ``Point`` is what any store writes
(InfluxDB line protocol, SQLite rows). The mapping from one to the other — which keys are tags,
which are fields — is the schema in :mod:`contract.schema`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FieldValue = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Reading:
    pole: str
    district: str
    boot: str
    seq: int
    ts_ms: int  # device time, UTC
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: tuple[tuple[str, str], ...]  # sorted by key
    fields: Mapping[str, FieldValue]
    ts_ns: int  # UTC nanoseconds; telemetry uses the device's millisecond time * 1e6

    @property
    def series_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.measurement, self.tags
