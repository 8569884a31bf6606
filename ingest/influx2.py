"""InfluxDB 2.x / 3.x store through influxdb-client's ``/api/v2/write`` path.

Proven here against VictoriaMetrics, which accepts the same endpoint (no InfluxDB 2/3 server is
installable on this machine). Writes are synchronous: the gateway owns batching, retries and the disk
spool, so the client's own background batching and retry (which gives up after ~3 minutes and
then drops the batch) are deliberately not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from contract.errors import StoreAuthError, StoreError, StoreRejected
from contract.readings import Point
from ingest.lineprotocol import encode_many


class Influx2Store:
    name = "influxdb2"

    def __init__(self, url: str, *, token: str, org: str, bucket: str, timeout_s: float = 10.0) -> None:
        self.url, self.org, self.bucket = url.rstrip("/"), org, bucket
        self._client = InfluxDBClient(url=self.url, token=token, org=org,
                                      timeout=int(timeout_s * 1000), retries=False)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, points: Sequence[Point]) -> None:
        if not points:
            return
        try:
            self._write.write(bucket=self.bucket, org=self.org, record=encode_many(points),
                              write_precision=WritePrecision.NS)  # type: ignore[arg-type]  # a str constant
        except ApiException as exc:
            status = exc.status or 0
            if status in (401, 403):
                raise StoreAuthError(f"influxdb2 refused the gateway's token ({status}): {exc.reason}") from exc
            if 400 <= status < 500 and status not in (404, 408, 429):
                raise StoreRejected(f"influxdb2 refused the write ({status}): {exc.reason}") from exc
            raise StoreError(f"influxdb2 write failed ({status}): {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreError(f"influxdb2 {self.url} unreachable: {exc}") from exc

    def close(self) -> None:
        self._write.close()
        self._client.close()
