"""The store schema, shared by the gateway (which builds points) and ingest (which writes them).

| measurement | tags                                   | fields                                   |
|-------------|----------------------------------------|------------------------------------------|
| telemetry   | district, pole                         | one float per catalog metric present, seq (int) |
| status      | district, pole                         | state (str), online (0/1), boot, reason, lat, lon, |
|             |                                        | rated_power_w, nominal_voltage_v, tilt_baseline_deg |
| alerts      | district, pole, kind, severity         | state, active (0/1), level (1 info..3 critical), |
|             |                                        | metric, value, score, explain, key              |
| telemetry_1m, telemetry_1h | district, pole          | <metric>_min/_mean/_max, count (rollups, see     |
|             |                                        | ingest/rollup.py; retention policies rollup_1m/_1h) |
| rejects     | reason                                 | topic, detail, pole, count (int)                |
| gateway     | gateway                                | self-metrics (floats)                           |

Tags are the low-cardinality keys you filter and group by; everything else is a field. The boot id
and sequence number are fields, not tags, so a reboot never creates a new series. Timestamps are the
device's, in milliseconds: an identical re-sent sample lands on the same series and time and simply
overwrites itself, which makes retries and replays idempotent.
"""

from __future__ import annotations

from contract.readings import FieldValue, Point, Reading

TELEMETRY = "telemetry"
STATUS = "status"
ALERTS = "alerts"
REJECTS = "rejects"
GATEWAY = "gateway"
MEASUREMENTS = (TELEMETRY, STATUS, ALERTS, REJECTS, GATEWAY)


def tags(**kv: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kv.items()))


def telemetry_point(r: Reading) -> Point:
    fields: dict[str, FieldValue] = dict(r.values)
    fields["seq"] = int(r.seq)
    return Point(TELEMETRY, (("district", r.district), ("pole", r.pole)), fields, r.ts_ms * 1_000_000)


def reject_point(reason: str, topic: str, detail: str, ts_ns: int, pole: str | None = None) -> Point:
    """One dead-lettered input. ``ts_ns`` must be unique per reject (the gateway adds a counter to its
    clock's nanoseconds), or two rejects of one reason in the same instant would overwrite each other."""
    fields: dict[str, FieldValue] = {"topic": topic[:256], "detail": detail[:500], "count": 1}
    if pole:
        fields["pole"] = pole
    return Point(REJECTS, (("reason", reason),), fields, ts_ns)
