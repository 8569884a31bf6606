"""The store schema, shared by the gateway (which builds points) and ingest (which writes them).

| measurement | tags                                   | fields                                   |
|-------------|----------------------------------------|------------------------------------------|
| telemetry   | district, pole                         | one float per catalog metric present, seq (int) |
| status      | district, pole                         | state (str), online (0/1), boot, reason, lat, lon, |
|             |                                        | rated_power_w, nominal_voltage_v, tilt_baseline_deg |
| alerts      | district, pole, kind, severity         | state, active (0/1), level (1 info..3 critical), |
|             |                                        | metric, value, score, explain, key, acked (0/1), |
|             |                                        | acked_by, ack_note, shelved_until (ms, 0 = no)  |
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

import zlib

from contract.models import Alert
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


SEVERITY_LEVEL = {"info": 1, "warning": 2, "critical": 3}


def alert_point(a: Alert) -> Point:
    """The ``alerts`` point of one alarm state change.

    ``active`` (1 raised / 0 cleared) and ``level`` (1 info .. 3 critical) are numbers so InfluxQL can
    aggregate them ("worst active alarm" = max of last(active) * last(level)); ``state`` stays for people.
    Time is the device time of the change plus a stable per-key offset below one millisecond, so two
    keys changing on one pole in the same millisecond never overwrite each other, and a replay of the
    same change lands on the same point (idempotent).
    """
    fields: dict[str, FieldValue] = {"state": a.state, "active": int(a.state == "raised"),
                                     "level": SEVERITY_LEVEL[a.severity], "metric": a.metric or "",
                                     "explain": a.explain, "key": a.key}
    if a.value is not None:
        fields["value"] = float(a.value)
    if a.score is not None:
        fields["score"] = float(a.score)
    # the people's part: acknowledged (0/1, who, note) and shelved until (ms; 0 = not shelved)
    fields["acked"] = int(a.acked_by is not None)
    if a.acked_by is not None:
        fields["acked_by"] = a.acked_by
    if a.ack_note:
        fields["ack_note"] = a.ack_note
    fields["shelved_until"] = int(a.shelved_until or 0)
    offset = zlib.crc32(a.key.encode()) % 1_000_000
    return Point(ALERTS, tags(district=a.district, pole=a.pole, kind=a.kind, severity=a.severity), fields,
                 a.ts * 1_000_000 + offset)
