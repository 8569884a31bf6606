"""Gateway configuration: a pydantic-settings model, loaded only by the CLI (the composition root).

Loaded like every component's settings (:mod:`contract.settings`): environment variables
``LAMPWATCH_GATEWAY_<FIELD>`` (e.g. ``LAMPWATCH_GATEWAY_MQTT_HOST``, ``LAMPWATCH_GATEWAY_INFLUX_URL``),
then the optional TOML file given with ``--config`` (its ``[gateway]`` table, or the whole file), then the
defaults below. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from contract.address import parse_brokers
from contract.errors import ConfigError
from contract.ids import DISTRICT_RE, GATEWAY_ID_RE
from contract.settings import FileSettings, MqttVersion, load_settings
from gateway.decode import Limits
from gateway.partition import districts_for, parse_partition
from gateway.service import GatewayConfig


class GatewaySettings(FileSettings):
    model_config = SettingsConfigDict(env_prefix="LAMPWATCH_GATEWAY_", extra="forbid", frozen=True)

    # broker
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_version: MqttVersion = 5
    # a cluster's nodes in failover order, "host:port,host:port"; replaces mqtt_host/mqtt_port when set
    mqtt_brokers: str | None = None
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca: str | None = None
    mqtt_tls_cert: str | None = None
    mqtt_tls_key: str | None = None
    # default: the MQTT username when one is set (the broker enforces that: use_username_as_clientid),
    # else lampwatch-gateway-0 for an unsecured development broker
    client_id: str = "lampwatch-gateway-0"
    districts: str = "+"  # comma-separated districts this gateway owns, "+" = all
    # or: own partition k of n of the city's districts (rendezvous hashing, gateway.partition)
    partition: str | None = None  # "k/n", needs city_districts
    city_districts: str | None = None  # comma-separated, every district of the city
    # store (see ingest.stores.StoreConfig)
    store: Literal["auto", "sqlite", "influx1", "influx2"] = "auto"
    sqlite_path: str = ".lampwatch/lampwatch.sqlite"
    influx_url: str | None = None
    influx_db: str = "lampwatch"
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    influx_token: SecretStr | None = None
    influx_org: str = "lampwatch"
    influx_bucket: str = "lampwatch"
    # pipeline
    state_dir: str = ".lampwatch"  # spool and alarm state live here
    # the detection state's pole table (baselines, arrivals) is saved this often, the learned rows (the
    # streaming detector's, the drift state: ~3.8 kB a pole, 113 MB at 30,000 poles) every
    # detect_learned_save_every_s; the alarms within a second of every change. Longer: less disk I/O at a
    # large city, more learning redone after a crash (what alarms are raised is never lost). Every 30 s,
    # the learned rows alone were 4 MB/s of fsynced writes at 30,000 poles (~350 GB a day)
    detect_save_every_s: float = Field(30.0, gt=0)
    detect_learned_save_every_s: float = Field(300.0, gt=0)
    batch_max_points: int = Field(5000, ge=1)
    batch_max_age_s: float = Field(0.2, gt=0)
    spool_max_mb: int = Field(1024, ge=1)
    quarantine_max_mb: int = Field(256, ge=1)  # refused payloads kept whole on local disk
    max_future_s: float = Field(300, ge=0)
    max_past_days: float = Field(30, gt=0)
    selfmetrics_interval_s: float = Field(5.0, gt=0)
    # /healthz, /readyz, /metrics (gateway.health); port 0 turns the server off. A second process on the
    # same host (a standby) cannot bind the same port: give it its own, or it runs without one (logged)
    health_host: str = "127.0.0.1"
    health_port: int = Field(9464, ge=0, le=65535)
    # operators (docs/operators.md)
    alertmanager_url: str | None = None  # e.g. http://127.0.0.1:9093; none: no notifications
    grafana_url: str | None = None  # links to the pole dashboard in notifications
    notify_resend_s: float = Field(60.0, gt=0)  # active alarms re-sent this often (valid 5x as long)
    inventory_path: str | None = None  # the city inventory CSV (gateway.inventory); none: devices declare
    inventory_unknown: Literal["refuse", "flag"] = "refuse"  # poles the inventory does not list
    ops_listen: bool = True  # apply acknowledgements / maintenance from lampwatch/v1/_sys/ops/#

    @model_validator(mode="before")
    @classmethod
    def _client_id_from_username(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("client_id") is None and data.get("mqtt_username"):
            return {**data, "client_id": data["mqtt_username"]}
        return data

    @field_validator("mqtt_brokers")
    @classmethod
    def _brokers(cls, v: str | None) -> str | None:
        parse_brokers(v or "")
        return v

    def broker_list(self) -> tuple[tuple[str, int], ...]:
        return parse_brokers(self.mqtt_brokers or "") or ((self.mqtt_host, self.mqtt_port),)

    def district_list(self) -> tuple[str, ...]:
        if self.partition is not None:
            if not self.city_districts:
                raise ConfigError("partition needs city_districts (every district of the city)")
            k, n = parse_partition(self.partition)
            owned = districts_for(k, n, (d.strip() for d in self.city_districts.split(",") if d.strip()))
            if not owned:
                raise ConfigError(f"partition {self.partition} owns no district: use fewer gateways")
            return owned
        ds = tuple(d.strip() for d in self.districts.split(",") if d.strip())
        for d in ds:
            if d != "+" and DISTRICT_RE.fullmatch(d) is None:
                raise ConfigError(f"invalid district {d!r} in districts")
        return ds or ("+",)

    def gateway_config(self) -> GatewayConfig:
        if GATEWAY_ID_RE.fullmatch(self.client_id) is None:
            raise ConfigError(f"client_id {self.client_id!r} (defaults to mqtt_username) must match "
                              f"{GATEWAY_ID_RE.pattern}")
        return GatewayConfig(
            host=self.mqtt_host, port=self.mqtt_port, brokers=self.broker_list(), client_id=self.client_id,
            username=self.mqtt_username,
            password=self.mqtt_password.get_secret_value() if self.mqtt_password else None,
            tls_ca=self.mqtt_tls_ca, tls_cert=self.mqtt_tls_cert, tls_key=self.mqtt_tls_key,
            mqtt_version=self.mqtt_version, districts=self.district_list(),
            batch_max_points=self.batch_max_points, batch_max_age_s=self.batch_max_age_s,
            spool_path=str(Path(self.state_dir) / f"spool-{self.client_id}.sqlite"),
            spool_max_bytes=self.spool_max_mb << 20,
            quarantine_path=str(Path(self.state_dir) / f"quarantine-{self.client_id}.sqlite"),
            quarantine_max_bytes=self.quarantine_max_mb << 20, selfmetrics_interval_s=self.selfmetrics_interval_s,
            limits=Limits(max_future_ms=int(self.max_future_s * 1000),
                          max_past_ms=int(self.max_past_days * 86_400_000)),
        )

    def store_fields(self) -> dict[str, Any]:
        keys = ("store", "sqlite_path", "influx_url", "influx_db", "influx_username", "influx_password",
                "influx_token", "influx_org", "influx_bucket")
        return {k: getattr(self, k) for k in keys}


def load(config: Path | None = None) -> GatewaySettings:
    """Load settings from env and an optional TOML file; raise ConfigError with one clear line."""
    return load_settings(GatewaySettings, config, section="gateway", what="gateway setting")
