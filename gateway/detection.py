"""The gateway's detection stage: outcomes in, alert points and retained alert messages out.

    stage = DetectionStage(state_path=".lampwatch/detect-state.json", publish=publish)
    Gateway(cfg, sink, on_outcome=stage)      # every message: readings / status -> alert points
    stage.tick(now_ms)                          # periodically: silence -> pole_offline
    stage.close()                               # shutdown: state saved

Layers (``gateway.detect``): 1 safety rules from the catalog, 2 the streaming anomaly detector
(optional, ``info`` alarms of kind ``anomaly``), 3 spatial (sensor_suspect per pole, district_event
per district). Conditions from every layer go through one :class:`gateway.alarms.AlarmPolicy` per
entity kind (poles, districts); each state change becomes a ``contract.models.Alert``, an ``alerts``
point (time = device time of the change) and a retained message on ``topics.alert(district, pole,
key)``. District-level alarms use the pole segment :data:`gateway.detect.spatial.DISTRICT_POLE`.

Restart: the state file (JSON, written atomically: temp file + fsync + rename, then the directory is
fsynced) holds the pole registry in row order, per-pole attributes and learned baselines, maintenance
windows, every active alarm and the district baselines; the streaming detector's arrays go beside it
(``<state_path>.stream.npz``). It is saved after a call that changed an alarm (at most once per
``save_min_interval_s``, so an alarm storm does not turn into an fsync storm; a change held back is
saved by the first call or tick after that), every ``save_every_s`` otherwise, and on ``close``.
After a load every pole gets one full silence limit to be heard again before it is called offline.

People (docs/operators.md): every transition is also handed to ``on_alert`` (the notifier,
:mod:`gateway.notify`) and logged as one ``alarm <change> key=value ...`` line. :meth:`acknowledge`
records who acknowledged an active alarm, when and why, or shelves it until a time; the record lives
beside the alarm (the retained alert message and the ``alerts`` point carry it, the state file keeps
it) until the alarm clears or escalates (a worse state needs a fresh look). :meth:`maintenance` starts
or ends a pole's maintenance window (door-open alarms are the plan inside it).

Inventory (:mod:`gateway.inventory`): with one, the safety rules judge every listed pole against the
inventory's rated power, nominal voltage and tilt baseline, set at start; a birth message declaring
other values raises the ``inventory_mismatch`` notice and changes nothing; a pole the inventory does
not list (policy ``flag``) gets the ``unregistered`` notice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from contract import schema, topics
from contract.catalog import INDEX, METRICS, Metric
from contract.models import AckRequest, Alert, MaintenanceRequest
from contract.readings import FieldValue, Point
from gateway.alarms import ActiveAlarm, AlarmPolicy, Transition
from gateway.detect.clock import CLOCK_REASONS, ClockRule
from gateway.detect.dropout import DropoutRule
from gateway.detect.physics import PhysicsRule
from gateway.detect.rules import AlarmSpec, Conditions, RuleParams, Rules, Tier, levels
from gateway.detect.spatial import DISTRICT_POLE, Spatial, SpatialParams
from gateway.detect.state import N_METRICS, NO_TS, Batch, FleetState
from gateway.detect.trend import TrendRule
from gateway.inventory import Inventory
from gateway.pipeline import Outcome

log = logging.getLogger("lampwatch.detect")

STATE_VERSION = 1
Publish = Callable[[str, bytes, bool], None]
OnAlert = Callable[[Alert], None]
_ACK_FIELDS = ("acked_by", "acked_at", "ack_note", "shelved_until", "silence_id")

try:  # layer 2 is optional: another module, maybe absent
    from gateway.detect.stream import StreamDetector as _StreamDetector
except ImportError:  # pragma: no cover - depends on the tree
    _StreamDetector = None  # type: ignore[assignment,misc]


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temp file beside ``path``, fsync, rename over ``path``, fsync the folder:
    a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shift(c: Conditions, offset: int) -> Conditions:
    if offset == 0 or len(c) == 0:
        return c
    return Conditions(c.rows, c.spec + offset, c.trig, c.hold, c.value, c.ref, c.score, c.ts)


class DetectionStage:
    """Detection for the gateway worker: ``stage(outcome) -> list[Point]``; thread-safe."""

    def __init__(self, *, state_path: str | None = None, publish: Publish | None = None,
                 clock: Callable[[], float] = time.time, rule_params: RuleParams = RuleParams(),
                 spatial: SpatialParams | None = SpatialParams(), stream: bool = True,
                 anomaly_on: float = 0.9998, anomaly_off: float = 0.86, save_every_s: float = 30.0,
                 save_min_interval_s: float = 1.0, on_alert: OnAlert | None = None,
                 inventory: Inventory | None = None) -> None:
        self.state_path = Path(state_path) if state_path else None
        self.publish, self.clock = publish, clock
        self.on_alert, self.inventory = on_alert, inventory
        self._acks: dict[tuple[str, str, str], dict[str, Any]] = {}  # (district, pole, key) -> ack fields
        self._pending: list[Point] = []  # alert points from acknowledgements, out with the next call
        self.save_every_s, self.save_min_interval_s = save_every_s, save_min_interval_s
        self.state_error: str | None = None  # set while the state file cannot be written (the gateway alarms)
        self._rule_params, self._spatial_params, self._use_stream = rule_params, spatial, stream
        self.anomaly_on, self.anomaly_off = anomaly_on, anomaly_off
        self._lock = threading.RLock()
        self.counts: Counter[str] = Counter()
        self._setup()
        self._last_save = self._last_full_save = -float("inf")
        self._closed = False
        if self.state_path is not None and self.state_path.exists():
            self._load(self.state_path)
        self._apply_inventory()

    def _setup(self) -> None:
        """Fresh, empty detection state."""
        self.state = FleetState()
        self.rules = Rules(self.state, self._rule_params)
        sp = self._spatial_params
        self.spatial = Spatial(self.state, sp) if sp is not None else None
        # series = row * N_METRICS + col: slots sized in step with the fleet rows, so both double together
        # (from 1,024 slots they doubled past them: 1,048,576 for 32,768 rows, 688,128 needed)
        self.stream = (_StreamDetector(capacity=N_METRICS * self.state.capacity)
                       if (self._use_stream and _StreamDetector is not None) else None)
        specs: list[AlarmSpec] = list(self.rules.specs)
        self._spatial_off = len(specs)
        if self.spatial is not None:
            specs.extend(self.spatial.pole_specs)
        self._anomaly_off = len(specs)
        self._anomaly_cols = np.array([INDEX[n] for n in STREAM_METRICS], np.int64)
        if self.stream is not None:
            specs.extend(_anomaly_spec(int(c)) for c in self._anomaly_cols)
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
        # lamp_failure / voltage conditions a suspect sensor of the same metric explains (see _sensor_fault)
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
        self.poles = AlarmPolicy(specs)
        self.districts = AlarmPolicy(self.spatial.district_specs) if self.spatial is not None else None
        self._next_spatial_ms = NO_TS
        self._dirty = self._unsaved_changes = False

    # --- configuration ----------------------------------------------------------------------------
    def set_pole(self, pole: str, district: str, **attrs: Any) -> None:
        """Per-pole attributes: rated_power_w, nominal_voltage_v, interval_s, tilt_baseline_deg."""
        with self._lock:
            self.rules.set_pole(pole, district, **attrs)
            self._dirty = True

    def set_maintenance(self, pole: str, district: str, start_ms: int, end_ms: int) -> None:
        with self._lock:
            self.rules.set_maintenance(pole, district, start_ms, end_ms)
            self._dirty = True

    # --- the hook -----------------------------------------------------------------------------------
    def __call__(self, outcome: Outcome) -> list[Point]:
        with self._lock:
            now_ms = int(self.clock() * 1000)
            pole_c: list[Conditions] = []
            dist_c = Conditions.empty()
            st = outcome.status
            if st is not None:
                attrs = {k: v for k in ("rated_power_w", "nominal_voltage_v", "tilt_baseline_deg", "interval_s")
                         if (v := getattr(st, k)) is not None}
                if attrs and st.state != "offline":
                    if self.inventory is None:
                        self.rules.set_pole(st.pole, st.district, **attrs)
                    else:  # the inventory is the truth: a device never moves its own baselines
                        pole_c.append(self._inventory_notices(st.pole, st.district, attrs, st.ts))
                pole_c.append(self.rules.presence(st.pole, st.district, st.state, st.ts, now_ms,
                                                  st.interval_s))
            if outcome.rejects:
                pole_c.append(self._refused(outcome, now_ms))
            if outcome.readings:
                batch = Batch.from_readings(self.state, outcome.readings)
                rule_raw = self.rules.evaluate(batch, arrival_ms=now_ms)
                phys = self.physics.evaluate(batch.rows)
                rule_c = self._sensor_fault(rule_raw, phys)
                pole_c.append(rule_c)
                pole_c.append(_shift(self.clock_rule.accepted(batch.rows, batch.ts), self._clock_off))
                tilt = rule_c.spec == self._tilt_spec
                pole_c.append(_shift(self.trend.evaluate(rule_c.rows[tilt], rule_c.ts[tilt], rule_c.value[tilt],
                                                         rule_c.ref[tilt], rule_c.hold[tilt]), self._trend_off))
                pole_c.append(_shift(self.dropout.evaluate(batch), self._dropout_off))
                pole_c.append(_shift(phys, self._physics_off))
                if self.stream is not None:
                    # an anomaly on a pole a rule already explains (the radio idling while the backhaul
                    # is down, the impact of a knock-down) is that fault's effect: it raises nothing new
                    pole_c.append(self._anomalies(batch, self._busy(rule_c)))
                if self.spatial is not None:
                    sp, dist_c = self._spatial(int(batch.ts.max()), rule_c)
                    pole_c.append(sp)
                self._dirty = True
            return self._apply(Conditions.concat(pole_c), dist_c)

    # --- inventory -----------------------------------------------------------------------------------
    def set_inventory(self, inventory: Inventory | None) -> None:
        """Judge against the city inventory from now on (its attributes are set at once)."""
        with self._lock:
            self.inventory = inventory
            self._apply_inventory()

    def _apply_inventory(self) -> None:
        if self.inventory is None:
            return
        for r in self.inventory.records():
            self.rules.set_pole(r.pole, r.district, **r.attrs())

    def _inventory_notices(self, pole: str, district: str, declared: dict[str, float], ts: int) -> Conditions:
        """A birth's declared attributes against the inventory: only ``interval_s`` is taken from the
        device; a disagreement raises ``inventory_mismatch`` (an agreeing birth clears it)."""
        assert self.inventory is not None
        if "interval_s" in declared:
            self.rules.set_pole(pole, district, interval_s=declared["interval_s"])
        row = self.state.row(pole, district)
        if pole not in self.inventory:
            return _notice(row, self._notice_off + 1, True, 0.0, ts)
        bad = self.inventory.mismatches(pole, {k: v for k, v in declared.items() if k != "interval_s"})
        if bad:
            log.warning("inventory_mismatch pole=%s district=%s declared %s; the inventory's values stay",
                        pole, district, "; ".join(bad))
        return _notice(row, self._notice_off, bool(bad), float(len(bad)), ts)

    # --- people ------------------------------------------------------------------------------------
    def acknowledge(self, req: AckRequest) -> str | None:
        """Acknowledge or shelve one active alarm; returns None, or why it was refused."""
        with self._lock:
            x = self._find_active(req.district, req.pole, req.key)
            if x is None:
                return f"no active alarm {req.key} on {req.district}/{req.pole}"
            k = (req.district, req.pole, req.key)
            rec = dict(self._acks.get(k, {}))
            now_ms = int(self.clock() * 1000)
            rec.update(acked_by=req.by, acked_at=now_ms, ack_note=req.note)
            if req.action == "shelve":
                if req.until is None or req.until <= now_ms:
                    return "shelve needs an until time in the future"
                rec.update(shelved_until=req.until, silence_id=req.silence_id)
            self._acks[k] = rec
            alert = self._alert(x, req.district, req.pole).model_copy(update={"ts": now_ms})
            _log_alarm("acknowledged" if req.action == "ack" else "shelved", alert)
            self._out(alert)
            self._pending.append(alert_point(alert))
            self.counts[f"alarms_{req.action}"] += 1
            self._dirty = self._unsaved_changes = True
            return None

    def maintenance(self, req: MaintenanceRequest) -> str | None:
        """Start or end a pole's maintenance window; returns None, or why it was refused."""
        with self._lock:
            if self.state.find(req.pole) is None and (self.inventory is None or req.pole not in self.inventory):
                return f"pole {req.pole} is unknown to this gateway"
            if req.action == "start":
                if req.start is None or req.end is None or req.end <= req.start:
                    return "a maintenance window needs start < end"
                self.rules.set_maintenance(req.pole, req.district, req.start, req.end)
            else:
                self.rules.clear_maintenance(req.pole)
            log.info("maintenance %s pole=%s district=%s by=%s start=%s end=%s", req.action, req.pole,
                     req.district, req.by, req.start, req.end)
            self._dirty = self._unsaved_changes = True
            return None

    def maintenance_windows(self, pole: str) -> list[tuple[int, int]]:
        with self._lock:
            return self.rules.maintenance(pole)

    def _find_active(self, district: str, pole: str, key: str) -> ActiveAlarm | None:
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

    def _out(self, alert: Alert) -> None:
        """Hand one alarm state to the broker (retained) and to the notifier; neither may stop us."""
        if self.publish is not None:
            try:
                self.publish(topics.alert(alert.district, alert.pole, alert.key), alert.model_dump_json().encode(),
                             True)
            except Exception as exc:  # the consumer loop never dies on a publish failure
                self.counts["alarm_publish_errors"] += 1
                log.error("could not publish alert %s/%s/%s: %s", alert.district, alert.pole, alert.key, exc)
        if self.on_alert is not None:
            try:
                self.on_alert(alert)
            except Exception as exc:
                self.counts["alarm_notify_errors"] += 1
                log.error("notifier refused alert %s/%s/%s: %s", alert.district, alert.pole, alert.key, exc)

    def tick(self, now_ms: int | None = None) -> list[Point]:
        """Silence check for every pole at once (``now_ms``: gateway clock, default the stage's)."""
        with self._lock:
            now = int(self.clock() * 1000) if now_ms is None else int(now_ms)
            return self._apply(self.rules.silence(now), Conditions.empty())

    def _spatial(self, t_ms: int, rule_c: Conditions) -> tuple[Conditions, Conditions]:
        assert self.spatial is not None
        if t_ms < self._next_spatial_ms:
            return Conditions.empty(), Conditions.empty()
        self._next_spatial_ms = t_ms + self.spatial.params.every_ms
        d0 = self._spatial_off + self.spatial.DRIFT
        pc, dc = self.spatial.evaluate(t_ms, self._busy(rule_c),
                                       ref_bad=self.poles.any_active(self.state.n, self._ambient_alarms),
                                       drifting=self.poles.active_block(self.state.n, d0, d0 + len(self.spatial.drift)))
        return _shift(pc, self._spatial_off), dc

    def _busy(self, rule_c: Conditions) -> np.ndarray:
        """Poles with a layer-1 fault on (an active or pending rule alarm, or a rule condition in this
        batch): their sensor-drift judgement pauses, so a real fault is neither called drift nor learnt."""
        busy = self.poles.engaged(self.state.n, len(self.rules.specs))
        busy[rule_c.rows[rule_c.hold > 0]] = True
        return busy

    def _sensor_fault(self, c: Conditions, phys: Conditions | None = None) -> Conditions:
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

    def _refused(self, outcome: Outcome, now_ms: int) -> Conditions:
        """Samples refused for their device time: proof of life, and a clock_skew condition."""
        rows, reasons = [], []
        for rj in outcome.rejects:
            if rj.reason in CLOCK_REASONS and rj.pole is not None:
                r = self.state.find(rj.pole)
                if r is not None:
                    rows.append(r)
                    reasons.append(rj.reason)
        if rows:
            self.state.a["arrival_ms"][rows] = now_ms
            self.state.a["said_offline"][rows] = False
        return _shift(self.clock_rule.refused(rows, reasons, now_ms), self._clock_off)

    def _anomalies(self, batch: Batch, explained: np.ndarray | None = None) -> Conditions:
        assert self.stream is not None
        order = np.argsort(batch.ts, kind="stable")
        vals = batch.values[order][:, self._anomaly_cols]
        ii, jj = np.nonzero(~np.isnan(vals))
        if len(ii) == 0:
            return Conditions.empty()
        rows = batch.rows[order][ii]
        cols = self._anomaly_cols[jj]
        ts = batch.ts[order][ii]
        score = np.asarray(self.stream.update(rows * N_METRICS + cols, vals[ii, jj], ts / 1000.0),  # seconds
                           np.float64)
        ok = ~np.isnan(score)
        trig, hold = levels(score[ok], ">=", (self.anomaly_on,), (self.anomaly_off,))
        if explained is not None:
            trig[explained[rows[ok]]] = 0
        return Conditions(rows[ok], self._anomaly_off + jj[ok].astype(np.int64), trig, hold,
                          vals[ii, jj][ok], np.full(int(ok.sum()), np.nan), score[ok], ts[ok])

    def _apply(self, pole_c: Conditions, dist_c: Conditions) -> list[Point]:
        changes: list[tuple[Transition, str, str]] = []
        for t in self.poles.step(pole_c):
            changes.append((t, self.state.pole_district[t.row], self.state.poles[t.row]))
        if self.districts is not None:
            for t in self.districts.step(dist_c):
                changes.append((t, self.state.districts[t.row], DISTRICT_POLE))
        changes.sort(key=lambda x: (x[0].ts_ms, x[1], x[2], x[0].spec.key))
        points = [self._emit(t, d, p) for t, d, p in changes]
        if self._pending:
            points, self._pending = self._pending + points, []
        if changes:
            self._dirty = self._unsaved_changes = True
        if self.state_path is not None and self._dirty:
            since = self.clock() - self._last_save
            if (self._unsaved_changes and since >= self.save_min_interval_s) or since >= self.save_every_s:
                try:
                    # the streaming detector's learned arrays (most of the bytes) go on the slow cadence only
                    self._save(full=self.clock() - self._last_full_save >= self.save_every_s)
                    if self.state_error is not None:
                        log.warning("alarm state saved again to %s", self.state_path)
                    self.state_error = None
                except OSError as exc:  # disk full, read-only, permission: say so, keep detecting, retry
                    self._last_save = self.clock()  # retried after save_min_interval_s, not on every call
                    self.counts["state_save_errors"] += 1
                    if self.state_error is None:
                        log.error("cannot save the alarm state to %s: %s", self.state_path, exc)
                    self.state_error = f"cannot save alarm state: {exc}"
        return points

    # --- output ------------------------------------------------------------------------------------
    def _emit(self, t: Transition, district: str, pole: str) -> Point:
        k = (district, pole, t.spec.key)
        # a clear carries the acknowledgement it had; a new or worse alarm needs a fresh look (none)
        ack = self._acks.get(k, {}) if t.change in ("deescalated", "cleared") else {}
        if t.change != "deescalated":
            self._acks.pop(k, None)
        alert = Alert(pole=pole, district=district, key=t.spec.key, kind=t.spec.kind, metric=t.spec.metric,
                      severity=t.severity, state=t.state, value=_num(t.value), score=_num(t.score),
                      raised_at=t.raised_at_ms, cleared_at=t.ts_ms if t.level == 0 else None, ts=t.ts_ms,
                      explain=t.explain(), **ack)
        self.counts[f"alarms_{t.change}_{t.spec.kind}"] += 1
        self.counts[f"alarms_{t.change}"] += 1
        _log_alarm(t.change, alert)
        self._out(alert)
        return alert_point(alert)

    def active(self) -> list[Alert]:
        """Every active alarm, as the Alert last published for it."""
        with self._lock:
            out = [self._alert(x, self.state.pole_district[x.row], self.state.poles[x.row])
                   for x in self.poles.active()]
            if self.districts is not None:
                out += [self._alert(x, self.state.districts[x.row], DISTRICT_POLE)
                        for x in self.districts.active()]
            return sorted(out, key=lambda a: (a.district, a.pole, a.key))

    def _alert(self, x: ActiveAlarm, district: str, pole: str) -> Alert:
        return Alert(pole=pole, district=district, key=x.spec.key, kind=x.spec.kind, metric=x.spec.metric,
                     severity=x.severity, state="raised", value=_num(x.value), score=_num(x.score),
                     raised_at=x.raised_at_ms, ts=x.ts_ms, explain=x.explain(),
                     **self._acks.get((district, pole, x.spec.key), {}))

    def counters(self) -> dict[str, float]:
        """Alarm counters (``alarms_raised_<kind>``, ``alarms_cleared``...) and active alarm counts."""
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self.counts.items()}
            out["alarms_active"] = float(len(self.poles.active()) +
                                         (len(self.districts.active()) if self.districts else 0))
            out["detect_poles"] = float(self.state.n)
            return out

    # --- persistence ---------------------------------------------------------------------------------
    def save(self, full: bool = True) -> None:
        """Save the state now (``full=False``: without the streaming detector's arrays, as after an
        alarm change between the periodic saves)."""
        with self._lock:
            if self.state_path is not None:
                self._save(full)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self.save()
                except OSError as exc:
                    log.error("cannot save the alarm state to %s at shutdown: %s", self.state_path, exc)

    def _save(self, full: bool = True) -> None:
        """The state file (alarms, acknowledgements, per-pole state); with ``full`` also the streaming
        detector's arrays beside it (learned state: after a crash it is at most ``save_every_s`` old)."""
        assert self.state_path is not None
        doc: dict[str, Any] = {
            "v": STATE_VERSION,
            "saved_at": int(self.clock() * 1000),
            "poles": self.rules.export(),
            "alarms": self.poles.export(lambda r: (self.state.pole_district[r], self.state.poles[r])),
            "district_alarms": (self.districts.export(lambda d: (self.state.districts[d], DISTRICT_POLE))
                                if self.districts is not None else []),
            "spatial": self.spatial.export() if self.spatial is not None else [],
            "next_spatial_ms": int(self._next_spatial_ms),
            "counts": dict(self.counts),
            "acks": [{"district": d, "pole": p, "key": k, **rec} for (d, p, k), rec in sorted(self._acks.items())],
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        _atomic_write(self.state_path, lambda f: f.write(body))
        if self.stream is not None and full:
            arrays = self.stream.state_dict()
            _atomic_write(self._stream_path(), lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
            self._last_full_save = self.clock()
        self._dirty = self._unsaved_changes = False
        self._last_save = self.clock()
        self.counts["state_saves"] += 1

    def _stream_path(self) -> Path:
        assert self.state_path is not None
        return self.state_path.with_name(self.state_path.name + ".stream.npz")

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
                raise ValueError("not a detection state file of version 1")
            saved_at = int(doc.get("saved_at", self.clock() * 1000))
            self.rules.restore(doc.get("poles", []), heard_ms=saved_at)
            self.poles.restore(doc.get("alarms", []), self._pole_row)
            if self.spatial is not None and self.districts is not None:
                self.spatial.restore(doc.get("spatial", []))
                self.districts.restore(doc.get("district_alarms", []),
                                       lambda d, _e: self.state.district_index(d))
            self._next_spatial_ms = int(doc.get("next_spatial_ms", NO_TS))
            self.counts.update({str(k): int(v) for k, v in dict(doc.get("counts", {})).items()})
            for e in doc.get("acks", []):
                if self._find_active(str(e["district"]), str(e["pole"]), str(e["key"])) is not None:
                    self._acks[(str(e["district"]), str(e["pole"]), str(e["key"]))] = {
                        f: e.get(f) for f in _ACK_FIELDS}
        except Exception as exc:
            # a damaged file must not keep the gateway down: keep it aside for a human, start afresh
            aside = path.with_name(path.name + ".corrupt")
            log.error("detection state %s unreadable (%s); moved to %s", path, exc, aside)
            os.replace(path, aside)
            self._setup()
            self.counts.clear()
            self.counts["state_load_errors"] += 1
            return
        if self.stream is not None and self._stream_path().exists():
            try:
                with np.load(self._stream_path()) as z:
                    self.stream.load_state_dict({k: z[k] for k in z.files})
            except (OSError, ValueError, KeyError) as exc:
                log.error("streaming detector state unreadable (%s): it warms up again", exc)
        # the time the gateway was down is not the poles' silence (a deploy must not raise, or clear,
        # offline alarms): from the last save, which a crash may leave a save interval behind
        self.rules.excuse(int(self.clock() * 1000) - saved_at)

    def excuse(self, ms: int) -> None:
        """The gateway heard nothing for ``ms`` through no fault of the poles (its broker connection was
        lost): that time does not count towards anyone's silence limit."""
        with self._lock:
            self.rules.excuse(ms)
            self.counts["excused_ms"] += max(0, int(ms))

    def _pole_row(self, district: str, pole: str) -> int:
        return self.state.row(pole, district)


#: Metrics that switch regime twice a day by design: the lamp's electrical readings follow the
#: lighting schedule (commanded dimming is a command, not a measurement) and the ambient light follows
#: the sun. A per-series detector sees every dusk and dawn as a level shift (in the simulated city
#: they were ~95 % of its false alarms); layer 1 already judges the lamp against its expected power.
SCHEDULE_DRIVEN: frozenset[str] = frozenset({"illuminance_lux"})


def _streamed(m: Metric) -> bool:
    return m.dtype == "float" and m.signal.shape != "lamp" and m.name not in SCHEDULE_DRIVEN


#: Metrics scored by the streaming detector (layer 2).
STREAM_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if _streamed(m))


def _anomaly_spec(col: int) -> AlarmSpec:
    m = METRICS[col]
    return AlarmSpec(f"anomaly.{m.name}", "anomaly", m.name,
                     (Tier("info", f"unusual {m.description} for this pole (streaming detector)",
                           fast=True),),
                     raise_n=1, raise_ms=0, clear_n=10, unit=m.unit, decimals=m.decimals)


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


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


def _notice(row: int, spec: int, on: bool, value: float, ts: int) -> Conditions:
    lvl = np.array([int(on)], np.int8)
    return Conditions(np.array([row], np.int64), np.array([spec], np.int64), lvl, lvl.copy(),
                      np.array([value]), np.array([np.nan]), lvl.astype(np.float64), np.array([ts], np.int64))


def _log_alarm(change: str, a: Alert) -> None:
    """One structured line per alarm change a person may care about (key=value, greppable)."""
    parts = [f"alarm {change}", f"pole={a.pole}", f"district={a.district}", f"key={a.key}", f"kind={a.kind}",
             f"severity={a.severity}", f"raised_at={a.raised_at}", f"ts={a.ts}"]
    if a.value is not None:
        parts.append(f"value={a.value:g}")
    if a.acked_by:
        parts.append(f"by={a.acked_by}")
    if a.shelved_until:
        parts.append(f"shelved_until={a.shelved_until}")
    if a.ack_note:
        parts.append(f"note={json.dumps(a.ack_note)}")
    parts.append(f"explain={json.dumps(a.explain)}")
    log.log(logging.WARNING if change in ("raised", "escalated") and a.severity == "critical" else logging.INFO,
            " ".join(parts))


alert_point = schema.alert_point  # the mapping lives with the rest of the schema


def alerts_of(points: Sequence[Point]) -> list[dict[str, FieldValue]]:
    """Test/debug helper: the fields and tags of alert points, flattened."""
    return [{**dict(p.tags), **dict(p.fields)} for p in points if p.measurement == schema.ALERTS]
