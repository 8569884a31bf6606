"""A seeded, synthetic city: districts, streets and street-lamp poles with their sensor kits.

Pure and deterministic: ``City(CityConfig(seed=7, poles=500))`` is the same city on every machine.
Per-pole constants the signal model needs (rated power, nominal voltage, installed tilt, kit mask)
are also exposed as numpy arrays in pole order, so signals are computed for the whole fleet at once.

Sensor kits: most poles carry every sensor in the catalog; some lack the air-quality package
(PM2.5, PM10, NO2) or the 5G small cell, a few lack both.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from contract.catalog import DEFAULT_NOMINAL_VOLTAGE_V, NAMES
from contract.ids import District, PoleId

AIR_QUALITY: tuple[str, ...] = ("pm25_ugm3", "pm10_ugm3", "no2_ugm3")
RADIO: tuple[str, ...] = ("radio_tx_power_dbm", "backhaul_up")

#: Kit variants: name -> metric names (catalog order).
KITS: Mapping[str, tuple[str, ...]] = {
    "full": NAMES,
    "no_air": tuple(n for n in NAMES if n not in AIR_QUALITY),
    "no_radio": tuple(n for n in NAMES if n not in RADIO),
    "basic": tuple(n for n in NAMES if n not in AIR_QUALITY and n not in RADIO),
}
#: Share of poles per kit variant (the rest of the fleet has the full kit).
KIT_SHARES: Mapping[str, float] = {"no_air": 0.12, "no_radio": 0.08, "basic": 0.05}

DISTRICT_NAMES: tuple[str, ...] = (
    "centre", "north", "south", "east", "west", "harbour", "old-town", "university",
    "riverside", "airport", "market", "hill",
)
STREET_NAMES: tuple[str, ...] = (
    "Main Street", "Station Road", "Church Lane", "Mill Road", "Park Avenue", "High Street",
    "Canal Walk", "School Lane", "Bridge Street", "Market Square", "Victoria Road", "Garden Row",
    "Harbour Quay", "Elm Grove", "Kings Way", "Orchard Close",
)
#: LED luminaire ratings sold for street lighting, with how common each is.
RATED_POWERS_W: tuple[float, ...] = (40.0, 60.0, 90.0, 120.0, 150.0, 200.0)
RATED_WEIGHTS: tuple[float, ...] = (0.10, 0.20, 0.25, 0.25, 0.12, 0.08)


@dataclass(frozen=True, slots=True)
class CityConfig:
    """What the city looks like. ``districts`` is a count (names are picked) or explicit names."""

    seed: int = 0
    poles: int = 100
    districts: int | tuple[str, ...] = 4
    center_lat: float = 52.37  # Amsterdam-like latitude by default
    center_lon: float = 4.90
    radius_km: float = 4.0
    streets_per_district: int = 6
    utc_offset_h: float | None = None  # local clock for rush hours and dimming; None: round(lon / 15)
    kit_shares: Mapping[str, float] = field(default_factory=lambda: dict(KIT_SHARES))

    def __post_init__(self) -> None:
        if self.poles < 1 or self.poles > 999_999:
            raise ValueError(f"poles must be in 1..999999, got {self.poles}")
        if not -66.0 <= self.center_lat <= 66.0:
            raise ValueError("center_lat must be within +/-66 degrees (no polar day/night)")
        if not -180.0 <= self.center_lon <= 180.0:
            raise ValueError("center_lon must be within +/-180 degrees")
        if isinstance(self.districts, int):
            if self.districts < 1 or self.districts > self.poles:
                raise ValueError("districts must be between 1 and the number of poles")
        else:
            if not self.districts:
                raise ValueError("at least one district is needed")
            for d in self.districts:
                District(d)
            if len(set(self.districts)) != len(self.districts):
                raise ValueError("duplicate district name")
        unknown = set(self.kit_shares) - set(KITS)
        if unknown:
            raise ValueError(f"unknown kit variants {sorted(unknown)}")
        if sum(self.kit_shares.values()) > 1.0 or min(self.kit_shares.values(), default=0.0) < 0:
            raise ValueError("kit shares must be >= 0 and sum to at most 1")

    @property
    def district_names(self) -> tuple[str, ...]:
        if not isinstance(self.districts, int):
            return tuple(self.districts)
        n = self.districts
        names = DISTRICT_NAMES[:n]
        return names + tuple(f"d-{i:02d}" for i in range(len(names), n))

    @property
    def utc_offset(self) -> float:
        return float(round(self.center_lon / 15.0)) if self.utc_offset_h is None else self.utc_offset_h


@dataclass(frozen=True, slots=True)
class PoleSpec:
    index: int
    pole_id: str
    district: str
    street: str
    lat: float
    lon: float
    rated_power_w: float
    nominal_voltage_v: float
    tilt_baseline_deg: float
    kit: str
    sensors: tuple[str, ...]  # metric names, catalog order

    def has(self, metric: str) -> bool:
        return metric in self.sensors


def pole_id(i: int) -> str:
    return f"p-{i:06d}"


class City:
    """The poles of a city, built from a :class:`CityConfig` with a seeded generator."""

    def __init__(self, config: CityConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 0xC17])
        names = config.district_names
        self.districts: tuple[str, ...] = names
        n, nd = config.poles, len(names)

        # district centres on a ring around the city centre (the first one is the centre itself)
        km_lat = 1.0 / 110.574
        km_lon = 1.0 / (111.320 * math.cos(math.radians(config.center_lat)))
        ang = rng.uniform(0, 2 * math.pi) + np.arange(nd) * 2 * math.pi / max(nd - 1, 1)
        ring = np.where(np.arange(nd) == 0, 0.0, config.radius_km * 0.6)
        d_lat = config.center_lat + ring * np.sin(ang) * km_lat
        d_lon = config.center_lon + ring * np.cos(ang) * km_lon

        # every district gets at least one pole; the rest are spread with uneven weights
        weights = rng.uniform(0.6, 1.4, nd)
        extra = rng.multinomial(n - nd, weights / weights.sum())
        district_idx = np.repeat(np.arange(nd), extra + 1)
        spread = config.radius_km * 0.35
        lat = d_lat[district_idx] + rng.normal(0, spread, n) * km_lat
        lon = d_lon[district_idx] + rng.normal(0, spread, n) * km_lon
        street_no = rng.integers(0, config.streets_per_district, n)
        street_off = rng.integers(0, len(STREET_NAMES), nd)
        rated = rng.choice(np.array(RATED_POWERS_W), size=n, p=np.array(RATED_WEIGHTS))
        nominal = np.full(n, DEFAULT_NOMINAL_VOLTAGE_V)
        tilt = np.round(rng.uniform(0.05, 1.2, n), 2)
        kit_names = ["full", *config.kit_shares]
        shares = np.array([1.0 - sum(config.kit_shares.values()), *config.kit_shares.values()])
        kits = rng.choice(len(kit_names), size=n, p=shares / shares.sum())

        self.poles: list[PoleSpec] = []
        for i in range(n):
            d = int(district_idx[i])
            street = STREET_NAMES[(int(street_off[d]) + int(street_no[i])) % len(STREET_NAMES)]
            kit = kit_names[int(kits[i])]
            self.poles.append(PoleSpec(
                index=i, pole_id=str(PoleId(pole_id(i))), district=names[d], street=street,
                lat=round(float(lat[i]), 6), lon=round(float(lon[i]), 6),
                rated_power_w=float(rated[i]), nominal_voltage_v=float(nominal[i]),
                tilt_baseline_deg=float(tilt[i]), kit=kit, sensors=KITS[kit],
            ))
        self.by_id: Mapping[str, PoleSpec] = {p.pole_id: p for p in self.poles}

        # fleet arrays, pole order
        self.district_index = district_idx.astype(np.intp)
        self.lat = np.array([p.lat for p in self.poles])
        self.lon = np.array([p.lon for p in self.poles])
        self.rated_power_w = rated.astype(float)
        self.nominal_voltage_v = nominal
        self.tilt_baseline_deg = tilt
        col = {name: j for j, name in enumerate(NAMES)}
        self.has = np.zeros((n, len(NAMES)), dtype=bool)  # (pole, metric) the pole carries the sensor
        for p in self.poles:
            self.has[p.index, [col[s] for s in p.sensors]] = True

    def __len__(self) -> int:
        return len(self.poles)

    def pole(self, pole_id: str) -> PoleSpec:
        try:
            return self.by_id[pole_id]
        except KeyError:
            raise KeyError(f"no pole {pole_id!r} in this city") from None

    def poles_in(self, district: str) -> list[PoleSpec]:
        return [p for p in self.poles if p.district == district]


def boot_id(seed: int, pole: str, boot_no: int = 0) -> str:
    """A pole's boot id: 16 hex digits derived from the seed, the pole and its boot count."""
    return hashlib.blake2b(f"{seed}:{pole}:{boot_no}".encode(), digest_size=8).hexdigest()
