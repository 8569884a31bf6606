"""Generated test data for the ops tests: a few poles, every catalog metric, plus status, alerts,
rejects and gateway self-metrics shaped as contract/schema.py (and docs/schema.md) describe."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract import catalog, schema
from contract.readings import FieldValue, Point, Reading

POLES: tuple[tuple[str, str], ...] = (("north", "p-000001"), ("north", "p-000002"), ("south", "p-000003"))
LEVEL = {"info": 1, "warning": 2, "critical": 3}


def readings(start_ms: int, count: int, step_s: int, poles: Sequence[tuple[str, str]] = POLES,
             seed: int = 7) -> list[Reading]:
    """``count`` samples per pole from ``start_ms``; every metric in range; ~5 % of values missing."""
    rng = np.random.default_rng(seed)
    out: list[Reading] = []
    for district, pole in poles:
        for i in range(count):
            values: dict[str, float] = {}
            for m in catalog.METRICS:
                if rng.random() < 0.05:
                    continue
                if m.dtype == "bool":
                    v = float(rng.random() < 0.1)
                else:
                    v = m.signal.base + m.signal.noise * float(rng.standard_normal()) + m.signal.amplitude
                    v = min(max(round(v, m.decimals), m.lo), m.hi)
                values[m.name] = float(v)
            out.append(Reading(pole, district, "boot-1", i, start_ms + i * step_s * 1000, values))
    return out


def telemetry(start_ms: int, count: int, step_s: int, **kw: object) -> list[Point]:
    return [schema.telemetry_point(r) for r in readings(start_ms, count, step_s, **kw)]  # type: ignore[arg-type]


def status_point(district: str, pole: str, ts_ms: int, state: str, lat: float | None = None,
                 lon: float | None = None) -> Point:
    """A status point as the gateway writes it, plus the proposed ``lat``/``lon`` fields."""
    fields: dict[str, FieldValue] = {"state": state, "online": int(state != "offline"), "boot": "boot-1"}
    if lat is not None and lon is not None:
        fields["lat"], fields["lon"] = lat, lon
    return Point(schema.STATUS, schema.tags(district=district, pole=pole), fields, ts_ms * 1_000_000)


def alert_point(district: str, pole: str, ts_ms: int, kind: str, severity: str, state: str,
                metric: str, value: float, explain: str) -> Point:
    """An alerts point in the proposed shape (tags district, pole, kind, severity; numeric ``active``
    and ``level`` beside the string ``state`` so dashboards can aggregate them)."""
    fields: dict[str, FieldValue] = {
        "state": state, "active": int(state == "raised"), "level": LEVEL[severity],
        "key": f"{kind}.{severity}", "metric": metric, "value": value, "score": value, "explain": explain,
    }
    return Point(schema.ALERTS, schema.tags(district=district, pole=pole, kind=kind, severity=severity),
                 fields, ts_ms * 1_000_000)


def gateway_points(start_ms: int, count: int, step_s: int, gateway: str = "gw-1") -> list[Point]:
    """Cumulative counters every ``step_s`` as gateway.service writes them."""
    out = []
    for i in range(count):
        fields: dict[str, FieldValue] = {
            "messages": float(100 * i), "samples_accepted": float(95 * i), "samples_rejected": float(3 * i),
            "duplicates": float(2 * i), "stored_points": float(96 * i), "spool_points": float(i % 5),
            "spool_batches": float(i % 2), "lag_ms": 40.0 + i % 7, "last_write_ms": 3.0 + i % 3,
            "rejects_bad_json": float(i), "rejects_out_of_range": float(2 * i),
        }
        out.append(Point(schema.GATEWAY, schema.tags(gateway=gateway), fields,
                         (start_ms + i * step_s * 1000) * 1_000_000))
    return out


def reject_points(start_ms: int, count: int, step_s: int) -> list[Point]:
    return [schema.reject_point("bad_json" if i % 2 else "out_of_range", "lampwatch/v1/north/p-000001/telemetry",
                                "test", (start_ms + i * step_s * 1000) * 1_000_000 + i, pole="p-000001")
            for i in range(count)]
