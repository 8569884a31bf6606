"""Open the configured store: the one place that maps configuration to a store class.

The embedded SQLite store is the default; an InfluxDB URL selects InfluxDB (1.x through its v1 API,
or 2.x/3.x through influxdb-client when a token is given).

The read side is :class:`StoreReader`, implemented by :class:`SqliteStore` and :class:`Influx1Store`
themselves (no second read layer): what the simulator's scoring and report and the open-data publisher
read. :func:`open_reader` maps the CLI spelling (``sqlite:PATH`` or an InfluxDB URL + database) to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from pydantic import BaseModel, ConfigDict, SecretStr

from contract.errors import ConfigError, StoreError
from ingest.influx1 import Influx1Store
from ingest.sqlite import SqliteStore

if TYPE_CHECKING:  # imported when opened: influxdb-client (and reactivex, dateutil) is 12 MB of a gateway
    from ingest.influx2 import Influx2Store  # that stores to InfluxDB 1.x or SQLite and never uses it

StoreKind = Literal["auto", "sqlite", "influx1", "influx2"]
Store: TypeAlias = "SqliteStore | Influx1Store | Influx2Store"


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
    from ingest.influx2 import Influx2Store

    return Influx2Store(cfg.influx_url, token=cfg.influx_token.get_secret_value(), org=cfg.influx_org,
                        bucket=cfg.influx_bucket)


def describe(cfg: StoreConfig) -> str:
    kind = cfg.kind()
    if kind == "sqlite":
        return f"sqlite {cfg.sqlite_path}"
    return f"{kind} {cfg.influx_url} ({cfg.influx_db if kind == 'influx1' else cfg.influx_bucket})"


class StoreReader(Protocol):
    """What is read back from a store (SqliteStore and Influx1Store implement it)."""

    def select(self, measurement: str, where_tags: Mapping[str, str] | None = None, limit: int | None = None,
               *, start_ns: int | None = None, end_ns: int | None = None) -> list[dict[str, Any]]: ...
    def exposure(self) -> tuple[int, int, int, int]: ...
    def per_bucket(self, bucket_ms: int) -> list[tuple[int, int]]: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


def open_reader(store: str | None = None, *, influx_url: str | None = None, db: str | None = None,
                username: str | None = None, password: str | None = None) -> SqliteStore | Influx1Store:
    """``store="sqlite:PATH"`` (or a bare path), or ``influx_url`` + ``db``: an existing store, read-only
    for SQLite, an existing database for InfluxDB (never created). Raises ValueError on a wrong spelling,
    StoreError when the store is not there."""
    if influx_url:
        if store:
            raise ValueError("give either --store or --influx-url, not both")
        if not db:
            raise ValueError("--influx-url needs --db")
        s = Influx1Store(influx_url, db, username=username, password=password, create=False)
        if db not in {r.get("name") for r in s.rows("SHOW DATABASES")}:
            s.close()
            raise StoreError(f"influxdb {influx_url} has no database {db!r}")
        return s
    if not store:
        raise ValueError("give --store sqlite:PATH or --influx-url URL --db DB")
    kind, sep, rest = store.partition(":")
    if sep and kind == "sqlite":
        return SqliteStore(rest, readonly=True)
    if not sep or len(kind) == 1:  # a bare path (or a Windows drive letter)
        return SqliteStore(store, readonly=True)
    raise ValueError(f"unknown store {store!r}: use sqlite:PATH (or --influx-url URL --db DB)")
