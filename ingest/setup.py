"""Database and retention-policy setup, idempotent (``lampwatch-ingest setup``).

InfluxDB 1.x: one database, three retention policies::

    raw         30d   shard 1d    DEFAULT   the gateway's writes (no rp given -> the default)
    rollup_1m   730d  shard 7d              telemetry_1m (lampwatch's rollup job)
    rollup_1h   INF   shard 30d             telemetry_1h

:func:`plan` compares what the server has (``SHOW RETENTION POLICIES``) with what is wanted and
returns only the statements needed (CREATE for a missing policy, ALTER for a different one), so a
second run changes nothing. No continuous queries: rollups are computed by lampwatch itself
(:mod:`ingest.rollup`, reasons in docs/schema.md).

InfluxDB 2.x has no retention policies: each policy becomes a bucket named ``<db>/<rp>`` (the raw
bucket is simply ``<db>``), which 2.x maps to database/retention policy for InfluxQL on its own
("virtual DBRP mappings"); :func:`v2_commands` prints the ``influx`` CLI lines. 3.x: the same names
as databases (``<db>/<rp>`` is how 3.x resolves an InfluxQL ``db`` + ``rp``), each with its retention.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ingest.influxql import ident

_DURATION = re.compile(r"^(?:INF|0|(\d+)([smhdw]))$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_GO_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def duration_seconds(text: str) -> int:
    """``30d`` / ``12h`` / ``2w`` / ``INF`` (= 0, kept forever) -> seconds; ``ValueError`` otherwise."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30d, 12h, 2w or INF")
    if m.group(1) is None:
        return 0
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def go_duration_seconds(text: str) -> int:
    """InfluxDB's answer (Go duration such as ``720h0m0s``; ``0s`` = infinite) -> seconds."""
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"unexpected duration from the server: {text!r}")
    return round(sum(float(n) * _GO_UNIT_S[u] for n, u in parts))


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    duration: str  # InfluxQL duration literal or INF
    shard: str
    default: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"invalid retention policy name {self.name!r}")
        duration_seconds(self.duration)
        if duration_seconds(self.shard) == 0:
            raise ValueError(f"{self.name}: shard duration must be finite")

    def clause(self) -> str:
        d = "INF" if duration_seconds(self.duration) == 0 else self.duration
        return f"DURATION {d} REPLICATION 1 SHARD DURATION {self.shard}" + (" DEFAULT" if self.default else "")


def policies(raw: str = "30d", rollup_1m: str = "730d", rollup_1h: str = "INF") -> tuple[Policy, ...]:
    """lampwatch's three retention policies (durations overridable)."""
    return (Policy("raw", raw, "1d", default=True), Policy("rollup_1m", rollup_1m, "7d"),
            Policy("rollup_1h", rollup_1h, "30d"))


def plan(database: str, existing: Sequence[Mapping[str, Any]], wanted: Sequence[Policy]) -> list[str]:
    """Statements that turn ``existing`` (rows of SHOW RETENTION POLICIES) into ``wanted``."""
    if sum(p.default for p in wanted) > 1:
        raise ValueError("at most one retention policy can be the default")
    have = {str(r["name"]): r for r in existing}
    out: list[str] = []
    for p in wanted:
        row = have.get(p.name)
        if row is None:
            out.append(f"CREATE RETENTION POLICY {ident(p.name)} ON {ident(database)} {p.clause()}")
            continue
        same = (go_duration_seconds(str(row["duration"])) == duration_seconds(p.duration)
                and go_duration_seconds(str(row["shardGroupDuration"])) == duration_seconds(p.shard)
                and (bool(row["default"]) or not p.default))
        if not same:
            out.append(f"ALTER RETENTION POLICY {ident(p.name)} ON {ident(database)} {p.clause()}")
    return out


class Querier(Protocol):
    def query(self, q: str) -> list[dict[str, Any]]: ...


def _rows(store: Querier, q: str) -> list[dict[str, Any]]:
    """Flatten a query answer into rows; a series without ``values`` (e.g. no database yet) is empty."""
    out = []
    for result in store.query(q):
        for s in result.get("series", []):
            out += [dict(zip(s["columns"], v, strict=True)) for v in s.get("values", [])]
    return out


def setup(store: Querier, database: str, wanted: Sequence[Policy] | None = None) -> list[str]:
    """Create the database and retention policies on InfluxDB 1.x; return the statements run
    (empty when everything already matched)."""
    wanted = policies() if wanted is None else wanted
    done: list[str] = []
    names = {str(r.get("name")) for r in _rows(store, "SHOW DATABASES")}
    if database not in names:
        stmt = f"CREATE DATABASE {ident(database)}"
        store.query(stmt)
        done.append(stmt)
    existing = _rows(store, f"SHOW RETENTION POLICIES ON {ident(database)}")
    for stmt in plan(database, existing, wanted):
        store.query(stmt)
        done.append(stmt)
    return done


def v2_commands(database: str, org: str, wanted: Sequence[Policy] | None = None) -> list[str]:
    """The InfluxDB 2.x equivalent, as ``influx`` CLI lines (buckets; InfluxQL maps ``<db>/<rp>``
    buckets to database + retention policy by itself). The raw bucket is ``<db>``."""
    wanted = policies() if wanted is None else wanted
    lines = []
    for p in wanted:
        bucket = database if p.default else f"{database}/{p.name}"
        retention = "0" if duration_seconds(p.duration) == 0 else p.duration
        lines.append(f"influx bucket create --org {org} --name {bucket} --retention {retention} "
                     f"--shard-group-duration {p.shard}")
    return lines
