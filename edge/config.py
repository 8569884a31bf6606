"""The edge agent's configuration: one pydantic-settings model, loaded only by the CLI.

Loaded like every component's settings (:mod:`contract.settings`): constructor arguments, then
``LAMPWATCH_EDGE_*`` environment variables (nested fields with ``__``: ``LAMPWATCH_EDGE_LOCATION__LAT=52.1``;
lists and tables as JSON), then the TOML file given to :func:`load_config`. Secrets (``password``) are
``SecretStr``: never logged. See docs/edge.md for a full example, including wiring a real board through
command and file drivers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import SettingsConfigDict

from contract.address import parse_broker
from contract.catalog import BY_NAME, CRITICAL, NAMES
from contract.ids import DistrictStr, PoleIdStr
from contract.models import Location, MetricName
from contract.settings import CONFIG_PROBLEMS, FileSettings, MqttVersion, load_settings

ENV_PREFIX = "LAMPWATCH_EDGE_"

PositiveS = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceMap(_Strict):
    """Where a metric's raw value is (JSON path or file path) and how to convert it."""

    path: Annotated[str, Field(min_length=1)]
    scale: float = 1.0
    offset: float = 0.0


class SimulatedSource(_Strict):
    kind: Literal["simulated"] = "simulated"
    #: metrics to simulate; None = every catalog metric no earlier driver provides
    metrics: list[MetricName] | None = None
    seed: int | None = None


class CommandSource(_Strict):
    kind: Literal["command"]
    argv: Annotated[list[str], Field(min_length=1)]
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    metrics: Annotated[dict[MetricName, SourceMap], Field(min_length=1)]


class FileSource(_Strict):
    kind: Literal["file"]
    metrics: Annotated[dict[MetricName, SourceMap], Field(min_length=1)]


RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]


class ModbusRegister(_Strict):
    """One metric's register(s): 32-bit types span two registers, ``word_order`` says which comes first."""

    address: Annotated[int, Field(ge=0, le=65535)]
    type: RegisterType = "uint16"
    table: Literal["holding", "input"] = "holding"
    scale: float = 1.0
    offset: float = 0.0
    word_order: Literal["big", "little"] = "big"


class ModbusSource(_Strict):
    """A Modbus device (energy meter, lamp controller, RCD monitor): TCP, or RTU on a serial line."""

    kind: Literal["modbus"]
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str | None = None  # tcp
    port: Annotated[int, Field(ge=1, le=65535)] = 502  # tcp
    device: str | None = None  # rtu: the serial port, e.g. /dev/ttyUSB0
    baudrate: Annotated[int, Field(ge=300, le=921_600)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: Annotated[int, Field(ge=0, le=247)] = 1  # the Modbus device (slave) id
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    metrics: Annotated[dict[MetricName, ModbusRegister], Field(min_length=1)]

    @model_validator(mode="after")
    def _where(self) -> ModbusSource:
        if self.transport == "tcp" and not self.host:
            raise ValueError("a modbus tcp driver needs host")
        if self.transport == "rtu" and not self.device:
            raise ValueError("a modbus rtu driver needs device (the serial port)")
        return self


class PluginSource(_Strict):
    """A driver from another package, found through the ``lampwatch.drivers`` entry-point group."""

    kind: Literal["plugin"]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    metrics: Annotated[list[MetricName], Field(min_length=1)]
    options: dict[str, Any] = Field(default_factory=dict)


DriverSpec = Annotated[SimulatedSource | CommandSource | FileSource | ModbusSource | PluginSource,
                       Field(discriminator="kind")]


def _unknown(names: object) -> list[str]:
    return [n for n in names if n not in BY_NAME]  # type: ignore[attr-defined]


class EdgeConfig(FileSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      frozen=True)

    # identity
    pole: PoleIdStr
    district: DistrictStr
    firmware: Annotated[str, Field(max_length=100)] = "unknown"
    location: Location | None = None

    # broker (the names every component uses: LAMPWATCH_<COMPONENT>_MQTT_*): ``mqtt_host``/``mqtt_port``,
    # or ``mqtt_brokers`` (an ordered failover list of host:port, e.g. a cluster's nodes; comma-separated
    # in LAMPWATCH_EDGE_MQTT_BROKERS, a list in TOML) which then replaces them
    mqtt_host: str = "127.0.0.1"
    mqtt_port: Annotated[int, Field(ge=1, le=65535)] = 1883
    mqtt_brokers: str | list[str] = Field(default_factory=list)
    mqtt_version: MqttVersion = 5  # 311 for brokers without MQTT 5 (NATS): no reason codes
    mqtt_keepalive_s: Annotated[int, Field(ge=2, le=3600)] = 30
    mqtt_session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7 * 86_400
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False  # TLS with the system CAs; implied by mqtt_tls_ca
    mqtt_tls_ca: Path | None = None
    mqtt_tls_cert: Path | None = None
    mqtt_tls_key: Path | None = None
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    backoff_min_s: Annotated[float, Field(gt=0, le=3600)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0

    # outbox (store and forward)
    outbox_path: Path | None = None  # default: .lampwatch/edge-<pole>.sqlite
    outbox_max_bytes: Annotated[int, Field(ge=1024)] = 64 << 20
    outbox_max_age_s: PositiveS = 7 * 86_400.0
    outbox_sync: Literal["full", "normal", "off"] = "full"
    max_message_samples: Annotated[int, Field(ge=1, le=1000)] = 500
    max_message_bytes: Annotated[int, Field(ge=1024, le=200 * 1024)] = 128 * 1024
    inflight_window: Annotated[int, Field(ge=1, le=1000)] = 8

    # sampling
    report_interval_s: Annotated[float, Field(ge=0.1, le=86_400)] = 60.0
    intervals: dict[MetricName, Annotated[float, Field(ge=0.1, le=86_400)]] = Field(default_factory=dict)
    safety_interval_s: Annotated[float, Field(ge=0.05, le=3600)] = 1.0
    tilt_baseline_deg: Annotated[float, Field(ge=0, le=90)] | None = None  # None: first reading
    # installation record, announced in the birth so the gateway judges lamp and voltage against it
    rated_power_w: Annotated[float, Field(gt=0, le=5000)] | None = None
    nominal_voltage_v: Annotated[float, Field(gt=0, le=1000)] | None = None
    thresholds: dict[MetricName, float] = Field(default_factory=dict)
    drivers: list[DriverSpec] = Field(default_factory=lambda: list[DriverSpec]([SimulatedSource()]))

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _check(self) -> EdgeConfig:
        bad = self.problems()
        if bad:  # every mistake at once: load_config expands the list (see ``CONFIG_PROBLEMS``)
            raise PydanticCustomError(CONFIG_PROBLEMS, "{first}", {"first": bad[0], "problems": bad})
        return self

    # single-field checks are field validators, so pydantic reports them together with every other
    # field's mistakes; only what needs two fields waits for the model validator below
    @field_validator("drivers")
    @classmethod
    def _driver_metrics(cls, drivers: list[DriverSpec]) -> list[DriverSpec]:
        bad = [f"drivers.{i}: unknown metric(s) {', '.join(u)}" for i, d in enumerate(drivers)
               if d.metrics is not None and (u := _unknown(d.metrics))]
        if bad:
            raise ValueError("; ".join(bad))
        return drivers

    @field_validator("intervals")
    @classmethod
    def _interval_metrics(cls, intervals: dict[str, float]) -> dict[str, float]:
        if unknown := _unknown(intervals):
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}")
        return intervals

    @field_validator("thresholds")
    @classmethod
    def _threshold_values(cls, thresholds: dict[str, float]) -> dict[str, float]:
        bad = []
        for name, value in thresholds.items():
            if name not in CRITICAL:
                bad.append(f"{name} is not checked on the edge (critical metrics: {', '.join(CRITICAL)})")
            elif not BY_NAME[name].lo <= value <= BY_NAME[name].hi:
                bad.append(f"{name}={value} outside [{BY_NAME[name].lo}, {BY_NAME[name].hi}]")
        if bad:
            raise ValueError("; ".join(bad))
        return thresholds

    @field_validator("mqtt_brokers")
    @classmethod
    def _broker_list(cls, brokers: str | list[str]) -> list[str]:
        items = brokers.split(",") if isinstance(brokers, str) else brokers
        out = [b.strip() for b in items if b.strip()]
        for b in out:
            parse_broker(b)
        return out

    @field_validator("mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key")
    @classmethod
    def _file_exists(cls, p: Path | None) -> Path | None:
        if p is not None and not Path(p).is_file():
            raise ValueError(f"file {p} not found")
        return p

    def problems(self) -> list[str]:
        """Every mistake that involves more than one field."""
        bad: list[str] = []
        if not self.sensors:
            bad.append("drivers provide no metric at all")
        elif missing := [n for n in self.intervals if n not in self.sensors]:
            bad.append(f"intervals: no driver provides {', '.join(missing)}")
        if self.backoff_min_s > self.backoff_max_s:
            bad.append("backoff_min_s must be <= backoff_max_s")
        if (self.mqtt_password is not None) and not self.mqtt_username:
            bad.append("mqtt_password given without mqtt_username")
        if self.mqtt_tls_key is not None and self.mqtt_tls_cert is None:
            bad.append("mqtt_tls_key given without mqtt_tls_cert")
        return bad

    # --- derived ---------------------------------------------------------------------------------
    @property
    def broker_list(self) -> tuple[tuple[str, int], ...]:
        """The brokers in failover order: ``mqtt_brokers`` if given, else the one ``mqtt_host``/``mqtt_port``."""
        if self.mqtt_brokers:
            return tuple(parse_broker(b) for b in self.mqtt_brokers)
        return ((self.mqtt_host, self.mqtt_port),)

    @property
    def use_tls(self) -> bool:
        return self.mqtt_tls or self.mqtt_tls_ca is not None

    @property
    def sensors(self) -> tuple[str, ...]:
        """Every metric some driver provides, in catalog order."""
        return tuple(n for n in NAMES if n in self.assignment())

    def assignment(self) -> dict[str, int]:
        """metric -> index of the driver that reads it (the first driver that names it wins)."""
        out: dict[str, int] = {}
        for i, d in enumerate(self.drivers):
            names = d.metrics if d.metrics is not None else NAMES
            for n in names:
                if n in BY_NAME:
                    out.setdefault(n, i)
        return out

    def interval_of(self, metric: str) -> float:
        return self.intervals.get(metric, self.report_interval_s)

    @property
    def outbox_file(self) -> Path:
        return self.outbox_path or Path(".lampwatch") / f"edge-{self.pole}.sqlite"


def load_config(path: str | Path | None = None, **overrides: Any) -> EdgeConfig:
    """Read the TOML file (if any) and the environment; raise ConfigProblems (every mistake, one line)."""
    return load_settings(EdgeConfig, path, **overrides)
