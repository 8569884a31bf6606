"""InfluxDB 1.x store over its v1 HTTP API: line protocol to ``/write``, InfluxQL from ``/query``.

Debian ships InfluxDB 1.6.7 and many cities still run 1.x. Writes use nanosecond precision and
keep-alive connections (urllib3, which influxdb-client already brings). Errors are translated:
connection problems and 5xx are :class:`StoreError` (transient: the gateway retries and spools);
401/403 is :class:`StoreAuthError` (the store refused us: spool and alarm); any other 4xx is
:class:`StoreRejected` (the data itself was refused: the gateway bisects to find the points).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import urllib3

from contract.errors import StoreAuthError, StoreError, StoreRejected
from contract.readings import Point
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
                self.query(f'CREATE DATABASE "{database}"')
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
        rows = self.rows(f'SELECT count("{field}") FROM "{measurement}"')
        return int(rows[0]["count"]) if rows else 0
