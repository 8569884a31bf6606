"""Payload models (pydantic v2): frozen, extra fields forbidden, versioned with ``v``.

JSON on the wire, UTF-8. Timestamps are device time, UTC, integer milliseconds since the epoch.
Metric values are JSON numbers (a bool metric is 0 or 1); strings, ``true``/``false``, NaN and
infinities are refused at the boundary (strict mode, ``allow_inf_nan=False``).

    Telemetry   {"v":1,"pole":"p-000001","boot":"3f2a...","samples":[{"seq":7,"ts":1700000000000,
                 "m":{"leakage_current_ma":2.1,...}}],"evicted":0}
    Status      birth / online / offline presence (retained; offline is also the Last Will)
    Alert       alarm state for one pole and rule (retained on the alerts topic), with the people's
                part of its lifecycle: acknowledged (who, when, note) and shelved until
    OpsRequest  an operator's acknowledge / shelve / maintenance request (``_sys/ops/...``), answered
                by an OpsResult on ``_sys/ops/result/<id>``
    Command     set_interval | sample_now | set_thresholds | ping, answered by CommandAck
    DeadLetter  what the gateway refused, with the reason
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from contract.catalog import Severity
from contract.ids import DistrictStr, PoleIdStr

SCHEMA_VERSION = 1
MAX_SAMPLES_PER_MESSAGE = 1000
MAX_METRICS_PER_SAMPLE = 64
#: 2000-01-01 .. 2100-01-01 in ms: anything outside is not a device clock, it is garbage.
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000

MetricName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
BootId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
TimestampMs = Annotated[int, Field(ge=TS_MIN_MS, le=TS_MAX_MS)]
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]
ShortText = Annotated[str, StringConstraints(max_length=500)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class Sample(_Model):
    seq: Seq
    ts: TimestampMs
    m: Annotated[dict[MetricName, float], Field(min_length=1, max_length=MAX_METRICS_PER_SAMPLE)]


class Telemetry(_Model):
    v: Literal[1] = 1
    pole: PoleIdStr
    boot: BootId
    samples: Annotated[list[Sample], Field(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]
    evicted: Annotated[int, Field(ge=0)] = 0  # outbox evictions since this boot, reported upstream


class Location(_Model):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


class Status(_Model):
    v: Literal[1] = 1
    pole: PoleIdStr
    district: DistrictStr
    state: Literal["birth", "online", "offline"]
    ts: TimestampMs
    boot: BootId | None = None
    agent_version: ShortText | None = None
    firmware: ShortText | None = None
    sensors: tuple[MetricName, ...] = ()
    location: Location | None = None
    interval_s: Annotated[float, Field(gt=0)] | None = None
    reason: ShortText | None = None  # offline: "will" (broker-sent) or "shutdown"
    # installation attributes the safety rules judge against (from the pole's inventory record)
    rated_power_w: Annotated[float, Field(gt=0, le=5000)] | None = None
    nominal_voltage_v: Annotated[float, Field(gt=0, le=1000)] | None = None
    tilt_baseline_deg: Annotated[float, Field(ge=0, le=90)] | None = None


class Alert(_Model):
    v: Literal[1] = 1
    pole: PoleIdStr
    district: DistrictStr
    key: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,95}$")]
    kind: Ident
    metric: MetricName | None = None
    severity: Severity
    state: Literal["raised", "cleared"]
    value: float | None = None
    score: float | None = None
    raised_at: TimestampMs
    cleared_at: TimestampMs | None = None
    ts: TimestampMs
    explain: ShortText
    # the people's part (optional: payloads from before these fields existed stay valid)
    acked_by: Ident | None = None
    acked_at: TimestampMs | None = None
    ack_note: ShortText | None = None
    shelved_until: TimestampMs | None = None
    silence_id: Ident | None = None  # the Alertmanager silence that shelves it


class AckRequest(_Model):
    """Acknowledge one active alarm (``action="ack"``), or shelve it until ``until`` (``"shelve"``;
    the CLI has created the Alertmanager silence ``silence_id`` for the same window)."""

    v: Literal[1] = 1
    id: Ident
    action: Literal["ack", "shelve"]
    pole: PoleIdStr
    district: DistrictStr
    key: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,95}$")]
    by: Ident
    ts: TimestampMs
    note: ShortText | None = None
    until: TimestampMs | None = None
    silence_id: Ident | None = None


class MaintenanceRequest(_Model):
    """Start (``start``/``end`` given) or end a pole's maintenance window (gateway clock, ms)."""

    v: Literal[1] = 1
    id: Ident
    action: Literal["start", "end"]
    pole: PoleIdStr
    district: DistrictStr
    by: Ident
    ts: TimestampMs
    start: TimestampMs | None = None
    end: TimestampMs | None = None


class OpsResult(_Model):
    """The gateway's answer to an ops request (on ``_sys/ops/result/<id>``)."""

    v: Literal[1] = 1
    id: Ident
    ok: bool
    gateway: Ident
    ts: TimestampMs
    reason: ShortText | None = None


class _Cmd(_Model):
    v: Literal[1] = 1
    id: Ident


class SetInterval(_Cmd):
    cmd: Literal["set_interval"]
    interval_s: Annotated[float, Field(ge=0.1, le=86_400)]
    metric: MetricName | None = None  # None: the reporting interval of every metric


class SampleNow(_Cmd):
    cmd: Literal["sample_now"]


class SetThresholds(_Cmd):
    cmd: Literal["set_thresholds"]
    thresholds: Annotated[dict[MetricName, float], Field(min_length=1, max_length=MAX_METRICS_PER_SAMPLE)]


class Ping(_Cmd):
    cmd: Literal["ping"]


Command = Annotated[SetInterval | SampleNow | SetThresholds | Ping, Field(discriminator="cmd")]
COMMAND = TypeAdapter(Command)


class CommandAck(_Model):
    v: Literal[1] = 1
    id: Annotated[str, StringConstraints(max_length=64)]
    pole: PoleIdStr
    ok: bool
    ts: TimestampMs
    reason: ShortText | None = None
    result: dict[str, float | str | bool] | None = None


DEADLETTER_EXCERPT_BYTES = 512
DEADLETTER_MAX_TOPIC = 256


class DeadLetter(_Model):
    """One per refused message, whatever it contained, and always small (a few KB at most): the reasons
    with their counts, the sizes, a SHA-256 and an excerpt of the payload. The whole payload stays in
    the gateway's local quarantine (``quarantine`` is its id there; ``lampwatch-gateway quarantine``).
    Bounded so that it can never exceed the broker's packet limit, which would disconnect the gateway
    and make the broker redeliver the poison message forever."""

    v: Literal[2] = 2
    topic: Annotated[str, StringConstraints(max_length=DEADLETTER_MAX_TOPIC)]  # cut when longer
    topic_bytes: Annotated[int, Field(ge=0)]
    reason: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,48}$")]  # the first reason
    rejects: Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,48}$")], int],
                       Field(max_length=32)]  # reason -> how many values/samples of the message
    detail: ShortText
    size: Annotated[int, Field(ge=0)]  # payload bytes
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    excerpt: Annotated[str, StringConstraints(max_length=4 * DEADLETTER_EXCERPT_BYTES)]
    encoding: Literal["utf8", "base64"]  # of the excerpt: UTF-8 text, or base64 when not valid UTF-8
    truncated: bool
    received_at: int  # gateway clock (ms): metadata about the reject, never a reading's time
    quarantine: int | None = None
    pole: PoleIdStr | None = None
    seq: int | None = None


class GatewayStatus(BaseModel):
    """``lampwatch/v1/_sys/gateway/{gateway}/status`` (retained): a gateway's presence, readiness and
    self-metrics, published on every change and every ``selfmetrics_interval_s``.

    ``state``: ``online`` (ready: connected, subscribed, able to make data durable), ``degraded``
    (connected but not ready: ``health`` says why, e.g. its disk is full and acknowledgements are held),
    ``failed`` (a thread died; the process is exiting to be restarted), ``offline`` (a clean stop,
    ``reason`` ``shutdown``, or its Last Will, ``reason`` ``will``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    state: Literal["online", "degraded", "failed", "offline"]
    ready: bool | None = None
    ts: Annotated[int, Field(ge=0)] | None = None
    gateway: str | None = None
    reason: ShortText | None = None
    districts: list[str] | None = None
    health: dict[str, ShortText] | None = None  # problem -> why (empty when healthy)
    counters: dict[str, float] | None = None
