"""The detector: every layer and rule family composed, from accepted samples to alarm changes.

:class:`Detector` is pure (no clock, no files, no network, not thread-safe): the gateway's
:class:`gateway.detection.DetectionStage` gives it the time, serialises calls, publishes what it
returns and keeps its state on disk. Spec table of the pole policy, in this order (saved alarm states
refer to these indices, so a family added later goes last):

1. layer 1, :class:`gateway.detect.rules.Rules` (catalog thresholds, flicker, offline, stuck);
2. layer 3 per-pole specs of :class:`gateway.detect.spatial.Spatial` (sensor_suspect, sensor_drift);
3. layer 2, one ``anomaly.<metric>`` per :data:`STREAM_METRICS` (the streaming detector);
4. the inventory notices (:data:`NOTICE_SPECS`);
5. clock health, sensor dropout, the tilt trend, physics.

District-level alarms (``district_event``) have their own policy, entity :data:`DISTRICT_POLE`.

Cross-layer decisions live here: an anomaly on a pole a rule already explains raises nothing; a
lamp_failure / voltage condition explained by a suspect sensor of the same metric is that sensor's
fault (:meth:`Detector.sensor_fault`); a pole with a layer-1 fault pauses its drift judgement, a sensor
that is stuck or under a sensor alarm pauses that channel's (:meth:`Detector._paused`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from contract.catalog import INDEX, METRICS, STREAMED
from contract.models import AckRequest, Alert, Status
from contract.readings import Reading
from gateway.detect.alarms import ActiveAlarm, AlarmPolicy, Transition
from gateway.detect.clock import ClockRule
from gateway.detect.dropout import DropoutRule
from gateway.detect.params import RuleParams
from gateway.detect.physics import PhysicsRule
from gateway.detect.rules import Rules
from gateway.detect.spatial import DISTRICT_POLE, Spatial, SpatialParams
from gateway.detect.state import NO_TS, Batch, FleetState
from gateway.detect.trend import TrendRule
from gateway.detect.types import AlarmSpec, Conditions, Tier, levels

log = logging.getLogger("lampwatch.detect")

STATE_VERSION = 2  # 2: the pole table as columns (one JSON list per attribute); 1 (one object per pole) still loads
ACK_FIELDS = ("acked_by", "acked_at", "ack_note", "shelved_until", "silence_id")

#: Metrics scored by the streaming detector (layer 2): every float metric whose catalog hints do not say it
#: follows the lamp schedule or the sun (``Detect.schedule``): a per-series detector sees every dusk and
#: dawn as a level shift (in the simulated city they were ~95 % of its false alarms); layer 1 already
#: judges the lamp against its expected power.
STREAM_METRICS: tuple[str, ...] = STREAMED
#: streaming-detector series per pole row: series = row * STREAM_STRIDE + the metric's place in STREAM_METRICS
STREAM_STRIDE = len(STREAM_METRICS)

#: pole notices from the inventory check (info; raised and cleared at once)
NOTICE_SPECS: tuple[AlarmSpec, ...] = (
    AlarmSpec("inventory_mismatch", "inventory_mismatch", None,
              (Tier("info", "birth message declares installation attributes that disagree with the city "
                            "inventory; the inventory's values are used", fast=True),),
              raise_n=1, raise_ms=0, clear_n=1, unit="attributes", decimals=0),
    AlarmSpec("unregistered", "unregistered", None,
              (Tier("info", "pole is not in the city inventory (accepted, flagged)", fast=True),),
              raise_n=1, raise_ms=0, clear_n=1, decimals=0),
)

try:  # layer 2 is optional: another module, maybe absent
    from gateway.detect.stream import StreamDetector as _StreamDetector
except ImportError:  # pragma: no cover - depends on the tree
    _StreamDetector = None  # type: ignore[assignment,misc]


class PoleAttrs(Protocol):
    def attrs(self) -> dict[str, float]: ...

    @property
    def pole(self) -> str: ...

    @property
    def district(self) -> str: ...


class Registry(Protocol):
    """What the detector needs of the city inventory (:class:`gateway.inventory.Inventory`)."""

    def __contains__(self, pole: object) -> bool: ...

    def records(self) -> Sequence[PoleAttrs]: ...

    def mismatches(self, pole: str, declared: dict[str, float]) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Change:
    """One alarm change, ready to publish: the Alert and the transition it came from."""

    alert: Alert
    change: str  # raised / escalated / deescalated / cleared


def shift(c: Conditions, offset: int) -> Conditions:
    if offset == 0 or len(c) == 0:
        return c
    return Conditions(c.rows, c.spec + offset, c.trig, c.hold, c.value, c.ref, c.score, c.ts)


def anomaly_spec(col: int) -> AlarmSpec:
    m = METRICS[col]
    return AlarmSpec(f"anomaly.{m.name}", "anomaly", m.name,
                     (Tier("info", f"unusual {m.description} for this pole (streaming detector)",
                           fast=True),),
                     raise_n=1, raise_ms=0, clear_n=10, unit=m.unit, decimals=m.decimals)


def notice(row: int, spec: int, on: bool, value: float, ts: int) -> Conditions:
    lvl = np.array([int(on)], np.int8)
    return Conditions(np.array([row], np.int64), np.array([spec], np.int64), lvl, lvl.copy(),
                      np.array([value]), np.array([np.nan]), lvl.astype(np.float64), np.array([ts], np.int64))


def num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None



class StateView:
    """A detector's state document, copied under the stage's lock and serialised later without it.

    Each part is ``(key, value)``: a JSON-ready value (the active alarms, the acknowledgements: sized by
    what is raised, not by the fleet) or a function returning ``(key, value)`` pairs of an object made
    only while it is written (the pole table: one column at a time, from copies taken with the view;
    ``gateway.detection.write_view`` writes it: this package does no I/O). A save used to deep-copy the
    whole detector and build the whole document at once, one JSON object per pole: at 30,000 poles that
    added ~150 MB to the gateway's high-water mark every ``save_every_s`` and took ~1.5 s of CPU every
    save, alarm-only ones too. ``n``: the poles it holds."""

    __slots__ = ("n", "parts")

    def __init__(self, parts: list[tuple[str, Any]], n: int) -> None:
        self.parts, self.n = parts, n

    def doc(self) -> dict[str, Any]:
        return {k: dict(v()) if callable(v) else v for k, v in self.parts}


class Detector:
    """All layers, their alarm policies and the acknowledgements of people; see the module doc."""

    def __init__(self, *, rule_params: RuleParams = RuleParams(), spatial: SpatialParams | None = SpatialParams(),
                 stream: bool = True, anomaly_on: float = 0.9998, anomaly_off: float = 0.86,
                 inventory: Registry | None = None) -> None:
        self.anomaly_on, self.anomaly_off = anomaly_on, anomaly_off
        self.inventory = inventory
        self.state = FleetState()
        self.rules = Rules(self.state, rule_params)
        self.spatial = Spatial(self.state, spatial) if spatial is not None else None
        # series = row * len(STREAM_METRICS) + j (j: the metric's place in STREAM_METRICS): slots only for the
        # streamed metrics (21 a row before, 8 of them never used), sized in step with the fleet rows
        self.stream = (_StreamDetector(capacity=STREAM_STRIDE * self.state.capacity)
                       if (stream and _StreamDetector is not None) else None)
        specs: list[AlarmSpec] = list(self.rules.specs)
        self._spatial_off = len(specs)
        if self.spatial is not None:
            specs.extend(self.spatial.pole_specs)
        self._anomaly_off = len(specs)
        self._anomaly_cols = np.array([INDEX[n] for n in STREAM_METRICS], np.int64)
        if self.stream is not None:
            specs.extend(anomaly_spec(int(c)) for c in self._anomaly_cols)
        self._notice_off = len(specs)
        specs.extend(NOTICE_SPECS)
        # rule families added later go last, so saved alarm states keep their spec indices
        self.clock_rule = ClockRule()
        self._clock_off = len(specs)
        specs.extend(self.clock_rule.specs)
        self.trend = TrendRule(self.state)
        self._tilt_spec = next(i for i, r in enumerate(self.rules.rules) if r.spec.key == "tilt")
        self.dropout = DropoutRule(self.state)
        self._dropout_off = len(specs)
        specs.extend(self.dropout.specs)
        self._trend_off = len(specs)
        specs.extend(self.trend.specs)
        self.physics = PhysicsRule(self.state)
        self._physics_off = len(specs)
        specs.extend(self.physics.specs)
        # lamp_failure / voltage conditions a suspect sensor of the same metric explains (see sensor_fault)
        keys = {x.key for x in specs}
        judged = [i for i, x in enumerate(self.rules.specs)
                  if x.kind in ("lamp_failure", "voltage_high", "voltage_low")]
        self._sensor_judged = np.array(judged, np.int64)
        self._sensor_keys = {str(self.rules.specs[i].metric): [
            k for k in (f"sensor_stuck.{self.rules.specs[i].metric}", f"sensor_drift.{self.rules.specs[i].metric}",
                        f"sensor_suspect.{self.rules.specs[i].metric}", f"sensor_physics.{self.rules.specs[i].metric}")
            if k in keys] for i in judged}
        # a pole whose ambient sensor is an active sensor alarm gives the cabinet no reference (spatial.PHYSICS)
        self._ambient_alarms = [i for i, x in enumerate(specs) if x.metric == "ambient_temp_c"
                                and x.kind in ("sensor_stuck", "sensor_drift", "sensor_suspect")]
        # per drift channel, what pauses its judgement (spatial.evaluate's ``paused``): its sensor's stuck run
        # (the stuck rule's column, -1 for a metric it does not follow) and its sensor alarms (stuck, physics)
        stuck_names = [m.name for m in self.rules.stuck.metrics]
        drift_names = [m.name for m in self.spatial.drift] if self.spatial is not None else []
        self._pause_stuck = np.array([stuck_names.index(n) if n in stuck_names else -1 for n in drift_names],
                                     np.int64)
        at = {x.key: i for i, x in enumerate(specs)}
        self._pause_alarms = [[at[k] for k in (f"sensor_stuck.{n}", f"sensor_physics.{n}") if k in at]
                              for n in drift_names]
        self._pause_phys = np.array([drift_names.index(str(x.metric)) if x.metric in drift_names else -1
                                     for x in self.physics.specs], np.int64)
        self._ambient_stuck = stuck_names.index("ambient_temp_c") if "ambient_temp_c" in stuck_names else -1
        self.poles = AlarmPolicy(specs)
        self.districts = AlarmPolicy(self.spatial.district_specs) if self.spatial is not None else None
        self.next_spatial_ms = NO_TS
        self.acks: dict[tuple[str, str, str], dict[str, Any]] = {}  # (district, pole, key) -> ack fields
        self.apply_inventory()

    # --- configuration ----------------------------------------------------------------------------
    def apply_inventory(self) -> None:
        if self.inventory is None:
            return
        for r in self.inventory.records():
            self.rules.set_pole(r.pole, r.district, **r.attrs())

    # --- inputs -------------------------------------------------------------------------------------
    def status(self, st: Status, now_ms: int) -> Conditions:
        """A status message (birth, online, offline): the pole's declared attributes and its presence."""
        parts: list[Conditions] = []
        attrs = {k: v for k in ("rated_power_w", "nominal_voltage_v", "tilt_baseline_deg", "interval_s")
                 if (v := getattr(st, k)) is not None}
        if attrs and st.state != "offline":
            if self.inventory is None:
                self.rules.set_pole(st.pole, st.district, **attrs)
            else:  # the inventory is the truth: a device never moves its own baselines
                parts.append(self._inventory_notices(st.pole, st.district, attrs, st.ts))
        parts.append(self.rules.presence(st.pole, st.district, st.state, st.ts, now_ms, st.interval_s))
        return Conditions.concat(parts)

    def _inventory_notices(self, pole: str, district: str, declared: dict[str, float], ts: int) -> Conditions:
        """A birth's declared attributes against the inventory: only ``interval_s`` is taken from the
        device; a disagreement raises ``inventory_mismatch`` (an agreeing birth clears it)."""
        assert self.inventory is not None
        if "interval_s" in declared:
            self.rules.set_pole(pole, district, interval_s=declared["interval_s"])
        row = self.state.row(pole, district)
        if pole not in self.inventory:
            return notice(row, self._notice_off + 1, True, 0.0, ts)
        bad = self.inventory.mismatches(pole, {k: v for k, v in declared.items() if k != "interval_s"})
        if bad:
            log.warning("inventory_mismatch pole=%s district=%s declared %s; the inventory's values stay",
                        pole, district, "; ".join(bad))
        return notice(row, self._notice_off, bool(bad), float(len(bad)), ts)

    def refused(self, refusals: Iterable[tuple[str, str]], now_ms: int) -> Conditions:
        """Samples refused for their device time, as (pole, reason): proof of life, and a clock_skew
        condition (the caller passes only the clock reasons)."""
        rows, reasons = [], []
        for pole, reason in refusals:
            r = self.state.find(pole)
            if r is not None:
                rows.append(r)
                reasons.append(reason)
        if rows:
            self.state.arrival_ms[rows] = now_ms
            self.rules.presence_.st.said_offline[rows] = False
        return shift(self.clock_rule.refused(rows, reasons, now_ms), self._clock_off)

    def readings(self, readings: Sequence[Reading], now_ms: int) -> tuple[Conditions, Conditions]:
        """Accepted readings through every layer: (pole conditions, district conditions)."""
        batch = Batch.from_readings(self.state, readings)
        rule_raw = self.rules.evaluate(batch, arrival_ms=now_ms)
        phys = self.physics.evaluate(batch.rows)
        rule_c = self.sensor_fault(rule_raw, phys)
        pole_c = [rule_c, shift(self.clock_rule.accepted(batch.rows, batch.ts), self._clock_off)]
        tilt = rule_c.spec == self._tilt_spec
        pole_c.append(shift(self.trend.evaluate(
            rule_c.rows[tilt], rule_c.ts[tilt], rule_c.value[tilt], rule_c.ref[tilt], rule_c.hold[tilt],
            self.rules.thresholds.installed(rule_c.rows[tilt], "tilt_deg")), self._trend_off))
        pole_c.append(shift(self.dropout.evaluate(batch), self._dropout_off))
        pole_c.append(shift(phys, self._physics_off))
        dist_c = Conditions.empty()
        if self.stream is not None:
            # an anomaly on a pole a rule already explains (the radio idling while the backhaul
            # is down, the impact of a knock-down) is that fault's effect: it raises nothing new
            pole_c.append(self._anomalies(batch, self._busy(rule_c)))
        if self.spatial is not None:
            sp, dist_c = self._spatial(int(batch.ts.max()), rule_c, phys)
            pole_c.append(sp)
        return Conditions.concat(pole_c), dist_c

    def silence(self, now_ms: int) -> Conditions:
        return self.rules.silence(now_ms)

    # --- cross-layer decisions ------------------------------------------------------------------------
    def _spatial(self, t_ms: int, rule_c: Conditions, phys: Conditions) -> tuple[Conditions, Conditions]:
        assert self.spatial is not None
        if t_ms < self.next_spatial_ms:
            return Conditions.empty(), Conditions.empty()
        self.next_spatial_ms = t_ms + self.spatial.params.every_ms
        n = self.state.n
        d0 = self._spatial_off + self.spatial.DRIFT
        frozen = self.rules.stuck.frozen(n)
        ref_bad = self.poles.any_active(n, self._ambient_alarms)
        if self._ambient_stuck >= 0:  # a stuck ambient sensor is no reference either, alarm or not
            ref_bad |= frozen[:, self._ambient_stuck]
        pc, dc = self.spatial.evaluate(t_ms, self._busy(rule_c), ref_bad=ref_bad,
                                       drifting=self.poles.active_block(n, d0, d0 + len(self.spatial.drift)),
                                       paused=self._paused(phys), stuck=self._stuck_channels(frozen))
        return shift(pc, self._spatial_off), dc

    def _stuck_channels(self, frozen: np.ndarray) -> np.ndarray:
        """Bool pole row x drift channel: the channel's sensor reads a stuck run (at the stuck rule's limit,
        judged or not: :meth:`gateway.detect.stuck.Stuck.frozen`)."""
        out = np.zeros((self.state.n, len(self._pause_stuck)), np.bool_)
        has = self._pause_stuck >= 0
        out[:, has] = frozen[:, self._pause_stuck[has]]
        return out

    def _paused(self, phys: Conditions) -> np.ndarray:
        """Bool pole row x drift channel: the channel's sensor is under a sensor alarm of its own
        (sensor_stuck, sensor_physics: active, pending or triggered in this batch). Its readings say nothing
        about its place among its peers: a frozen power reading against a lamp dimmed after it froze read
        1.6 x the expected power, and the short mean that took it in still called the repaired sensor
        drifting hours later (held-out seed 1003). The channel's drift judgement pauses (per channel, as a
        layer-1 fault pauses the whole pole's)."""
        n, k = self.state.n, len(self._pause_stuck)
        out = np.zeros((n, k), np.bool_)
        for j, specs in enumerate(self._pause_alarms):
            if specs:
                out[:, j] |= self.poles.engaged_cols(n, specs).any(axis=1)
        if len(phys):
            hit = phys.trig > 0
            j = self._pause_phys[phys.spec[hit]]
            out[phys.rows[hit][j >= 0], j[j >= 0]] = True
        return out

    def _busy(self, rule_c: Conditions) -> np.ndarray:
        """Poles with a layer-1 fault on (an active or pending rule alarm, or a rule condition in this
        batch): their sensor-drift judgement pauses, so a real fault is neither called drift nor learnt."""
        busy = self.poles.engaged(self.state.n, len(self.rules.specs))
        busy[rule_c.rows[rule_c.hold > 0]] = True
        return busy

    def sensor_fault(self, c: Conditions, phys: Conditions | None = None) -> Conditions:
        """A lamp_failure / voltage condition on a pole whose own sensor of that metric is already an
        active sensor alarm (stuck, drifting, far from its peers, against physics) or is found against
        physics in this very batch (``phys``) is that sensor's fault, reported as such: the rule raises
        nothing new (an alarm already raised keeps its hold)."""
        sel = np.flatnonzero((c.trig > 0) & np.isin(c.spec, self._sensor_judged))
        if len(sel) == 0:
            return c
        now_bad: set[tuple[int, str]] = set()
        if phys is not None and len(phys):
            for r, j in zip(phys.rows[phys.trig > 0].tolist(), phys.spec[phys.trig > 0].tolist(), strict=True):
                now_bad.add((int(r), str(self.physics.specs[int(j)].metric)))
        trig = c.trig.copy()
        for i in sel.tolist():
            metric = str(self.rules.specs[int(c.spec[i])].metric)
            keys = self._sensor_keys.get(metric, [])
            if (int(c.rows[i]), metric) in now_bad or any(self.poles.level(int(c.rows[i]), k) > 0 for k in keys):
                trig[i] = 0
        return Conditions(c.rows, c.spec, trig, c.hold, c.value, c.ref, c.score, c.ts)

    def _anomalies(self, batch: Batch, explained: np.ndarray | None = None) -> Conditions:
        assert self.stream is not None
        order = np.argsort(batch.ts, kind="stable")
        vals = batch.values[order][:, self._anomaly_cols]
        ii, jj = np.nonzero(~np.isnan(vals))
        if len(ii) == 0:
            return Conditions.empty()
        rows = batch.rows[order][ii]
        ts = batch.ts[order][ii]
        score = np.asarray(self.stream.update(rows * STREAM_STRIDE + jj, vals[ii, jj], ts / 1000.0),  # seconds
                           np.float64)
        ok = ~np.isnan(score)
        trig, hold = levels(score[ok], ">=", (self.anomaly_on,), (self.anomaly_off,))
        if explained is not None:
            trig[explained[rows[ok]]] = 0
        return Conditions(rows[ok], self._anomaly_off + jj[ok].astype(np.int64), trig, hold,
                          vals[ii, jj][ok], np.full(int(ok.sum()), np.nan), score[ok], ts[ok])

    # --- the alarm policies -------------------------------------------------------------------------
    def step(self, pole_c: Conditions, dist_c: Conditions) -> list[Change]:
        """Conditions through the policies: every alarm change, in device-time order, as an Alert that
        carries its acknowledgement (a clear keeps it; a new or worse alarm needs a fresh look)."""
        changes: list[tuple[Transition, str, str]] = []
        for t in self.poles.step(pole_c):
            changes.append((t, self.state.pole_district[t.row], self.state.poles[t.row]))
        if self.districts is not None:
            for t in self.districts.step(dist_c):
                changes.append((t, self.state.districts[t.row], DISTRICT_POLE))
        changes.sort(key=lambda x: (x[0].ts_ms, x[1], x[2], x[0].spec.key))
        return [self._change(t, d, p) for t, d, p in changes]

    def _change(self, t: Transition, district: str, pole: str) -> Change:
        k = (district, pole, t.spec.key)
        ack = self.acks.get(k, {}) if t.change in ("deescalated", "cleared") else {}
        if t.change != "deescalated":
            self.acks.pop(k, None)
        alert = Alert(pole=pole, district=district, key=t.spec.key, kind=t.spec.kind, metric=t.spec.metric,
                      severity=t.severity, state=t.state, value=num(t.value), score=num(t.score),
                      raised_at=t.raised_at_ms, cleared_at=t.ts_ms if t.level == 0 else None, ts=t.ts_ms,
                      explain=t.explain(), **ack)
        return Change(alert, t.change)

    def find_active(self, district: str, pole: str, key: str) -> ActiveAlarm | None:
        if pole == DISTRICT_POLE:
            if self.districts is None or district not in self.state.districts:
                return None
            row, policy = self.state.district_index(district), self.districts
        else:
            r = self.state.find(pole)
            if r is None or self.state.pole_district[r] != district:
                return None
            row, policy = r, self.poles
        try:
            if policy.level(row, key) == 0:
                return None
        except KeyError:
            return None
        return next((x for x in policy.active() if x.row == row and x.spec.key == key), None)

    def acknowledge(self, req: AckRequest, now_ms: int) -> Alert | str:
        """Acknowledge or shelve one active alarm: the alarm's new state, or why it was refused."""
        x = self.find_active(req.district, req.pole, req.key)
        if x is None:
            return f"no active alarm {req.key} on {req.district}/{req.pole}"
        k = (req.district, req.pole, req.key)
        rec = dict(self.acks.get(k, {}))
        rec.update(acked_by=req.by, acked_at=now_ms, ack_note=req.note)
        if req.action == "shelve":
            if req.until is None or req.until <= now_ms:
                return "shelve needs an until time in the future"
            rec.update(shelved_until=req.until, silence_id=req.silence_id)
        self.acks[k] = rec
        return self.alert(x, req.district, req.pole).model_copy(update={"ts": now_ms})

    def alert(self, x: ActiveAlarm, district: str, pole: str) -> Alert:
        return Alert(pole=pole, district=district, key=x.spec.key, kind=x.spec.kind, metric=x.spec.metric,
                     severity=x.severity, state="raised", value=num(x.value), score=num(x.score),
                     raised_at=x.raised_at_ms, ts=x.ts_ms, explain=x.explain(),
                     **self.acks.get((district, pole, x.spec.key), {}))

    def active(self) -> list[Alert]:
        """Every active alarm, as the Alert last published for it."""
        out = [self.alert(x, self.state.pole_district[x.row], self.state.poles[x.row]) for x in self.poles.active()]
        if self.districts is not None:
            out += [self.alert(x, self.state.districts[x.row], DISTRICT_POLE) for x in self.districts.active()]
        return sorted(out, key=lambda a: (a.district, a.pole, a.key))

    def n_active(self) -> int:
        return len(self.poles.active()) + (len(self.districts.active()) if self.districts else 0)

    # --- persistence format ---------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """The state document (JSON-ready; ``v`` :data:`STATE_VERSION`): the pole table (registry in row
        order, per-pole attributes and learned baselines, as columns: :meth:`Rules.export_columns`), every
        active alarm, the district baselines and the acknowledgements. The streaming detector's arrays
        and the poles' drift state are separate (:meth:`stream_arrays`, :meth:`Spatial.drift_rows`)."""
        return self.export_view().doc()

    def export_view(self) -> StateView:
        """:meth:`export` as a :class:`StateView`: taken under the stage's lock, written without it. The
        poles' drift state is not in it (:meth:`Spatial.drift_rows`, saved as rows with the streaming
        detector's)."""
        st = self.state
        return StateView([
            ("v", STATE_VERSION),
            ("poles", self.rules.export_columns()),
            ("alarms", self.poles.export(lambda r: (st.pole_district[r], st.poles[r]))),
            ("district_alarms", (self.districts.export(lambda d: (st.districts[d], DISTRICT_POLE))
                                 if self.districts is not None else [])),
            ("spatial", self.spatial.export() if self.spatial is not None else []),
            ("next_spatial_ms", int(self.next_spatial_ms)),
            ("acks", [{"district": d, "pole": p, "key": k, **rec} for (d, p, k), rec in sorted(self.acks.items())]),
        ], st.n)

    def export_recent_view(self) -> StateView:
        """What can change within a second and must survive a crash: the active alarms (poles' and
        districts'), the acknowledgements, which poles said they were offline and the maintenance windows,
        sized by what is raised or planned, not by the fleet. A save after an alarm change writes only this
        (the ``recent`` document); the pole table and the learned state go on the full-save cadence.
        Writing the whole pole table a second after every alarm change cost 0.25 CPU-s a save at 30,000
        poles."""
        st = self.state
        n = st.n
        said = np.flatnonzero(self.rules.presence_.st.said_offline[:n])
        return StateView([
            ("v", STATE_VERSION),
            ("kind", "recent"),
            ("alarms", self.poles.export(lambda r: (st.pole_district[r], st.poles[r]))),
            ("district_alarms", (self.districts.export(lambda d: (st.districts[d], DISTRICT_POLE))
                                 if self.districts is not None else [])),
            ("acks", [{"district": d, "pole": p, "key": k, **rec} for (d, p, k), rec in sorted(self.acks.items())]),
            ("said_offline", [[st.pole_district[r], st.poles[r]] for r in said.tolist()]),
            ("maintenance", [[st.pole_district[r], st.poles[r], [list(w) for w in ws]]
                             for r, ws in self.rules.maint.windows_of_rows(n).items()]),
        ], n)

    def restore(self, doc: dict[str, Any], heard_ms: int, recent: dict[str, Any] | None = None) -> None:
        """Load a state document into this fresh detector (raises on a damaged one). ``recent``: a newer
        :meth:`export_recent_view` document, whose parts replace the state document's (the pole table,
        baselines and learned state stay the state document's: at most a full-save interval old)."""
        if not isinstance(doc, dict) or doc.get("v") not in (1, STATE_VERSION):
            raise ValueError(f"not a detection state file of version 1 to {STATE_VERSION}")
        if recent is not None:
            if not isinstance(recent, dict) or recent.get("v") != STATE_VERSION or recent.get("kind") != "recent":
                raise ValueError("not a recent-alarms document of this version")
            doc = {**doc, "alarms": recent["alarms"], "district_alarms": recent["district_alarms"],
                   "acks": recent["acks"]}
        if doc["v"] == 1:
            self.rules.restore(doc.get("poles", []), heard_ms=heard_ms)
        elif "poles" in doc:
            cols = doc["poles"]
            if recent is not None:  # these two come from the recent document, below
                cols = {k: v for k, v in cols.items() if k not in ("said_offline", "maintenance")}
            self.rules.restore_columns(cols, heard_ms=heard_ms)
        self.poles.restore(doc.get("alarms", []), lambda d, p: self.state.row(p, d))
        if recent is not None:  # by name: a pole first heard after the pole table was saved gets a new row
            pres = self.rules.presence_.st
            pres.said_offline[: self.state.n] = False
            for d, p in recent["said_offline"]:
                r = self.state.row(str(p), str(d))  # first: a new row may grow the table
                pres.said_offline[r] = True
            for d, p, windows in recent["maintenance"]:
                for start, end in windows:
                    self.rules.maint.add(str(p), str(d), int(start), int(end))
        if self.spatial is not None and self.districts is not None:
            self.spatial.restore(doc.get("spatial", []))
            self.districts.restore(doc.get("district_alarms", []), lambda d, _e: self.state.district_index(d))
        self.next_spatial_ms = int(doc.get("next_spatial_ms", NO_TS))
        for e in doc.get("acks", []):
            if self.find_active(str(e["district"]), str(e["pole"]), str(e["key"])) is not None:
                self.acks[(str(e["district"]), str(e["pole"]), str(e["key"]))] = {f: e.get(f) for f in ACK_FIELDS}
        self.apply_inventory()

    def stream_arrays(self) -> dict[str, np.ndarray] | None:
        return self.stream.state_dict() if self.stream is not None else None

    def stream_cols(self) -> np.ndarray:
        """The catalog column of each streamed metric, in series order within a pole row."""
        return self._anomaly_cols.copy()

    def load_stream_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if self.stream is not None:
            self.stream.load_state_dict(arrays)
