"""The gateway's pure core: message in, points and rejects out, counters updated.

No I/O and no clock reads: the caller passes ``now_ms``. The MQTT adapter, the batcher, the spool
and the sink are wired around this in :mod:`gateway.service`.

With a city inventory (``pipeline.inventory``, :mod:`gateway.inventory`) a telemetry or status message
from a pole under a district other than its own is refused whole (reason ``wrong_district``), and
one from a pole the inventory does not list is refused (``unregistered``) unless the policy is ``flag``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contract import schema, topics
from contract.models import Status
from contract.readings import Point, Reading
from gateway.decode import REASONS, Decoded, Limits, Reject, decode_telemetry
from gateway.dedup import SeqTracker, fingerprint
from gateway.inventory import Inventory

COUNTS = ("messages", "status", "samples_accepted", "samples_rejected", "values_accepted", "values_rejected",
          "duplicates", "conflicts", "device_evictions_reported")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _v in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a JSON object repeats a key")
    return dict(pairs)


@dataclass(slots=True)
class Outcome:
    points: list[Point] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    status: Status | None = None  # the message's status (one message, one status)
    # several status messages in arrival order, after ``status``: how the service hands detection a run of
    # them at once (a city's births after a power cut), one alarm step for all instead of one each
    statuses: list[Status] = field(default_factory=list)


class Pipeline:
    def __init__(self, limits: Limits = Limits(), dedup_window: int = 4096,
                 inventory: Inventory | None = None) -> None:
        self.limits = limits
        self.inventory = inventory
        self.seq = SeqTracker(dedup_window)
        # pre-seeded with every key: another thread may copy them while this one updates them
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
        self.rejects_by_reason: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        self._reject_n = 0
        self._evicted: dict[tuple[str, str], int] = {}

    def _reject_points(self, rejects: list[Reject], now_ms: int) -> list[Point]:
        """One ``rejects`` point per message and reason (with a count), however many values it had:
        a 40 KB message of 3,200 unknown metrics is one point, not 3,200."""
        by_reason: dict[str, list[Reject]] = {}
        for r in rejects:
            self.rejects_by_reason[r.reason] += 1
            by_reason.setdefault(r.reason, []).append(r)
        pts = []
        for reason, rs in by_reason.items():
            self._reject_n = (self._reject_n + 1) % 1_000_000
            first = rs[0]
            detail = first.detail if len(rs) == 1 else f"{len(rs)}x, first: {first.detail}"
            # unique time per reject so two rejects in one millisecond never overwrite each other
            p = schema.reject_point(reason, first.topic, detail, now_ms * 1_000_000 + self._reject_n, first.pole)
            if len(rs) > 1:
                p = Point(p.measurement, p.tags, {**p.fields, "count": len(rs)}, p.ts_ns)
            pts.append(p)
        return pts

    def telemetry(self, topic: str, payload: bytes, now_ms: int) -> Outcome:
        d: Decoded = decode_telemetry(topic, payload, now_ms=now_ms, limits=self.limits)
        out = Outcome(rejects=d.rejects)
        c = self.counts
        c["messages"] += 1
        if d.readings and self.inventory is not None:
            r0 = d.readings[0]  # one message is one pole under one district (decode checked the topic)
            refused = self.inventory.check(r0.pole, r0.district)
            if refused is not None:
                reject = Reject(refused[0], refused[1], topic, payload, pole=r0.pole)
                c["samples_rejected"] += len(d.readings)
                out.rejects = [reject]
                out.points.extend(self._reject_points(out.rejects, now_ms))
                return out
        if d.readings and d.evicted:
            # Telemetry.evicted counts since that agent's boot: keep the latest per (pole, boot), sum them
            key = (d.readings[0].pole, d.readings[0].boot)
            prev = self._evicted.get(key, 0)
            if d.evicted > prev:
                self._evicted[key] = d.evicted
                c["device_evictions_reported"] += d.evicted - prev
        for r in d.readings:
            verdict = self.seq.check(r.pole, r.seq, boot=r.boot, fp=fingerprint(r.ts_ms, r.values))
            if verdict == "duplicate":
                c["duplicates"] += 1
                continue
            if verdict == "conflict":  # same (pole, boot, seq), different content: never dropped silently
                c["conflicts"] += 1
                d.rejects.append(Reject("seq_conflict", f"boot {r.boot} seq {r.seq} was already received with "
                                        "different content", topic, payload, pole=r.pole, seq=r.seq))
                continue
            out.readings.append(r)
            out.points.append(schema.telemetry_point(r))
        if d.rejects:
            whole = d.rejected_samples
            c["samples_rejected"] += whole
            c["values_rejected"] += len(d.rejects) - whole
        c["samples_accepted"] += len(out.readings)
        c["values_accepted"] += sum(len(r.values) for r in out.readings)
        out.points.extend(self._reject_points(d.rejects, now_ms))
        return out

    def status(self, topic: str, payload: bytes, now_ms: int) -> Outcome:
        """A presence message (birth/online/offline): stored as a ``status`` point."""
        out = Outcome()
        try:
            t = topics.parse(topic)
            json.loads(payload, object_pairs_hook=_no_duplicate_keys)  # status is rare: parse twice
            st = Status.model_validate_json(payload)
            if st.pole != t.pole or st.district != t.district:
                raise ValueError(f"payload pole/district {st.pole}/{st.district} != topic {t.pole}/"
                                 f"{t.district}")
        except (ValueError, UnicodeDecodeError) as exc:  # ValidationError is a ValueError
            detail = str(exc).splitlines()[0][:300] if not isinstance(exc, ValidationError) else \
                f"{exc.error_count()} validation error(s): {exc.errors()[0]['msg']}"
            out.rejects.append(Reject("bad_status", detail, topic, payload))
            out.points.extend(self._reject_points(out.rejects, now_ms))
            return out
        refused = self.inventory.check(st.pole, st.district) if self.inventory is not None else None
        if refused is not None:
            out.rejects.append(Reject(refused[0], refused[1], topic, payload, pole=st.pole))
            out.points.extend(self._reject_points(out.rejects, now_ms))
            return out
        self.counts["status"] += 1
        out.status = st
        fields: dict[str, float | int | str | bool] = {"state": st.state,
                                                      "online": int(st.state != "offline")}
        if st.boot:
            fields["boot"] = st.boot
        if st.reason:
            fields["reason"] = st.reason
        if st.location is not None:  # the fleet map (Geomap) places poles from these
            fields["lat"], fields["lon"] = st.location.lat, st.location.lon
        for attr in ("rated_power_w", "nominal_voltage_v", "tilt_baseline_deg", "interval_s"):
            if (v := getattr(st, attr)) is not None:
                fields[attr] = float(v)
        out.points.append(Point(schema.STATUS, schema.tags(district=st.district, pole=st.pole), fields,
                                st.ts * 1_000_000))
        return out
