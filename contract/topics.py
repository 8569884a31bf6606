"""Every MQTT topic lampwatch uses is built and parsed here, nowhere else.

    lampwatch/v1/{district}/{pole}/telemetry      edge -> gateway   samples (QoS 1)
    lampwatch/v1/{district}/{pole}/status         edge -> all       birth / online / offline (retained, LWT)
    lampwatch/v1/{district}/{pole}/cmd            operator -> edge  commands (QoS 1)
    lampwatch/v1/{district}/{pole}/cmd/ack        edge -> operator  command results
    lampwatch/v1/{district}/{pole}/alert/{key}    gateway -> all    alarm state per pole and rule (retained)
    lampwatch/v1/_sys/deadletter/{reason}         gateway -> all    rejected input with its reason
    lampwatch/v1/_sys/gateway/{gateway}/status    gateway -> all    gateway presence and self-metrics
    lampwatch/v1/_sys/ops/ack                     operator -> gw    acknowledge / shelve an alarm (QoS 1)
    lampwatch/v1/_sys/ops/maintenance             operator -> gw    start / end a maintenance window
    lampwatch/v1/_sys/ops/result/{id}             gateway -> op     the answer to one ops request

District and pole segments can never start with ``_`` (see :mod:`contract.ids`), so the ``_sys``
branch cannot collide with a district, and no id can smuggle in a wildcard or an extra level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeVar

from contract.ids import DISTRICT_RE, GATEWAY_ID_RE, POLE_RE, District, PoleId

ROOT = "lampwatch/v1"
SYS = f"{ROOT}/_sys"
DEADLETTER_PREFIX = f"{SYS}/deadletter"
Kind = Literal["telemetry", "status", "cmd", "cmd/ack", "alert"]
KINDS: tuple[Kind, ...] = ("telemetry", "status", "cmd", "cmd/ack", "alert")
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,95}")
_REASON_RE = re.compile(r"[a-z0-9_]{1,48}")


class TopicError(ValueError):
    """A topic string that is not one of lampwatch's."""


@dataclass(frozen=True, slots=True)
class PoleTopic:
    district: District
    pole: PoleId
    kind: Kind
    key: str | None = None  # only for kind == "alert"

    def __str__(self) -> str:
        base = f"{ROOT}/{self.district}/{self.pole}/{self.kind}"
        return f"{base}/{self.key}" if self.kind == "alert" else base


def pole_topic(district: str, pole: str, kind: Kind, key: str | None = None) -> str:
    """Build a per-pole topic; raises ``ValueError`` on an invalid id or kind."""
    if kind not in KINDS:
        raise TopicError(f"unknown topic kind {kind!r}")
    if (kind == "alert") != (key is not None):
        raise TopicError("an alert topic needs a key, and only an alert topic has one")
    if key is not None and _KEY_RE.fullmatch(key) is None:
        raise TopicError(f"invalid alert key {key!r}")
    return str(PoleTopic(District(district), PoleId(pole), kind, key))


def telemetry(district: str, pole: str) -> str:
    return pole_topic(district, pole, "telemetry")


def status(district: str, pole: str) -> str:
    return pole_topic(district, pole, "status")


def cmd(district: str, pole: str) -> str:
    return pole_topic(district, pole, "cmd")


def cmd_ack(district: str, pole: str) -> str:
    return pole_topic(district, pole, "cmd/ack")


def alert(district: str, pole: str, key: str) -> str:
    return pole_topic(district, pole, "alert", key)


def deadletter(reason: str) -> str:
    if _REASON_RE.fullmatch(reason) is None:
        raise TopicError(f"invalid dead-letter reason {reason!r}")
    return f"{DEADLETTER_PREFIX}/{reason}"


def gateway_status(gateway_id: str) -> str:
    """The gateway's presence topic; its id is its MQTT username, e.g. ``lampwatch.gw-0``."""
    if not isinstance(gateway_id, str) or GATEWAY_ID_RE.fullmatch(gateway_id) is None:
        raise TopicError(f"invalid gateway id {gateway_id!r}: must match {GATEWAY_ID_RE.pattern}")
    return f"{SYS}/gateway/{gateway_id}/status"


OPS = f"{SYS}/ops"
OPS_ACK = f"{OPS}/ack"
OPS_MAINTENANCE = f"{OPS}/maintenance"
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def ops_result(request_id: str) -> str:
    if _ID_RE.fullmatch(request_id) is None:
        raise TopicError(f"invalid ops request id {request_id!r}")
    return f"{OPS}/result/{request_id}"


#: ids already validated, by their text: the gateway parses every message's topic, and checking and
#: building the same two ids again each time was a third of the topic parse (at most _MAX_IDS of each are
#: kept, so a flood of made-up pole ids costs a bounded dictionary, then only the check)
_POLES: dict[str, PoleId] = {}
_DISTRICTS: dict[str, District] = {}
_MAX_IDS = 1 << 18


_Id = TypeVar("_Id", PoleId, District)


def _checked(cache: dict[str, _Id], rx: re.Pattern[str], make: type[_Id], what: str, text: str) -> _Id:
    got = cache.get(text)
    if got is None:
        if rx.fullmatch(text) is None:
            raise TopicError(f"invalid {what} in topic: {text[:80]!r}")
        got = make(text)
        if len(cache) < _MAX_IDS:
            cache[text] = got
    return got


def parse(topic: str) -> PoleTopic:
    """Parse a per-pole topic; raises :class:`TopicError` for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "lampwatch" or parts[1] != "v1":
        raise TopicError(f"not a lampwatch per-pole topic: {topic[:200]!r}")
    district = _checked(_DISTRICTS, DISTRICT_RE, District, "district", parts[2])
    pole, rest = _checked(_POLES, POLE_RE, PoleId, "pole id", parts[3]), parts[4:]
    if rest == ["telemetry"] or rest == ["status"] or rest == ["cmd"]:
        return PoleTopic(district, pole, rest[0])  # type: ignore[arg-type]
    if rest == ["cmd", "ack"]:
        return PoleTopic(district, pole, "cmd/ack")
    if len(rest) == 2 and rest[0] == "alert" and _KEY_RE.fullmatch(rest[1]):
        return PoleTopic(district, pole, "alert", rest[1])
    raise TopicError(f"unknown per-pole topic kind: {'/'.join(rest)[:80]!r}")


# --- subscription filters ------------------------------------------------------------------------
def filter_for(kind: Kind, district: str = "+") -> str:
    """A subscription filter for one kind across all poles (optionally one district)."""
    d = "+" if district == "+" else District(district)
    suffix = "alert/+" if kind == "alert" else kind
    return f"{ROOT}/{d}/+/{suffix}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription: the broker spreads messages over the group's members."""
    if _REASON_RE.fullmatch(group) is None:
        raise TopicError(f"invalid share group {group!r}")
    return f"$share/{group}/{topic_filter}"
