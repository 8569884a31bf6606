"""ingest.stores: a gateway loads only the store client it opens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    return {m.split(".")[0] for m in out.split()}


def test_influxdb_client_is_loaded_only_for_an_influx2_store(tmp_path: Path) -> None:
    # influxdb-client with reactivex and dateutil is ~12 MB of resident memory a gateway on InfluxDB 1.x
    # or SQLite never uses
    sqlite = ("from ingest.stores import StoreConfig, open_store\n"
              f"open_store(StoreConfig(sqlite_path={str(tmp_path / 's.db')!r})).close()")
    assert "influxdb_client" not in _loaded_after("import gateway.app\n" + sqlite)
    v2 = ("from ingest.stores import StoreConfig, open_store\n"
          "open_store(StoreConfig(store='influx2', influx_url='http://127.0.0.1:9', influx_token='t')).close()")
    assert "influxdb_client" in _loaded_after(v2)
