"""Fleet state for detection: pole id -> row, catalog metric -> column, preallocated numpy arrays.

Every layer of the detector keeps its per-pole and per-pole x metric state in one :class:`FleetState`.
Rows are handed out in the order poles first appear and never move (the saved state records that
order, so a restored gateway gives every pole the same row). Arrays are allocated for ``capacity``
rows and grow in place by an eighth (:func:`stepped`, :class:`Reserve`): a pole's rows are resident,
reserved rows are not, and growing copies nothing until a reservation is outgrown.

Each rule family keeps its state in its own typed table: a :class:`Columns` subclass that declares
its arrays as :class:`Col` attributes (dtype, fill, and the shape of one pole's share) and is
registered with the fleet (``StuckState(fleet, n=...)``); the registry grows every table with it, so
``state.run[rows]`` is a typed attribute, never a string key into a bag of arrays.

A :class:`Batch` is what one update processes: one row per *sample* (pole, device time), a dense
``values`` matrix with one column per catalog metric (NaN = not in this sample). It is built from
``Reading`` objects or from long arrays ``(rows, cols, values, ts)``; nothing downstream of it creates
a Python object per reading.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from contract.catalog import INDEX, METRICS
from contract.readings import Reading

N_METRICS = len(METRICS)
NO_TS = np.iinfo(np.int64).min  # "never" in int64 millisecond arrays
_NO_TS_INT = int(NO_TS)


@dataclass(frozen=True, slots=True)
class Batch:
    """Samples to process: ``rows[i]`` is the pole row, ``ts[i]`` the device time (ms) and
    ``values[i, c]`` the value of catalog metric ``c`` (NaN when absent)."""

    rows: np.ndarray  # int64 (n,)
    ts: np.ndarray  # int64 (n,)
    values: np.ndarray  # float64 (n, N_METRICS)

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def empty() -> Batch:
        return Batch(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, N_METRICS)))

    @staticmethod
    def from_arrays(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, ts: np.ndarray) -> Batch:
        """Long format (one entry per pole x metric x time) to one sample per (pole, time)."""
        r = np.asarray(rows, np.int64).ravel()
        c = np.asarray(cols, np.int64).ravel()
        v = np.asarray(values, np.float64).ravel()
        t = np.asarray(ts, np.int64).ravel()
        if not (len(r) == len(c) == len(v) == len(t)):
            raise ValueError("rows, cols, values and ts must have the same length")
        if len(r) == 0:
            return Batch.empty()
        if c.min() < 0 or c.max() >= N_METRICS:
            raise ValueError("metric column out of range")
        keys, first, inv = np.unique(np.stack([r, t], axis=1), axis=0, return_index=True,
                                     return_inverse=True)
        inv = inv.ravel()
        order = np.argsort(first, kind="stable")  # samples in order of first appearance
        pos = np.empty(len(order), np.int64)
        pos[order] = np.arange(len(order))
        mat = np.full((len(keys), N_METRICS), np.nan)
        mat[pos[inv], c] = v
        return Batch(keys[order, 0].copy(), keys[order, 1].copy(), mat)

    @staticmethod
    def from_readings(state: FleetState, readings: Sequence[Reading]) -> Batch:
        n = len(readings)
        if n == 0:
            return Batch.empty()
        ts = np.empty(n, np.int64)
        rows = np.empty(n, np.int64)
        vals: list[float] = []
        col_parts: list[np.ndarray] = []
        lens: list[int] = []
        # one entry per key order (a sensor kit): its catalog columns, and which values to keep (None: all)
        kits: dict[tuple[str, ...], tuple[np.ndarray, list[int] | None]] = {}
        row_of = state.row
        for i, r in enumerate(readings):
            rows[i] = row_of(r.pole, r.district)
            ts[i] = r.ts_ms
            vs = r.values
            names = tuple(vs)
            kit = kits.get(names)
            if kit is None:
                cols = [INDEX.get(k) for k in names]
                kept = [j for j, c in enumerate(cols) if c is not None]
                kit = kits[names] = (np.array([cols[j] for j in kept], np.int64),
                                     None if len(kept) == len(cols) else kept)
            cols_arr, keep = kit
            if keep is None:
                vals.extend(vs.values())
            else:
                every = list(vs.values())
                vals.extend([every[j] for j in keep])
            col_parts.append(cols_arr)
            lens.append(len(cols_arr))
        mat = np.full((n, N_METRICS), np.nan)
        if vals:  # one scatter instead of a numpy item assignment per value
            mat[np.repeat(np.arange(n), lens), np.concatenate(col_parts)] = vals
        return Batch(rows, ts, mat)

    def take(self, sel: np.ndarray) -> Batch:
        return Batch(self.rows[sel], self.ts[sel], self.values[sel])


def occurrence_rank(keys: np.ndarray) -> np.ndarray:
    """0-based occurrence number of each element among equal keys, in the order given.

    ``keys = [5, 3, 5, 5]`` -> ``[0, 0, 1, 2]``: entries with the same rank can be processed in one
    vectorised step because their keys are distinct.
    """
    k = np.asarray(keys, np.int64)
    if len(k) <= 1:
        return np.zeros(len(k), np.int64)
    order = np.argsort(k, kind="stable")
    sk = k[order]
    starts = np.concatenate(([True], sk[1:] != sk[:-1]))
    first = np.maximum.accumulate(np.where(starts, np.arange(len(k)), 0))
    rank = np.empty(len(k), np.int64)
    rank[order] = np.arange(len(k)) - first
    return rank


def doubled(cap: int, need: int) -> int:
    """The capacity that holds ``need`` rows, doubling from ``cap`` (the zero-filled arrays grow so: their
    spare rows are reserved address space, never written, so never resident; see :class:`Reserve`)."""
    cap = max(int(cap), 1)
    while cap < need:
        cap *= 2
    return cap


def stepped(cap: int, need: int) -> int:
    """The capacity that holds ``need`` rows, growing from ``cap`` by an eighth (at least 64 rows): the fleet
    tables fill every row they have (NaN, "never"), so a spare row costs memory; in place (:class:`Reserve`),
    a small step costs no copy. Doubling left up to half the rows spare, and resident."""
    cap = max(int(cap), 1)
    while cap < need:
        cap += max(cap // 8, 64)
    return cap


#: Arrays of at least this many bytes grow in place in a reservation (smaller ones are copied on growth).
RESERVE_MIN_BYTES = 1 << 20
#: A reservation holds this many times the rows asked for when it is made.
RESERVE_AHEAD = 8


class Reserve:
    """Address space reserved ahead for one growing array of rows, so that it grows in place.

    Growing by allocate-and-copy keeps the old and the new array at once: ``VmHWM`` counted both (a doubling
    of an N-byte table peaked at 3N when the new one was filled, N + 2N). Here the rows live in an anonymous
    private mapping of ``RESERVE_AHEAD`` times the rows first asked for: the kernel backs a page with memory
    only when it is first written, so the reserved rows cost address space, not memory, and growing within
    the reservation writes only the new rows' fill (nothing at all for a zero fill). Past the reservation a
    new one is made and the rows copied (the old one is freed when its last view goes). A deep copy (the
    state saver's snapshot) copies only the rows in use and reserves nothing until it grows itself.
    """

    __slots__ = ("_base",)

    def __init__(self) -> None:
        self._base: np.ndarray | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> Reserve:
        return Reserve()

    def grow(self, old: np.ndarray | None, n_old: int, cap: int, tail: tuple[int, ...], dtype: np.dtype,
             fill: object) -> np.ndarray:
        """An array of ``cap`` rows: the first ``n_old`` rows of ``old``, then ``fill``."""
        base = self._base
        row_bytes = int(np.prod(tail, dtype=np.int64)) * dtype.itemsize
        inside = (base is not None and old is not None and cap <= len(base) and n_old <= len(old)
                  and old.__array_interface__["data"][0] == base.__array_interface__["data"][0])
        if not inside:
            base = None
            if cap * row_bytes >= RESERVE_MIN_BYTES:
                base = _reserved(cap * RESERVE_AHEAD, tail, dtype)
            fresh = base[:cap] if base is not None else np.zeros((cap, *tail), dtype)
            if old is not None and n_old:
                fresh[:n_old] = old[:n_old]
            self._base = base
        else:
            assert base is not None
            fresh = base[:cap]
        if cap > n_old and not _is_zero(fill):
            fresh[n_old:cap] = fill
        return fresh


def _is_zero(fill: object) -> bool:
    try:
        return bool(fill == 0)  # NaN != 0: filled
    except (TypeError, ValueError):  # pragma: no cover - a fill numpy cannot compare
        return False


def _reserved(rows: int, tail: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """Zeroed ``(rows, *tail)`` in its own anonymous private mapping (None where one cannot be had: strict
    overcommit accounting, an address-space limit; the caller then copies on growth as before)."""
    count = rows * int(np.prod(tail, dtype=np.int64))
    try:
        mm = mmap.mmap(-1, max(count * dtype.itemsize, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, OverflowError):
        return None
    # the array keeps the mapping alive (its buffer's owner); it is unmapped when the last view goes
    return np.frombuffer(mm, dtype, count=count).reshape(rows, *tail)


class Col:
    """One per-pole array of a :class:`Columns` table, of shape ``(capacity, *tail)``; a tail entry
    that is a string names an ``int`` attribute of the table (set before ``Columns.__init__``)."""

    def __init__(self, dtype: type | np.dtype, fill: object, *tail: int | str) -> None:
        self.dtype, self.fill, self.tail = np.dtype(dtype), fill, tail
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def shape_of(self, table: Columns) -> tuple[int, ...]:
        return tuple(max(int(getattr(table, t)), 1) if isinstance(t, str) else t for t in self.tail)

    def __get__(self, table: Columns, owner: type | None = None) -> np.ndarray:
        return table._arrays[self.name]

    def __set__(self, table: Columns, value: object) -> None:
        raise AttributeError(f"{self.name} is a fleet column: assign into it ({self.name}[rows] = ...)")


class Columns:
    """A typed table of per-pole arrays that grows with the fleet registry it is registered with."""

    def __init__(self, fleet: FleetState | None = None) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._reserves: dict[str, Reserve] = {}
        self._cap = 0
        self._resize(fleet.capacity if fleet is not None else 1)
        if fleet is not None:
            fleet.register(self)

    @classmethod
    def columns(cls) -> list[Col]:
        seen: dict[str, Col] = {}
        for klass in reversed(cls.__mro__):
            seen.update({k: v for k, v in vars(klass).items() if isinstance(v, Col)})
        return list(seen.values())

    def _resize(self, cap: int) -> None:
        """Grow every column to ``cap`` rows, in place where it can (:class:`Reserve`): the new rows get the
        column's fill, the old ones keep their values."""
        for c in self.columns():
            res = self._reserves.get(c.name)
            if res is None:
                res = self._reserves[c.name] = Reserve()
            self._arrays[c.name] = res.grow(self._arrays.get(c.name), self._cap, cap, c.shape_of(self), c.dtype,
                                            c.fill)
        self._cap = cap

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())


def never_as_none(a: np.ndarray) -> list[int | None]:
    """An int64 time column as a list, ``NO_TS`` (never) as ``None`` (the state file's ``null``)."""
    return [None if v == _NO_TS_INT else v for v in a.tolist()]


def frozen(table: Columns, n: int, names: Iterable[str]) -> SimpleNamespace:
    """Copies of the first ``n`` rows of the named columns of ``table``, under the same names: what a
    state save reads of a table, taken under the stage's lock and read later by the saver thread
    without it (a deep copy of the whole detector copied every table, most of which a save never reads)."""
    return SimpleNamespace(**{k: getattr(table, k)[:n].copy() for k in names})


class FleetState(Columns):
    """Registry of poles and districts, their attributes, and the latest value and time of every
    pole x metric; the tables of the rule families registered with it grow with it."""

    district = Col(np.int32, -1)
    value = Col(np.float64, np.nan, N_METRICS)  # latest value per pole x metric
    value_ts = Col(np.int64, NO_TS, N_METRICS)  # its device time (ms)
    last_ts = Col(np.int64, NO_TS)  # newest device time seen from the pole
    arrival_ms = Col(np.int64, NO_TS)  # gateway clock when the pole was last heard
    rated_w = Col(np.float64, np.nan)  # per-pole attributes (inventory / birth): rated lamp power
    rated_learned = Col(np.float64, np.nan)  # full-power draw learnt from lit readings (where rated_w is unknown)
    nominal_v = Col(np.float64, np.nan)  # nominal supply voltage
    interval_ms = Col(np.float64, np.nan)  # announced (status) reporting interval
    interval_ew = Col(np.float64, np.nan)  # reporting interval learned from device times

    def __init__(self, capacity: int = 64) -> None:
        self.poles: list[str] = []
        self.pole_district: list[str] = []
        self.districts: list[str] = []
        self._row: dict[str, int] = {}
        self._district_idx: dict[str, int] = {}
        self._tables: list[Columns] = []
        self._want = max(int(capacity), 1)
        super().__init__(None)
        self._resize(self._want)
        self._tables.append(self)

    # --- registry -----------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.poles)

    @property
    def capacity(self) -> int:
        return self._cap

    def register(self, table: Columns) -> None:
        """Grow ``table`` with the registry from now on (it was allocated at the current capacity)."""
        if table._cap != self._cap:
            table._resize(self._cap)
        self._tables.append(table)

    @property
    def tables(self) -> tuple[Columns, ...]:
        return tuple(self._tables)

    def _grow(self, need: int) -> None:
        cap = stepped(self._cap, need)
        if cap == self._cap:
            return
        for t in self._tables:
            t._resize(cap)

    def district_index(self, district: str) -> int:
        d = self._district_idx.get(district)
        if d is None:
            d = self._district_idx[district] = len(self.districts)
            self.districts.append(district)
        return d

    def row(self, pole: str, district: str) -> int:
        """The row of ``pole``, registering it (and its district) on first sight."""
        r = self._row.get(pole)
        if r is None:
            r = self._row[pole] = len(self.poles)
            self._grow(r + 1)
            self.poles.append(pole)
            self.pole_district.append(district)
            self.district[r] = self.district_index(district)
        elif self.pole_district[r] != district:  # a re-zoned pole follows its newest district
            self.pole_district[r] = district
            self.district[r] = self.district_index(district)
        return r

    def find(self, pole: str) -> int | None:
        return self._row.get(pole)

    def rows_of(self, poles: Iterable[str]) -> np.ndarray:
        return np.array([self._row[p] for p in poles], np.int64)

    # --- hot path -------------------------------------------------------------------------------------
    def observe(self, batch: Batch, arrival_ms: int | None = None) -> None:
        """Record the latest value of every pole x metric in ``batch`` (a late sample never overwrites a
        newer value) and when each pole was last heard."""
        if len(batch) == 0:
            return
        rr, cc = np.nonzero(~np.isnan(batch.values))
        rows, ts = batch.rows[rr], batch.ts[rr]
        # for each (row, col) keep the entry with the newest time (last in input order on ties)
        order = np.lexsort((np.arange(len(rows)), ts, cc, rows))
        key = rows[order] * N_METRICS + cc[order]
        last = np.concatenate((key[1:] != key[:-1], [True]))
        sel = order[last]
        r_sel, c_sel, t_sel = rows[sel], cc[sel], ts[sel]
        newer = t_sel >= self.value_ts[r_sel, c_sel]
        r_sel, c_sel, t_sel, s_sel = r_sel[newer], c_sel[newer], t_sel[newer], rr[sel][newer]
        self.value[r_sel, c_sel] = batch.values[s_sel, c_sel]
        self.value_ts[r_sel, c_sel] = t_sel
        np.maximum.at(self.last_ts, batch.rows, batch.ts)
        if arrival_ms is not None:
            self.arrival_ms[batch.rows] = arrival_ms

    def latest(self, col: int, now_ms: int, window_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Latest value of metric ``col`` for every registered pole and whether it is fresh (device time
        within ``window_ms`` before ``now_ms``)."""
        n = self.n
        v = self.value[:n, col]
        t = self.value_ts[:n, col]
        fresh = (t >= now_ms - window_ms) & (t <= now_ms + window_ms) & ~np.isnan(v)
        return v, fresh
