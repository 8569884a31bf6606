"""Decode and validate one telemetry message (pure): accepted readings plus rejects with a reason.

Nothing here raises on input. Granularity, decided for safety:

* a message that cannot be trusted as a whole (topic, size, UTF-8, JSON, duplicate keys, schema, pole
  mismatch) is rejected whole — one reject, its samples unknown;
* a sample whose device time is implausible (too far in the future or past) is rejected whole;
* a single value that is out of its physical range or names an unknown metric is rejected on its
  own, and the sample's other values are kept: a broken noise sensor must never silence the leakage
  or tilt readings of the same pole. A sample left with no valid value is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from contract import topics, wire
from contract.catalog import RANGES
from contract.catalog import admits as catalog_admits
from contract.models import Telemetry
from contract.readings import Reading
from contract.wire import WireTelemetry

MAX_PAYLOAD_BYTES = 256 * 1024
#: every reason a reject can carry (also the dead-letter topic's last level); counters are pre-seeded
#: with these so they can be read from another thread while the worker updates them
REASONS = ("bad_topic", "too_large", "bad_utf8", "bad_json", "duplicate_key", "bad_schema", "pole_mismatch",
           "ts_future", "ts_past", "unknown_metric", "out_of_range", "no_valid_values", "seq_conflict",
           "bad_status", "store_rejected", "wrong_district", "unregistered")


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str  # snake_case, e.g. "bad_json"; also the dead-letter topic's last level
    detail: str
    topic: str
    payload: bytes
    pole: str | None = None
    seq: int | None = None
    whole_sample: bool = True  # False when only one value of a stored sample was refused


@dataclass(slots=True)
class Decoded:
    readings: list[Reading] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    evicted: int = 0  # what the device reported it had to evict from its outbox

    @property
    def rejected_samples(self) -> int:
        return sum(1 for r in self.rejects if r.whole_sample)


@dataclass(frozen=True, slots=True)
class Limits:
    max_future_ms: int = 5 * 60_000  # device clocks drift; more than 5 min ahead is a broken clock
    max_past_ms: int = 30 * 86_400_000  # outbox keeps at most days; 30 d is the raw retention


def _first_error(exc: ValidationError) -> str:
    e = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(x) for x in e["loc"])
    return f"{loc}: {e['msg']}"[:300] + (f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1
                                          else "")


def _members(msg: Telemetry) -> int:
    """How many JSON object members the parsed message had (given fields plus metric entries)."""
    return len(msg.model_fields_set) + sum(len(s.model_fields_set) + len(s.m) for s in msg.samples)


def decode_telemetry(topic: str, payload: bytes, *, now_ms: int, limits: Limits = Limits()) -> Decoded:
    out = Decoded()

    def reject(reason: str, detail: str, **kw: object) -> Decoded:
        out.rejects.append(Reject(reason, detail, topic, payload, **kw))  # type: ignore[arg-type]
        return out

    try:
        t = topics.parse(topic)
    except ValueError as exc:
        return reject("bad_topic", str(exc))
    if t.kind != "telemetry":
        return reject("bad_topic", f"expected a telemetry topic, got {t.kind}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return reject("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}", pole=t.pole)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject("bad_utf8", f"invalid UTF-8 at byte {exc.start}", pole=t.pole)
    # the compiled fast path accepts; anything it refuses is judged (and explained) by the pydantic schema
    fast = wire.decode_telemetry(payload)
    msg: WireTelemetry | Telemetry
    clean = False  # every value known and in range (the fast path checked): no per-value loop below
    if fast is not None:
        msg, clean = fast
        members, evicted = msg.members(), msg.evicted_n
    else:
        try:
            msg = Telemetry.model_validate_json(text)
        except ValidationError as exc:
            reason = "bad_json" if any(e["type"] == "json_invalid" for e in exc.errors()) else "bad_schema"
            return reject(reason, _first_error(exc), pole=t.pole)
        members, evicted = _members(msg), msg.evicted
    if payload.count(b":") != members:
        # JSON allows repeated keys and the parser keeps the last one: {"leakage_current_ma":25,
        # "leakage_current_ma":0} would silently become a harmless reading. No string in a *valid*
        # telemetry message can hold a ':' (every string field has a pattern without one), so each ':'
        # separates exactly one member: more colons than parsed members means a key was repeated. (':' is
        # ASCII, and no byte of a multi-byte UTF-8 character equals it: counting bytes counts characters.)
        return reject("duplicate_key", "a JSON object repeats a key", pole=t.pole)
    if msg.pole != t.pole:
        return reject("pole_mismatch", f"payload pole {msg.pole!r} != topic pole {t.pole!r}", pole=t.pole)
    out.evicted = evicted
    lo, hi = now_ms - limits.max_past_ms, now_ms + limits.max_future_ms
    ranges, admits = RANGES, catalog_admits
    for s in msg.samples:
        if s.ts > hi:
            reject("ts_future", f"device time {s.ts} is {s.ts - now_ms} ms ahead", pole=t.pole, seq=s.seq)
            continue
        if s.ts < lo:
            reject("ts_past", f"device time {s.ts} is {now_ms - s.ts} ms old", pole=t.pole, seq=s.seq)
            continue
        if clean:  # the loop below would keep every value: take them as decoded (a fresh dict per sample)
            out.readings.append(Reading(t.pole, t.district, msg.boot, s.seq, s.ts, s.m))
            continue
        values: dict[str, float] = {}
        for name, v in s.m.items():
            r = ranges.get(name)
            if r is None:
                reject("unknown_metric", f"{name}={v}", pole=t.pole, seq=s.seq, whole_sample=False)
            elif admits(r, v):  # the catalog's one range check (Metric.in_range is the same)
                values[name] = v
            else:
                reject("out_of_range", f"{name}={v} outside [{r[0]}, {r[1]}] {r[3]}".rstrip(),
                       pole=t.pole, seq=s.seq, whole_sample=False)
        if values:
            out.readings.append(Reading(t.pole, t.district, msg.boot, s.seq, s.ts, values))
        else:
            reject("no_valid_values", "every value of the sample was refused", pole=t.pole, seq=s.seq)
    return out
