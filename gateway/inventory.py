"""The city's inventory: which poles exist, where, and what they were installed with (pure).

A CSV file, one pole per row, a header first::

    pole,district,lat,lon,rated_power_w,nominal_voltage_v,tilt_baseline_deg,sensors
    p-000000,north,52.5200,13.4050,120,230,0.4,leakage_current_ma;tilt_deg;water_level_cm

``sensors`` is a ``;``-separated list of catalog metric names (empty: not recorded). Empty cells of
the numeric columns mean "not recorded" (the rules then fall back to learning / their defaults).

The inventory, not the device, is the truth: the gateway refuses telemetry and status a pole sends
under a district other than its own (reason ``wrong_district``), judges the safety rules against the
inventory's attributes, and a birth message that disagrees with them raises an ``inventory_mismatch``
notice instead of moving a baseline. A pole absent from the inventory is refused (``unregistered``,
policy ``refuse``) or accepted and flagged with an ``unregistered`` notice (policy ``flag``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contract.catalog import BY_NAME
from contract.errors import ConfigError
from contract.ids import District, PoleId

Policy = Literal["refuse", "flag"]
COLUMNS = ("pole", "district", "lat", "lon", "rated_power_w", "nominal_voltage_v", "tilt_baseline_deg", "sensors")
ATTRS = ("rated_power_w", "nominal_voltage_v", "tilt_baseline_deg")
#: a declared attribute this close to the inventory's agrees with it (relative, and absolute for tilt)
REL_TOL, ABS_TOL = 0.01, 0.05


@dataclass(frozen=True, slots=True)
class PoleRecord:
    pole: str
    district: str
    lat: float | None = None
    lon: float | None = None
    rated_power_w: float | None = None
    nominal_voltage_v: float | None = None
    tilt_baseline_deg: float | None = None
    sensors: tuple[str, ...] = ()

    def attrs(self) -> dict[str, float]:
        return {k: v for k in ATTRS if (v := getattr(self, k)) is not None}


def _num(text: str, what: str, lo: float, hi: float, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {what} {text[:40]!r} is not a number") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ConfigError(f"{where}: {what} {v:g} outside {lo:g}..{hi:g}")
    return v


class Inventory:
    """Pole id -> :class:`PoleRecord`, plus the policy for poles it does not list."""

    def __init__(self, records: list[PoleRecord], unknown: Policy = "refuse") -> None:
        if unknown not in ("refuse", "flag"):
            raise ConfigError(f"inventory policy must be refuse or flag, not {unknown!r}")
        self.unknown: Policy = unknown
        self._by_pole: dict[str, PoleRecord] = {}
        for r in records:
            if r.pole in self._by_pole:
                raise ConfigError(f"inventory lists pole {r.pole} twice")
            self._by_pole[r.pole] = r

    def __len__(self) -> int:
        return len(self._by_pole)

    def __contains__(self, pole: object) -> bool:
        return pole in self._by_pole

    def get(self, pole: str) -> PoleRecord | None:
        return self._by_pole.get(pole)

    def records(self) -> list[PoleRecord]:
        return list(self._by_pole.values())

    def check(self, pole: str, district: str) -> tuple[str, str] | None:
        """None if a message from ``pole`` under ``district`` is acceptable, else (reason, detail)."""
        r = self._by_pole.get(pole)
        if r is None:
            if self.unknown == "refuse":
                return "unregistered", f"pole {pole} is not in the city inventory"
            return None
        if r.district != district:
            return "wrong_district", f"pole {pole} belongs to district {r.district}, not {district}"
        return None

    def mismatches(self, pole: str, declared: dict[str, float]) -> list[str]:
        """Attributes a device declared that disagree with its inventory record, as ``name a != b``."""
        r = self._by_pole.get(pole)
        if r is None:
            return []
        out = []
        for k, v in sorted(declared.items()):
            want = getattr(r, k, None)
            if want is None or v is None:
                continue
            if abs(v - want) > max(ABS_TOL, REL_TOL * abs(want)):
                out.append(f"{k} {v:g} != {want:g}")
        return out


def parse(text: str, *, unknown: Policy = "refuse", source: str = "inventory") -> Inventory:
    """Parse inventory CSV text; raises ConfigError naming the line of the first problem."""
    rows = csv.DictReader(io.StringIO(text))
    if rows.fieldnames is None or [f.strip() for f in rows.fieldnames][:2] != ["pole", "district"]:
        raise ConfigError(f"{source}: the header must start with pole,district (columns: {','.join(COLUMNS)})")
    extra = set(f.strip() for f in rows.fieldnames) - set(COLUMNS)
    if extra:
        raise ConfigError(f"{source}: unknown column(s) {', '.join(sorted(extra))}")
    out = []
    for n, row in enumerate(rows, start=2):
        where = f"{source} line {n}"
        cell = {k.strip(): (v or "") for k, v in row.items() if k is not None}
        try:
            pole, district = str(PoleId(cell["pole"].strip())), str(District(cell["district"].strip()))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        sensors = tuple(s.strip() for s in cell.get("sensors", "").split(";") if s.strip())
        bad = [s for s in sensors if s not in BY_NAME]
        if bad:
            raise ConfigError(f"{where}: unknown sensor(s) {', '.join(bad)}")
        out.append(PoleRecord(
            pole, district, _num(cell.get("lat", ""), "lat", -90, 90, where),
            _num(cell.get("lon", ""), "lon", -180, 180, where),
            _num(cell.get("rated_power_w", ""), "rated_power_w", 1e-9, 5000, where),
            _num(cell.get("nominal_voltage_v", ""), "nominal_voltage_v", 1e-9, 1000, where),
            _num(cell.get("tilt_baseline_deg", ""), "tilt_baseline_deg", 0, 90, where), sensors))
    return Inventory(out, unknown)


def load(path: str | Path, *, unknown: Policy = "refuse") -> Inventory:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read inventory {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"inventory {path} is not UTF-8 text") from exc
    return parse(text, unknown=unknown, source=str(path))


def to_csv(records: list[PoleRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)

    def f(v: float | None) -> str:
        return "" if v is None else f"{v:g}"

    for r in records:
        w.writerow([r.pole, r.district, f(r.lat), f(r.lon), f(r.rated_power_w), f(r.nominal_voltage_v),
                    f(r.tilt_baseline_deg), ";".join(r.sensors)])
    return buf.getvalue()
