"""Open the configured store: the one place that maps configuration to a store class.

The embedded SQLite store is the default; an InfluxDB URL selects InfluxDB (1.x through its v1 API,
or 2.x/3.x through influxdb-client when a token is given).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from contract.errors import ConfigError
from ingest.influx1 import Influx1Store
from ingest.influx2 import Influx2Store
from ingest.sqlite import SqliteStore

StoreKind = Literal["auto", "sqlite", "influx1", "influx2"]
Store = SqliteStore | Influx1Store | Influx2Store


class StoreConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    store: StoreKind = "auto"
    sqlite_path: str = ".lampwatch/lampwatch.sqlite"
    influx_url: str | None = None
    influx_db: str = "lampwatch"  # 1.x database
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    influx_token: SecretStr | None = None  # 2.x / 3.x
    influx_org: str = "lampwatch"
    influx_bucket: str = "lampwatch"

    def kind(self) -> Literal["sqlite", "influx1", "influx2"]:
        if self.store != "auto":
            return self.store
        if not self.influx_url:
            return "sqlite"
        return "influx2" if self.influx_token else "influx1"


def open_store(cfg: StoreConfig) -> Store:
    kind = cfg.kind()
    if kind == "sqlite":
        return SqliteStore(cfg.sqlite_path)
    if not cfg.influx_url:
        raise ConfigError(f"store {kind} needs influx_url (LAMPWATCH_..._INFLUX_URL)")
    if kind == "influx1":
        pw = cfg.influx_password.get_secret_value() if cfg.influx_password else None
        return Influx1Store(cfg.influx_url, cfg.influx_db, username=cfg.influx_username, password=pw)
    if not cfg.influx_token:
        raise ConfigError("store influx2 needs influx_token")
    return Influx2Store(cfg.influx_url, token=cfg.influx_token.get_secret_value(), org=cfg.influx_org,
                        bucket=cfg.influx_bucket)


def describe(cfg: StoreConfig) -> str:
    kind = cfg.kind()
    if kind == "sqlite":
        return f"sqlite {cfg.sqlite_path}"
    return f"{kind} {cfg.influx_url} ({cfg.influx_db if kind == 'influx1' else cfg.influx_bucket})"
