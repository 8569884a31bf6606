"""InfluxDB 1.x store over its v1 HTTP API: line protocol to ``/write``, InfluxQL from ``/query``.

Debian ships InfluxDB 1.6.7 and many cities still run 1.x. Writes use nanosecond precision and
keep-alive connections (urllib3, which influxdb-client already brings). Errors are translated:
connection problems and 5xx are :class:`StoreError` (transient: the gateway retries and spools);
401/403 is :class:`StoreAuthError` (the store refused us: spool and alarm); any other 4xx is
:class:`StoreRejected` (the data itself was refused: the gateway bisects to find the points).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import urllib3

from contract import schema
from contract.errors import StoreAuthError, StoreError, StoreRejected
from contract.readings import Point
from ingest.influxql import ident, literal
from ingest.lineprotocol import encode_many


class Influx1Store:
    name = "influxdb1"

    def __init__(self, url: str, database: str, *, username: str | None = None,
                 password: str | None = None, retention_policy: str | None = None,
                 timeout_s: float = 10.0, create: bool = True) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.rp = retention_policy
        # HTTP Basic auth, which InfluxDB 1.x reads for /write and /query alike (u/p in a POST form body
        # are ignored by /query: with auth-enabled every query answered 401)
        self._headers: dict[str, str] = {}
        if username:
            self._headers = urllib3.make_headers(basic_auth=f"{username}:{password or ''}")
        self._http = urllib3.PoolManager(
            maxsize=4, timeout=urllib3.Timeout(connect=3.0, read=timeout_s), retries=False)
        if create:
            try:
                self.query(f"CREATE DATABASE {ident(database)}")
            except StoreError:
                pass  # the server may be down at start: the gateway spools until it returns

    # --- write side (the gateway's Sink) -------------------------------------------------------
    def write(self, points: Sequence[Point]) -> None:
        if not points:
            return
        self.write_lines(encode_many(points))

    def write_lines(self, body: bytes, precision: str = "ns") -> None:
        fields = {"db": self.database, "precision": precision}
        if self.rp:
            fields["rp"] = self.rp
        qs = urlencode(fields)
        try:
            resp = self._http.request("POST", f"{self.url}/write?{qs}", body=body,
                                      headers={"Content-Type": "text/plain; charset=utf-8", **self._headers})
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"influxdb {self.url} unreachable: {exc}") from exc
        if resp.status == 204:
            return
        msg = resp.data[:300].decode("utf-8", "replace")
        if resp.status in (401, 403):
            raise StoreAuthError(f"influxdb refused the gateway's credentials ({resp.status}): {msg}")
        if 400 <= resp.status < 500 and resp.status not in (404, 408, 429):
            raise StoreRejected(f"influxdb refused the write ({resp.status}): {msg}")
        raise StoreError(f"influxdb write failed ({resp.status}): {msg}")

    def close(self) -> None:
        self._http.clear()

    # --- read side ---------------------------------------------------------------------------
    def query(self, q: str, *, epoch: str = "ns") -> list[dict[str, Any]]:
        """Run InfluxQL; returns the ``results`` list. Raises StoreError on any error."""
        fields = {"q": q, "db": self.database, "epoch": epoch}
        try:
            resp = self._http.request("POST", f"{self.url}/query", fields=fields,
                                      encode_multipart=False, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"influxdb {self.url} unreachable: {exc}") from exc
        try:
            body = json.loads(resp.data)
        except ValueError as exc:
            raise StoreError(f"influxdb answered {resp.status} with non-JSON") from exc
        if resp.status != 200 or "error" in body:
            raise StoreError(f"influxdb query failed ({resp.status}): {body.get('error', body)}")
        results: list[dict[str, Any]] = body.get("results", [])
        for r in results:
            if "error" in r:
                raise StoreError(f"influxql error: {r['error']}")
        return results

    def rows(self, q: str, *, epoch: str = "ns") -> list[dict[str, Any]]:
        """Run InfluxQL and flatten every series into dict rows (tags merged in)."""
        out: list[dict[str, Any]] = []
        for r in self.query(q, epoch=epoch):
            for s in r.get("series", []):
                tags = s.get("tags", {})
                for values in s.get("values", []):
                    row = dict(zip(s["columns"], values, strict=True))
                    row.update(tags)
                    out.append(row)
        return out

    def count(self, measurement: str = "telemetry") -> int:
        field = "seq" if measurement == "telemetry" else "count"
        rows = self.rows(f'SELECT count("{field}") FROM {ident(measurement)}')
        return int(rows[0]["count"]) if rows else 0

    def select(self, measurement: str, where_tags: Mapping[str, str] | None = None, limit: int | None = None,
               *, start_ns: int | None = None, end_ns: int | None = None) -> list[dict[str, Any]]:
        """Rows as dicts, tags and fields merged (absent fields left out, as in SqliteStore.select), plus
        ``time`` (ns), in time order. ``start_ns`` is inclusive, ``end_ns`` exclusive."""
        cond = [f"{ident(k)} = {literal(v)}" for k, v in (where_tags or {}).items()]
        if start_ns is not None:
            cond.append(f"time >= {int(start_ns)}")
        if end_ns is not None:
            cond.append(f"time < {int(end_ns)}")
        q = f"SELECT * FROM {ident(measurement)}" + (" WHERE " + " AND ".join(cond) if cond else "")
        if limit is not None:
            q += f" LIMIT {int(limit)}"
        return [{k: v for k, v in r.items() if v is not None} for r in self.rows(q)]

    def exposure(self) -> tuple[int, int, int, int]:
        """(poles that reported telemetry, telemetry samples, first and last device time in ms)."""
        t = ident(schema.TELEMETRY)
        per_pole = self.rows(f'SELECT count("seq") FROM {t} GROUP BY "pole"')
        first = self.rows(f'SELECT first("seq") FROM {t}')
        last = self.rows(f'SELECT last("seq") FROM {t}')
        if not per_pole or not first or not last:
            return 0, 0, 0, 0
        n = sum(int(r["count"]) for r in per_pole)
        return len(per_pole), n, int(first[0]["time"]) // 1_000_000, int(last[0]["time"]) // 1_000_000

    def per_bucket(self, bucket_ms: int) -> list[tuple[int, int]]:
        """(bucket start ms, telemetry samples with device time in it), time order."""
        _, n, lo, hi = self.exposure()
        if not n:
            return []
        rows = self.rows(f'SELECT count("seq") FROM {ident(schema.TELEMETRY)} WHERE time >= {lo}ms '
                         f'AND time <= {hi}ms GROUP BY time({int(bucket_ms)}ms)')
        return [(int(r["time"]) // 1_000_000, int(r["count"] or 0)) for r in rows]

    def describe(self) -> str:
        return f"influxdb1 {self.url} db={self.database}"

