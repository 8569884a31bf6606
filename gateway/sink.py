"""The only way the gateway sees a store.

Any object with ``write(points)`` and ``close()`` is a sink: ``ingest.influx1.Influx1Store``,
``ingest.influx2.Influx2Store`` and ``ingest.sqlite.SqliteStore`` are the three real ones; the
gateway's code is the same for all of them. ``write`` either returns (the points are durable in the
store) or raises ``contract.errors.StoreError`` (transient: retry, spool) or ``StoreRejected``
(the store refused the data itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from contract.readings import Point


@runtime_checkable
class Sink(Protocol):
    name: str

    def write(self, points: Sequence[Point]) -> None: ...

    def close(self) -> None: ...
