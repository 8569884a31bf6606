"""The gateway's detection stage: outcomes in, alert points and retained alert messages out.

    stage = DetectionStage(state_path=".lampwatch/detect-state.json", publish=publish)
    Gateway(cfg, sink, on_outcome=stage)      # every message: readings / status -> alert points
    stage.tick(now_ms)                          # periodically: silence -> pole_offline
    stage.close()                               # shutdown: state saved

Layers (``gateway.detect``): 1 safety rules from the catalog, 2 the streaming anomaly detector
(optional, ``info`` alarms of kind ``anomaly``), 3 spatial (sensor_suspect per pole, district_event
per district). Conditions from every layer go through one :class:`gateway.detect.alarms.AlarmPolicy` per
entity kind (poles, districts); each state change becomes a ``contract.models.Alert``, an ``alerts``
point (time = device time of the change) and a retained message on ``topics.alert(district, pole,
key)``. District-level alarms use the pole segment :data:`gateway.detect.spatial.DISTRICT_POLE`.

Restart: the state file (JSON, :meth:`gateway.detect.engine.Detector.export`, written atomically:
temp file + fsync + rename, then the directory is fsynced) holds the pole registry in row order,
per-pole attributes and learned baselines, maintenance windows, every active alarm and the district
baselines (the pole table as columns); the learned rows go beside it (``<state_path>.stream.npz``: the
streaming detector; ``<state_path>.drift.npz``: each pole's usual place for the drift check, restored by
pole name). Those are the full save, every ``save_every_s`` and on ``close``. After a call that changed an
alarm, an acknowledgement or a maintenance window (at most once per ``save_min_interval_s``, so an alarm
storm does not turn into an fsync storm; a change held back is saved by the first call or tick after
that) only the recent document is saved (``<state_path>.recent.json``,
:meth:`~gateway.detect.engine.Detector.export_recent_view`: alarms, acknowledgements, offline and
maintenance marks, sized by what is raised, not by the fleet); every save is numbered, and a load
lets a recent document replace those parts of an older state file. A save is off the message path: the
call that decides it only copies what the document reads (the active alarms and acknowledgements, and
for a full save copies of the few per-pole columns saved, a few hundred bytes a pole), a saver thread
writes the document from that copy a column at a time and fsyncs it; a newer copy replaces one not
yet written, and ``close`` writes the last state itself. The learned rows (most of the bytes) are not in
that copy: a full save's thread writes them from the live detector, a few MB at a time under the lock
(memory: a slice, not a second copy of every row). The time the gateway could not listen (down, or its
broker lost) is excused: no pole is called offline, and no offline alarm cleared, for the gateway's own
deafness.

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

import functools
import json
import logging
import os
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from contract import schema, topics
from contract.models import AckRequest, Alert, MaintenanceRequest
from contract.readings import FieldValue, Point
from gateway import osthread
from gateway.detect.clock import CLOCK_REASONS
from gateway.detect.engine import STATE_VERSION, STREAM_METRICS, STREAM_STRIDE, Change, Detector, StateView
from gateway.detect.params import RuleParams
from gateway.detect.spatial import DRIFT_SAVED, SpatialParams
from gateway.detect.state import N_METRICS
from gateway.detect.types import Conditions
from gateway.inventory import Inventory
from gateway.pipeline import Outcome

log = logging.getLogger("lampwatch.detect")

__all__ = ["STATE_VERSION", "STREAM_METRICS", "DetectionStage", "alert_point", "alerts_of", "read_state"]

Publish = Callable[[str, bytes, bool], None]
OnAlert = Callable[[Alert], None]


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


class _Part:
    """A read-only view of the attribute of the same name of the stage's detector."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, stage: DetectionStage, owner: type | None = None) -> Any:
        return getattr(stage.det, self.name)


class DetectionStage:
    """Detection for the gateway worker: ``stage(outcome) -> list[Point]``; thread-safe."""

    def __init__(self, *, state_path: str | None = None, publish: Publish | None = None,
                 clock: Callable[[], float] = time.time, rule_params: RuleParams = RuleParams(),
                 spatial: SpatialParams | None = SpatialParams(), stream: bool = True,
                 anomaly_on: float = 0.9998, anomaly_off: float = 0.86, save_every_s: float = 30.0,
                 learned_save_every_s: float = 300.0,
                 save_min_interval_s: float = 1.0, on_alert: OnAlert | None = None,
                 inventory: Inventory | None = None, background_save: bool = True) -> None:
        self.state_path = Path(state_path) if state_path else None
        self.publish, self.clock = publish, clock
        self.on_alert = on_alert
        self._pending: list[Point] = []  # alert points from acknowledgements, out with the next call
        self.save_every_s, self.save_min_interval_s = save_every_s, save_min_interval_s
        self.learned_save_every_s = learned_save_every_s
        self.state_error: str | None = None  # set while the state file cannot be written (the gateway alarms)
        self._kw: dict[str, Any] = dict(rule_params=rule_params, spatial=spatial, stream=stream,
                                        anomaly_on=anomaly_on, anomaly_off=anomaly_off)
        self._lock = threading.RLock()
        self.counts: Counter[str] = Counter()
        self.det = Detector(inventory=inventory, **self._kw)
        self._dirty = self._unsaved_changes = False
        self._last_save = self._last_full_save = -float("inf")
        # the learned rows first after a learned_save_every_s: what was just loaded is on disk already, and a
        # table started afresh must not overwrite learned rows that go back to their poles by name
        self._last_learned_save = clock()
        self._seq = 0  # every save's number: a recent document newer than the state document overrides it
        self._closed = False
        if self.state_path is not None and (self.state_path.exists() or self._recent_path().exists()):
            self._load(self.state_path)
        self._saver = _Saver(self) if (background_save and self.state_path is not None) else None

    # the detector's parts, for tests and tools that look inside (read-only views of ``self.det``)
    state = _Part()
    rules = _Part()
    spatial = _Part()
    stream = _Part()
    poles = _Part()
    districts = _Part()
    trend = _Part()
    inventory = _Part()

    # --- configuration ----------------------------------------------------------------------------
    def set_pole(self, pole: str, district: str, **attrs: Any) -> None:
        """Per-pole attributes: rated_power_w, nominal_voltage_v, interval_s, tilt_baseline_deg."""
        with self._lock:
            self.det.rules.set_pole(pole, district, **attrs)
            self._dirty = True

    def set_maintenance(self, pole: str, district: str, start_ms: int, end_ms: int) -> None:
        with self._lock:
            self.det.rules.set_maintenance(pole, district, start_ms, end_ms)
            self._dirty = True

    def set_inventory(self, inventory: Inventory | None) -> None:
        """Judge against the city inventory from now on (its attributes are set at once)."""
        with self._lock:
            self.det.inventory = inventory
            self.det.apply_inventory()

    # --- the hook -----------------------------------------------------------------------------------
    def __call__(self, outcome: Outcome) -> list[Point]:
        with self._lock:
            now_ms = int(self.clock() * 1000)
            pole_c: list[Conditions] = []
            dist_c = Conditions.empty()
            if outcome.status is not None:
                pole_c.append(self.det.status(outcome.status, now_ms))
            for st in outcome.statuses:  # in order: the alarm step takes a pole's conditions in turn
                pole_c.append(self.det.status(st, now_ms))
            if outcome.rejects:
                pole_c.append(self.det.refused(((rj.pole, rj.reason) for rj in outcome.rejects
                                                if rj.reason in CLOCK_REASONS and rj.pole is not None), now_ms))
            if outcome.readings:
                c, dist_c = self.det.readings(outcome.readings, now_ms)
                pole_c.append(c)
                self._dirty = True
            return self._apply(Conditions.concat(pole_c), dist_c)

    def tick(self, now_ms: int | None = None) -> list[Point]:
        """Silence check for every pole at once (``now_ms``: gateway clock, default the stage's)."""
        with self._lock:
            now = int(self.clock() * 1000) if now_ms is None else int(now_ms)
            return self._apply(self.det.silence(now), Conditions.empty())

    def excuse(self, ms: int) -> None:
        """The gateway heard nothing for ``ms`` through no fault of the poles (its broker connection was
        lost): that time does not count towards anyone's silence limit."""
        with self._lock:
            self.det.rules.excuse(ms)
            self.counts["excused_ms"] += max(0, int(ms))

    # --- people ------------------------------------------------------------------------------------
    def acknowledge(self, req: AckRequest) -> str | None:
        """Acknowledge or shelve one active alarm; returns None, or why it was refused."""
        with self._lock:
            got = self.det.acknowledge(req, int(self.clock() * 1000))
            if isinstance(got, str):
                return got
            _log_alarm("acknowledged" if req.action == "ack" else "shelved", got)
            self._out(got)
            self._pending.append(alert_point(got))
            self.counts[f"alarms_{req.action}"] += 1
            self._dirty = self._unsaved_changes = True
            return None

    def maintenance(self, req: MaintenanceRequest) -> str | None:
        """Start or end a pole's maintenance window; returns None, or why it was refused."""
        with self._lock:
            inv = self.det.inventory
            if self.det.state.find(req.pole) is None and (inv is None or req.pole not in inv):
                return f"pole {req.pole} is unknown to this gateway"
            if req.action == "start":
                if req.start is None or req.end is None or req.end <= req.start:
                    return "a maintenance window needs start < end"
                self.det.rules.set_maintenance(req.pole, req.district, req.start, req.end)
            else:
                self.det.rules.clear_maintenance(req.pole)
            log.info("maintenance %s pole=%s district=%s by=%s start=%s end=%s", req.action, req.pole,
                     req.district, req.by, req.start, req.end)
            self._dirty = self._unsaved_changes = True
            return None

    def maintenance_windows(self, pole: str) -> list[tuple[int, int]]:
        with self._lock:
            return self.det.rules.maintenance(pole)

    def active(self) -> list[Alert]:
        """Every active alarm, as the Alert last published for it."""
        with self._lock:
            return self.det.active()

    def counters(self) -> dict[str, float]:
        """Alarm counters (``alarms_raised_<kind>``, ``alarms_cleared``...) and active alarm counts."""
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self.counts.items()}
            out["alarms_active"] = float(self.det.n_active())
            out["detect_poles"] = float(self.det.state.n)
            return out

    # --- output ------------------------------------------------------------------------------------
    def _apply(self, pole_c: Conditions, dist_c: Conditions) -> list[Point]:
        changes = self.det.step(pole_c, dist_c)
        points = [self._emit(c) for c in changes]
        if self._pending:
            points, self._pending = self._pending + points, []
        if changes:
            self._dirty = self._unsaved_changes = True
        self._maybe_save()
        return points

    def _emit(self, c: Change) -> Point:
        a = c.alert
        self.counts[f"alarms_{c.change}_{a.kind}"] += 1
        self.counts[f"alarms_{c.change}"] += 1
        _log_alarm(c.change, a)
        self._out(a)
        return alert_point(a)

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

    # --- persistence ---------------------------------------------------------------------------------
    def _maybe_save(self) -> None:
        if self.state_path is None or not self._dirty:
            return
        now = self.clock()
        since = now - self._last_save
        if not ((self._unsaved_changes and since >= self.save_min_interval_s) or since >= self.save_every_s):
            return
        # the pole table on the full-save cadence, the learned rows (most of the bytes) on the slowest
        full = now - self._last_full_save >= self.save_every_s
        learned = full and now - self._last_learned_save >= self.learned_save_every_s
        self._dirty = self._unsaved_changes = False
        self._last_save = now
        if full:
            self._last_full_save = now
        if learned:
            self._last_learned_save = now
        if self._saver is not None:
            self._saver.offer(self._snapshot(full, learned))
        else:
            self._write_safely(self._snapshot(full, learned))

    def _snapshot(self, full: bool, learned: bool | None = None) -> _Snapshot:
        """What a save writes, taken under the lock and serialised later, elsewhere: the detector's
        :class:`~gateway.detect.engine.StateView` (copies of just the columns the document reads; an
        alarm-only save: the recent view, what changed since is sized by the alarms, not the fleet). The
        learned per-pole arrays (the streaming detector's rows, the poles' drift state) are not copied: a
        full save writes them straight from the live detector, a slice at a time (:meth:`_write_rows`)."""
        self._seq += 1
        learned = full if learned is None else learned
        view = self.det.export_view() if full else self.det.export_recent_view()
        return _Snapshot(view, full, learned and full, self.det.stream is not None, int(self.clock() * 1000),
                         dict(self.counts), list(self.state.poles) if full else [], self._seq)

    def _write(self, snap: _Snapshot) -> None:
        assert self.state_path is not None
        view, extra = snap.view, {"saved_at": snap.saved_at, "seq": snap.seq, "counts": snap.counts}
        if not snap.full:  # the recent document: alarms, acknowledgements, offline and maintenance marks
            _atomic_write(self._recent_path(), lambda f: write_view(view, f.write, extra))
            return
        _atomic_write(self.state_path, lambda f: write_view(view, f.write, extra))
        if not snap.learned:
            return
        if snap.stream:
            # the series of the poles in this snapshot, no more: the rows past them belong to poles that
            # registered after the copy (the restored registry would hand such a row, with its learned state,
            # to whichever new pole came first) or are spare capacity; they are restored fresh
            _atomic_write(self._stream_path(), lambda f: self._write_stream(f, snap.poles[:view.n]))
        if self.det.spatial is not None:
            _atomic_write(self._drift_path(), lambda f: self._write_drift(f, snap.poles))

    def _write_stream(self, f: BinaryIO, poles: list[str]) -> None:
        """The streaming detector's rows of ``poles`` (the registry's first rows) as ``rows.npy`` in an npz,
        with the poles' names (the rows are restored by name: the pole table may be newer, or started
        afresh), their layout, the detector's parameters and the series stride; each row copied whole. The
        spare capacity is not written (it doubles: up to half the rows, ~36 % of them at 20,000 poles); a
        restored detector grows again from the rows it was given."""
        n_series = len(poles) * STREAM_STRIDE
        with self._lock:
            stream = self.det.stream
            assert stream is not None
            cap, width = min(n_series, stream.capacity), stream.bytes_per_series() // 4
            small = {_STRIDE_KEY: np.array(STREAM_STRIDE), _LAYOUT_KEY: np.array(stream.row_layout()),
                     "params": np.array(stream.params_key()), "poles": np.array(poles, dtype=str)}

        def rows(a: int, b: int) -> np.ndarray:
            part = self.det.stream.copy_rows(a, b) if self.det.stream is not None else None
            if part is None or len(part) != b - a:  # pragma: no cover - replaced meanwhile
                raise OSError("the streaming detector changed during the save")
            return part

        self._write_rows(f, small, np.dtype(np.float32), (cap, width), rows)

    def _write_drift(self, f: BinaryIO, poles: list[str]) -> None:
        """The poles' drift state (:meth:`~gateway.detect.spatial.Spatial.drift_rows`) as ``rows.npy`` in an
        npz, one row per pole of the snapshot, with the poles' and the drift metrics' names (restored by
        name)."""
        with self._lock:
            spatial = self.det.spatial
            assert spatial is not None
            small = {"poles": np.array(poles, dtype=str), "metrics": np.array(spatial.drift_names(), dtype=str)}
            k = len(spatial.drift)

        def rows(a: int, b: int) -> np.ndarray:
            if self.det.spatial is None:  # pragma: no cover - replaced meanwhile
                raise OSError("the spatial detector changed during the save")
            return self.det.spatial.drift_rows(a, b)

        self._write_rows(f, small, DRIFT_SAVED, (len(poles), k), rows)

    def _write_rows(self, f: BinaryIO, small: dict[str, np.ndarray], dtype: np.dtype, shape: tuple[int, int],
                    rows: Callable[[int, int], np.ndarray]) -> None:
        """An npz of the ``small`` arrays and ``rows.npy``, a ``shape`` array of ``dtype`` whose rows
        ``rows(a, b)`` returns: STREAM_SAVE_BYTES at a time, each slice copied under the lock. A full save
        used to copy every array at once first (the streaming detector's alone: 65 MB more resident at
        24,000 poles, 270 at 100,000, every ``save_every_s``). Two slices may be a batch or two apart,
        which is no different to a learned row than a crash between batches (every row learns on its own,
        and the alarm state is saved apart anyway)."""
        n, width = shape
        step = max(1, STREAM_SAVE_BYTES // max(1, width * dtype.itemsize))
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in small.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as m:
                    np.lib.format.write_array(m, arr)
            with zf.open(f"{_ROWS_KEY}.npy", "w", force_zip64=True) as m:
                np.lib.format.write_array_header_1_0(
                    m, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
                for a in range(0, n, step):
                    with self._lock:
                        part = rows(a, min(a + step, n))
                    m.write(np.ascontiguousarray(part, dtype).data.cast("B"))  # no second copy

    def _write_safely(self, snap: _Snapshot) -> bool:
        """Write one snapshot; a failure is counted, logged once and set as ``state_error``, and the
        next save tries again."""
        try:
            self._write(snap)
        except Exception as exc:  # disk full, read-only, permission...: say so, keep detecting, retry
            with self._lock:
                self.counts["state_save_errors"] += 1
                self._dirty = self._unsaved_changes = True  # what this save held is still unsaved
                if snap.full:  # and the next save is a full one again (the pole table on disk is older)
                    self._last_full_save = -float("inf")
                if snap.learned:
                    self._last_learned_save = -float("inf")
                if self.state_error is None:
                    log.error("cannot save the alarm state to %s: %s", self.state_path, exc)
                self.state_error = f"cannot save alarm state: {exc}"
            return False
        with self._lock:
            self.counts["state_saves"] += 1
            if self.state_error is not None:
                log.warning("alarm state saved again to %s", self.state_path)
            self.state_error = None
        return True

    def flush(self) -> None:
        """Wait until every save decided so far is on disk (or has failed and says so)."""
        if self._saver is not None:
            self._saver.drain()

    def save(self, full: bool = True) -> None:
        """Save the state now, on the caller's thread (``full=True``: everything, the learned rows too;
        ``False``: the recent document only); raises OSError when it cannot be written."""
        if self.state_path is None:
            return
        if self._saver is not None:  # not under the lock: the saver takes it to record its outcome
            self._saver.drain()
        with self._lock:
            self._write(self._snapshot(full, full))
            self.counts["state_saves"] += 1
            self._dirty = self._unsaved_changes = False
            self._last_save = self.clock()
            if full:
                self._last_full_save = self._last_learned_save = self._last_save

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._saver is not None:
            self._saver.stop()
        try:
            self.save()
        except OSError as exc:
            log.error("cannot save the alarm state to %s at shutdown: %s", self.state_path, exc)

    def _stream_path(self) -> Path:
        assert self.state_path is not None
        return self.state_path.with_name(self.state_path.name + ".stream.npz")

    def _drift_path(self) -> Path:
        assert self.state_path is not None
        return self.state_path.with_name(self.state_path.name + ".drift.npz")

    def _recent_path(self) -> Path:
        assert self.state_path is not None
        return self.state_path.with_name(self.state_path.name + ".recent.json")

    def _load(self, path: Path) -> None:
        saved_at = int(self.clock() * 1000)
        recent = _read_aside(self._recent_path(), "recent alarm state")
        # numbered on from the newest file seen, so a recent file left behind never outranks a new save
        self._seq = _seq_of(recent)
        try:
            doc: dict[str, Any] = (json.loads(path.read_bytes()) if path.exists()
                                   else {"v": STATE_VERSION, "seq": -1})
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            self._seq = max(self._seq, _seq_of(doc))
            saved_at = int(doc.get("saved_at", saved_at))
            if recent is not None and _seq_of(recent) > _seq_of(doc):
                try:
                    self.det.restore(doc, heard_ms=saved_at, recent=recent)
                    doc = {**doc, "counts": recent.get("counts", doc.get("counts", {}))}
                except Exception as exc:  # the state file alone, then: the alarms of up to a full-save ago
                    log.error("recent alarm state unreadable (%s); the state file's alarms are restored", exc)
                    self.det = Detector(inventory=self.det.inventory, **self._kw)
                    self.det.restore(doc, heard_ms=saved_at)
            else:
                self.det.restore(doc, heard_ms=saved_at)
            self.counts.update({str(k): int(v) for k, v in dict(doc.get("counts", {})).items()})
        except Exception as exc:
            # a damaged file must not keep the gateway down: keep it aside for a human, start afresh
            aside = path.with_name(path.name + ".corrupt")
            log.error("detection state %s unreadable (%s); moved to %s", path, exc, aside)
            if path.exists():
                os.replace(path, aside)
            self.det = Detector(inventory=self.det.inventory, **self._kw)
            self.counts.clear()
            self.counts["state_load_errors"] += 1
            return
        if self.det.spatial is not None and self._drift_path().exists():
            try:
                with np.load(self._drift_path()) as z:
                    self.det.spatial.restore_drift(z["poles"].tolist(), z["metrics"].tolist(), z[_ROWS_KEY])
            except (OSError, ValueError, KeyError) as exc:
                log.error("drift state unreadable (%s): the poles' usual places are learnt again", exc)
        if self.det.stream is not None and self._stream_path().exists():
            try:
                with np.load(self._stream_path()) as z:
                    if _ROWS_KEY in z.files:  # rows as stored (today's saver)
                        if int(z[_STRIDE_KEY]) != STREAM_STRIDE:
                            raise ValueError(f"streaming state of another series stride ({int(z[_STRIDE_KEY])})")
                        rows = z[_ROWS_KEY]
                        if "poles" in z.files:  # by name (a file without names: the registry's order)
                            rows = rows_by_name(rows, z["poles"].tolist(), self.det.state.find, self.det.state.n)
                        self.det.stream.load_rows(rows, str(z[_LAYOUT_KEY]), str(z["params"]))
                    else:  # per-field arrays (state_dict), as earlier gateways saved them
                        self.det.load_stream_arrays(restride({k: z[k] for k in z.files}, self.det.stream_cols()))
            except (OSError, ValueError, KeyError) as exc:
                log.error("streaming detector state unreadable (%s): it warms up again", exc)
        # the time the gateway was down is not the poles' silence (a deploy must not raise, or clear,
        # offline alarms): from the last save, which a crash may leave a save interval behind
        self.det.rules.excuse(int(self.clock() * 1000) - saved_at)


_STRIDE_KEY = "series_stride"
_LAYOUT_KEY = "row_layout"
_ROWS_KEY = "rows"
#: bytes of streaming-detector rows a full save copies at a time (one lock hold each)
STREAM_SAVE_BYTES = 4 << 20


def rows_by_name(rows: np.ndarray, poles: Sequence[str], find: Callable[[str], int | None], n: int) -> np.ndarray:
    """Saved streaming-detector rows (``STREAM_STRIDE`` a pole, ``poles[i]``'s from ``i * STREAM_STRIDE``)
    for today's registry of ``n`` poles (``find``: a pole's row, or None): each pole's series move to its
    row, a pole the registry lacks is dropped, one the file lacks is fresh (zeros). The learned rows are
    saved less often than the pole table, which may have gained poles since, or started afresh (a damaged
    file) in another order: by row number, a pole would inherit another's learning."""
    dst = np.array([-1 if (r := find(str(p))) is None else r for p in poles], np.int64)
    if len(dst) * STREAM_STRIDE > len(rows):
        raise ValueError("streaming state: fewer rows than poles")
    if np.array_equal(dst, np.arange(len(dst))):
        return rows  # the common case: the same registry, perhaps grown since
    out = np.zeros((n * STREAM_STRIDE, *rows.shape[1:]), rows.dtype)
    keep = np.flatnonzero(dst >= 0)
    src = (keep[:, None] * STREAM_STRIDE + np.arange(STREAM_STRIDE)).ravel()
    to = (dst[keep][:, None] * STREAM_STRIDE + np.arange(STREAM_STRIDE)).ravel()
    out[to] = rows[src]
    return out


def restride(arrays: dict[str, np.ndarray], cols: np.ndarray) -> dict[str, np.ndarray]:
    """Saved streaming-detector arrays in today's series layout (``row * STREAM_STRIDE + j``, ``j`` the
    metric's place in STREAM_METRICS, catalog column ``cols[j]``). A file saved before the layout was
    recorded has one series per catalog metric (``row * N_METRICS + col``): its streamed series move to
    their new slots (the others were never written) and keep every learned value."""
    arrays = dict(arrays)
    stride = int(arrays.pop(_STRIDE_KEY, N_METRICS))
    if stride == STREAM_STRIDE:
        return arrays
    if stride != N_METRICS or len(cols) != STREAM_STRIDE:
        raise ValueError(f"streaming state of an unknown layout ({stride} series a row)")
    cap = len(arrays["n"])
    rows = -(-cap // stride)
    out: dict[str, np.ndarray] = {}
    for k, a in arrays.items():
        if a.ndim == 0 or len(a) != cap:  # the parameters
            out[k] = a
            continue
        pad = np.zeros((rows * stride - cap, *a.shape[1:]), a.dtype)  # zeros: a fresh series
        full = np.concatenate((a, pad)).reshape(rows, stride, *a.shape[1:])
        out[k] = np.ascontiguousarray(full[:, cols]).reshape(rows * len(cols), *a.shape[1:])
    return out


_dumps = functools.partial(json.dumps, separators=(",", ":"))


def _read_aside(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when there is none; a damaged one is moved aside (``.corrupt``)
    and logged."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc
    except (OSError, ValueError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        log.error("%s %s unreadable (%s); moved to %s", what, path, exc, aside)
        os.replace(path, aside)
        return None


def _seq_of(doc: dict[str, Any] | None) -> int:
    """A saved document's number (``-1``: none; ``0``: a file from before saves were numbered)."""
    if doc is None:
        return -1
    seq = doc.get("seq", 0)
    return seq if isinstance(seq, int) else 0


def read_state(path: str | Path) -> dict[str, Any]:
    """The state document a restart from ``path`` would load: the state file with the parts of a newer
    recent document (``<path>.recent.json``: alarms, acknowledgements) in place of its own. For people
    and tests reading what is saved; the learned rows are not in it."""
    p = Path(path)
    doc: dict[str, Any] = json.loads(p.read_bytes()) if p.exists() else {"v": STATE_VERSION, "seq": -1}
    recent = json.loads(r.read_bytes()) if (r := p.with_name(p.name + ".recent.json")).exists() else None
    if _seq_of(recent) > _seq_of(doc):
        assert recent is not None
        doc = {**doc, **{k: recent[k] for k in ("alarms", "district_alarms", "acks", "said_offline",
                                                  "maintenance", "saved_at", "seq", "counts") if k in recent}}
    return doc


def write_view(view: StateView, write: Callable[[bytes], object], extra: dict[str, Any]) -> None:
    """Write ``view``'s document followed by ``extra``'s keys as one JSON object: the same bytes as
    ``json.dumps({**view.doc(), **extra}, separators=(",", ":"))``, a column at a time."""
    write(b"{")
    for i, (k, v) in enumerate([*view.parts, *extra.items()]):
        write((("," if i else "") + _dumps(k) + ":").encode())
        if not callable(v):
            write(_dumps(v).encode())
            continue
        write(b"{")
        for j, (kk, vv) in enumerate(v()):
            write((("," if j else "") + _dumps(kk) + ":" + _dumps(vv)).encode())
        write(b"}")
    write(b"}")


class _Snapshot:
    """The detector's state view and whether the learned rows (streaming detector, drift) are written
    too (a full save)."""

    __slots__ = ("counts", "full", "learned", "poles", "saved_at", "seq", "stream", "view")

    def __init__(self, view: StateView, full: bool, learned: bool, stream: bool, saved_at: int,
                 counts: dict[str, int], poles: list[str], seq: int) -> None:
        self.view, self.full, self.stream, self.saved_at, self.counts = view, full, stream, saved_at, counts
        self.learned = learned  # the learned rows too (streaming detector, drift)
        self.poles = poles  # a full save: the registry the drift rows are written for
        self.seq = seq


class _Saver:
    """One thread that writes the newest snapshot it was offered (an older one not yet written is
    replaced: only the latest state matters): the newest full one, then a newer alarm-only one (a full
    snapshot holds everything an older alarm-only one does, which it drops). It never dies on an error:
    a failed write is counted and retried with the next snapshot."""

    def __init__(self, stage: DetectionStage) -> None:
        self.stage = stage
        self._cv = threading.Condition()
        self._full: _Snapshot | None = None
        self._recent: _Snapshot | None = None
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="detect-saver", daemon=True)
        self._thread.start()

    def offer(self, snap: _Snapshot) -> None:
        with self._cv:
            if self._stop:  # the stage is closed: close() wrote the last state itself
                return
            if snap.full:
                if self._full is not None and self._full.learned:  # a pending learned write is not dropped
                    snap.learned = True
                self._full, self._recent = snap, None
            else:
                self._recent = snap  # written after a pending full one, which it is newer than
            self._cv.notify()

    def drain(self) -> None:
        """Wait until nothing is pending or being written."""
        with self._cv:
            while (self._full is not None or self._recent is not None or self._busy) and self._thread.is_alive():
                self._cv.wait(0.1)

    def stop(self) -> None:
        self.drain()
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        osthread.name_this_thread(osthread.SAVER)
        while True:
            with self._cv:
                while self._full is None and self._recent is None and not self._stop:
                    self._cv.wait()
                snap = self._full or self._recent
                if snap is None:
                    return
                if snap is self._full:
                    self._full = None
                else:
                    self._recent = None
                self._busy = True
            try:
                self.stage._write_safely(snap)
            except Exception:  # pragma: no cover - _write_safely catches; this keeps the thread alive anyway
                log.exception("detection state saver")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


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
