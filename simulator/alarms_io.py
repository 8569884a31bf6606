"""Alarms read back from a store, as :class:`simulator.score.Alarm` intervals (shared with ``bench/eval.py``).

The gateway writes one ``alerts`` point per alarm state change (tags district, pole, kind, severity;
fields state ``raised|cleared``, metric, value, score, explain, key; time = device time of the change
plus a sub-millisecond per-key offset). :func:`alarms_from_rows` pairs them per (pole, key) in time
order: the first ``raised`` opens an interval (a later ``raised`` of an open alarm is an escalation or
de-escalation of the same alarm and keeps the first time), ``cleared`` closes it; an alarm still open
at the end has ``cleared_ms = None``. District-level alarms (pole ``district``) are not pole alarms
and are left out.

The store is read through :class:`ingest.stores.StoreReader` (``ingest.stores.open_reader`` opens one).

:func:`exposure` measures what the false-alarm rate is normalised by: the poles that reported
telemetry and the span of device time they covered; :func:`score_store` puts it all together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import schema
from contract.errors import StoreError
from gateway.detect.spatial import DISTRICT_POLE
from ingest.stores import StoreReader
from simulator.faults import Label, read_labels
from simulator.score import COMPATIBLE, DAY_MS, Alarm, Score, alarm_kind, score

#: label kinds no alarm is expected for (injected traffic the gateway refuses or dedups, not a fault)
UNSCORED_KINDS: frozenset[str] = frozenset(k for k, v in COMPATIBLE.items() if not v)


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """One alarm interval with what the report needs besides the score."""

    alarm: Alarm
    district: str
    key: str
    severity: str  # the highest severity it reached


_SEV_RANK = {"info": 0, "warning": 1, "critical": 2}


def severity_rank(sev: str) -> int:
    return _SEV_RANK.get(sev, -1)


def alarm_rows(rows: Iterable[Mapping[str, Any]]) -> list[AlarmRow]:
    """Pair ``alerts`` rows (tags and fields merged, ``time`` in ns) into alarm intervals."""
    ordered = sorted(rows, key=lambda r: int(r["time"]))
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    out: list[AlarmRow] = []

    def close(st: dict[str, Any], cleared_ms: int | None) -> None:
        kind = alarm_kind(st["kind"])
        out.append(AlarmRow(Alarm(st["pole"], st["metric"] or None, kind, st["raised_ms"], cleared_ms),
                            st["district"], st["key"], st["severity"]))

    for r in ordered:
        pole = str(r.get("pole") or "")
        if not pole or pole == DISTRICT_POLE:
            continue
        key = str(r.get("key") or r.get("kind") or "")
        t_ms = int(r["time"]) // 1_000_000
        state = r.get("state")
        sev = str(r.get("severity") or "info")
        st = open_.get((pole, key))
        if state == "raised":
            if st is None:
                open_[(pole, key)] = {"pole": pole, "key": key, "kind": str(r.get("kind") or key),
                                      "metric": str(r.get("metric") or ""), "district": str(r.get("district") or ""),
                                      "raised_ms": t_ms, "severity": sev}
            elif severity_rank(sev) > severity_rank(st["severity"]):
                st["severity"] = sev
        elif state == "cleared" and st is not None:
            close(open_.pop((pole, key)), t_ms)
    for st in open_.values():
        close(st, None)
    out.sort(key=lambda a: (a.alarm.raised_ms, a.alarm.pole, a.key))
    return out


def alarms_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Alarm]:
    return [a.alarm for a in alarm_rows(rows)]


# --- scoring ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoreScore:
    score: Score
    labels: int
    unscored: int  # labels of UNSCORED_KINDS left out
    alarms: int
    poles: int
    step_ms: int
    pole_days: float

    def line(self) -> str:
        o = self.score.overall
        return (f"faults: precision={_f(o.precision, 3)} recall={_f(o.recall, 3)} "
                f"latency_p50_samples={_f(o.latency_median_samples, 1)} "
                f"false_per_1000_pole_days={_f(o.false_alarms_per_1000_pole_days, 2)}")


def _f(x: float, nd: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{nd}f}"


def scorable(labels: Iterable[Label]) -> tuple[list[Label], int]:
    keep = [lb for lb in labels if lb.kind not in UNSCORED_KINDS]
    return keep, sum(1 for lb in labels if lb.kind in UNSCORED_KINDS)


def score_store(reader: StoreReader, labels: Sequence[Label] | str | Path, *, step_ms: int | None = None,
                pole_days: float | None = None, poles: int | None = None) -> StoreScore:
    """Score the store's alarms against ``labels`` (a list or a labels CSV path).

    ``step_ms`` defaults to the sampling step seen in the store (device-time span / samples per pole);
    ``pole_days`` to poles that reported x that span (``poles`` overrides the count)."""
    lbs = read_labels(labels) if isinstance(labels, str | Path) else list(labels)
    keep, unscored = scorable(lbs)
    n_poles, n, lo, hi = reader.exposure()
    n_poles = poles or n_poles
    if step_ms is None:
        per_pole = n / max(n_poles, 1)
        step_ms = round((hi - lo) / (per_pole - 1)) if per_pole > 1 and hi > lo else 10_000
    step_ms = max(1, int(step_ms))
    if pole_days is None:
        pole_days = n_poles * (hi - lo + step_ms) / DAY_MS if n else 0.0
    if pole_days <= 0:
        raise StoreError("the store holds no telemetry: cannot measure pole-days (give --pole-days)")
    alarms = alarms_from_rows(reader.select(schema.ALERTS))
    sc = score(keep, alarms, step_ms=step_ms, pole_days=pole_days, end_ms=hi if n else None)
    return StoreScore(sc, len(keep), unscored, len(alarms), n_poles, step_ms, pole_days)
