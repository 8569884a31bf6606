"""Signals from the metric catalog, for the whole fleet at once (numpy), as a pure function of time.

``SignalModel(city, seed).sample(t_ms)`` returns an array of shape (n_poles, n_metrics), columns in
catalog order, NaN where a pole lacks the sensor. The same (city, seed, events, faults, t_ms) always
gives the same array, whatever was sampled before: weather is value noise on a fixed time grid keyed
by the seed, sensor noise comes from a generator keyed by (seed, t_ms).

What the signals model, starting from each metric's catalog hints (base, noise, amplitude):

* the lamp is lit from dusk to dawn (sun elevation below -0.833 deg, computed for each pole's latitude,
  longitude and date), dimmed at night (100 % until 22:00, 80 % to 23:00, 50 % to 05:00, 80 % to
  06:00, local clock); power follows dimming and the rated power, current is P / (V * PF), the power
  factor sags a little when dimmed;
* ambient temperature and humidity follow season and a daily cycle plus weather shared by a district
  (a slow, mean-reverting random walk: smooth value noise on 4-hour and 2-day grids);
* NO2, noise and vibration peak at the morning and evening rush hours (weaker at weekends); PM2.5
  and PM10 share a district factor (so they are correlated within a district);
* illuminance follows the sun (daylight, twilight) and the cloud cover, plus the lamp's own spill;
* every value gets the catalog's sensor noise, is kept inside the catalog's valid range and is
  rounded to the catalog's ``decimals``.

District-wide real events (a pollution episode, a heat wave, a rainstorm) are :class:`Event`\\ s: they
change the signals but are not faults, so they never appear in the labels.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from contract.catalog import BY_NAME, INDEX, METRICS, NAMES
from contract.ids import District
from simulator.city import City
from simulator.faults import DEAD_VALUE, Fault, FaultContext, FaultSet, apply_signal_faults
from simulator.sun import sun_elevation_deg

LAMP_ON_ELEVATION_DEG = -0.833  # the sun's upper limb at the horizon: sunset / sunrise
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

_C = INDEX
_DEC = np.array([float(10 ** m.decimals) for m in METRICS])
_LO = np.array([m.lo for m in METRICS])
_HI = np.array([m.hi for m in METRICS])
_DEAD = np.array([DEAD_VALUE[m.name] for m in METRICS])


def _sig(name: str) -> tuple[float, float, float]:
    s = BY_NAME[name].signal
    return s.base, s.noise, s.amplitude


# --- the sun ------------------------------------------------------------------------------------
def lamp_should_be_on(t_ms: int, lat: float | np.ndarray, lon: float | np.ndarray) -> np.ndarray:
    return np.asarray(sun_elevation_deg(t_ms, lat, lon) < LAMP_ON_ELEVATION_DEG)


def dimming_schedule(local_hour: float) -> float:
    """Commanded level (%) while lit, by local clock hour."""
    h = local_hour % 24.0
    if 22.0 <= h < 23.0 or 5.0 <= h < 6.0:
        return 80.0
    if h >= 23.0 or h < 5.0:
        return 50.0
    return 100.0


# --- district events (real, not faults) ---------------------------------------------------------
EVENT_KINDS: dict[str, tuple[float, float]] = {  # kind -> magnitude range random_events draws
    "pollution_episode": (3.0, 6.0),  # particulate factor; NO2 rises by half as much
    "heat_wave": (6.0, 10.0),  # degC added to the afternoon temperature
    "rainstorm": (0.6, 1.0),  # how wet: humidity up, daylight down, leakage up a little
}
EVENT_FIELDS = ("district", "kind", "start_ms", "end_ms", "magnitude")


@dataclass(frozen=True, slots=True)
class Event:
    district: str
    kind: str
    start_ms: int
    end_ms: int
    magnitude: float

    def __post_init__(self) -> None:
        District(self.district)
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; known: {', '.join(EVENT_KINDS)}")
        if not self.start_ms < self.end_ms:
            raise ValueError("event start_ms must be before end_ms")
        if not math.isfinite(self.magnitude) or self.magnitude < 0:
            raise ValueError("event magnitude must be finite and >= 0")

    def envelope(self, t_ms: int) -> float:
        """0 outside, ramping to 1 over the first and last hour (or tenth of the event)."""
        if not self.start_ms <= t_ms < self.end_ms:
            return 0.0
        ramp = min(HOUR_MS, (self.end_ms - self.start_ms) / 10.0)
        return min(1.0, (t_ms - self.start_ms) / ramp, (self.end_ms - t_ms) / ramp)


def random_events(city: City, seed: int, start_ms: int, end_ms: int,
                  rate: float = 0.05) -> list[Event]:
    """``rate`` events per district-day on average, each 4 h .. 3 days, sorted by start."""
    rng = np.random.default_rng([seed, 0xE7E7])
    span = end_ms - start_ms
    if span <= 0:
        raise ValueError("end_ms must be after start_ms")
    out: list[Event] = []
    kinds = tuple(EVENT_KINDS)
    for _ in range(int(rng.poisson(rate * len(city.districts) * span / DAY_MS))):
        kind = kinds[int(rng.integers(len(kinds)))]
        d = city.districts[int(rng.integers(len(city.districts)))]
        dur = min(int(rng.integers(4 * HOUR_MS, 3 * DAY_MS)), span)
        s = start_ms + int(rng.integers(0, span - dur + 1))
        lo, hi = EVENT_KINDS[kind]
        out.append(Event(d, kind, s, s + dur, round(float(rng.uniform(lo, hi)), 2)))
    out.sort(key=lambda e: (e.start_ms, e.district, e.kind))
    return out


def events_csv(events: Iterable[Event]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EVENT_FIELDS)
    for e in sorted(events, key=lambda e: (e.start_ms, e.district, e.kind)):
        w.writerow((e.district, e.kind, e.start_ms, e.end_ms, repr(e.magnitude)))
    return buf.getvalue()


def write_events(path: str | Path, events: Iterable[Event]) -> None:
    Path(path).write_text(events_csv(events), encoding="utf-8", newline="")


def read_events(path: str | Path) -> list[Event]:
    rows = list(csv.reader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
    if not rows or tuple(rows[0]) != EVENT_FIELDS:
        raise ValueError(f"events CSV must start with the header {','.join(EVENT_FIELDS)}")
    return [Event(d, k, int(s), int(e), float(m)) for d, k, s, e, m in (r for r in rows[1:] if r)]


# --- the model ----------------------------------------------------------------------------------
_WEATHER_CHANNELS = 5  # temperature, wetness, particulates, cloud, supply voltage
_W_TEMP, _W_WET, _W_PM, _W_CLOUD, _W_VOLT = range(_WEATHER_CHANNELS)


class _ValueNoise:
    """Smooth per-district noise on a fixed time grid: knot k is keyed by (seed, salt, k)."""

    def __init__(self, seed: int, salt: int, n_districts: int, knot_ms: int) -> None:
        self.seed, self.salt, self.nd, self.knot_ms = seed, salt, n_districts, knot_ms
        self._cache: dict[int, np.ndarray] = {}

    def _knot(self, k: int) -> np.ndarray:
        got = self._cache.get(k)
        if got is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            key = [self.seed, self.salt, k + 2**40]  # keep the key words non-negative
            got = np.random.default_rng(key).standard_normal((_WEATHER_CHANNELS, self.nd))
            self._cache[k] = got
        return got

    def __call__(self, t_ms: int) -> np.ndarray:
        k, r = divmod(t_ms, self.knot_ms)
        w = 0.5 - 0.5 * math.cos(math.pi * r / self.knot_ms)  # cosine interpolation
        return (1.0 - w) * self._knot(k) + w * self._knot(k + 1)


def _bump(h: np.ndarray | float, centre: float, width: float) -> np.ndarray | float:
    d = (np.asarray(h) - centre + 12.0) % 24.0 - 12.0  # circular distance in hours
    return np.exp(-0.5 * (d / width) ** 2)


class SignalModel:
    """Clean signals of a city (plus events), and the same with faults applied."""

    def __init__(self, city: City, seed: int, events: Sequence[Event] = ()) -> None:
        self.city = city
        self.seed = seed
        self.events: tuple[Event, ...] = tuple(events)
        for e in self.events:
            if e.district not in city.districts:
                raise ValueError(f"event in unknown district {e.district!r}")
        n, nd = len(city), len(city.districts)
        rng = np.random.default_rng([seed, 0x516])
        # per-pole constants: microclimate, local traffic, shade, cable insulation, radio setup
        self._temp_off = rng.normal(0.0, 0.4, n)
        self._noise_off = rng.normal(0.0, 3.0, n)
        self._traffic = rng.lognormal(0.0, 0.25, n)
        self._pm_local = rng.lognormal(0.0, 0.12, n)
        self._shade = rng.uniform(0.55, 1.0, n)
        self._leak_base = _sig("leakage_current_ma")[0] * rng.lognormal(0.0, 0.25, n)
        self._radio_off = rng.normal(0.0, 1.5, n)
        self._fast = _ValueNoise(seed, 0xF4, nd, 4 * HOUR_MS)
        self._slow = _ValueNoise(seed, 0x51, nd, 2 * DAY_MS)
        self._clean_cache: dict[int, np.ndarray] = {}
        self._nan_mask = ~city.has
        self._dist = city.district_index
        self._utc_off_ms = int(city.config.utc_offset * HOUR_MS)
        self._dim_cache: dict[int, float] = {}
        self._district_of = {d: i for i, d in enumerate(city.districts)}

    # time helpers
    def local_hour(self, t_ms: int) -> float:
        return ((t_ms + self._utc_off_ms) % DAY_MS) / HOUR_MS

    def is_weekend(self, t_ms: int) -> bool:
        return ((t_ms + self._utc_off_ms) // DAY_MS + 3) % 7 >= 5  # 1970-01-01 was a Thursday

    def sun_elevation(self, t_ms: int) -> np.ndarray:
        return sun_elevation_deg(t_ms, self.city.lat, self.city.lon)

    def lamp_on(self, t_ms: int) -> np.ndarray:
        return self.sun_elevation(t_ms) < LAMP_ON_ELEVATION_DEG

    def _event_effects(self, t_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nd = len(self.city.districts)
        pm, heat, wet = np.ones(nd), np.zeros(nd), np.zeros(nd)
        for e in self.events:
            env = e.envelope(t_ms)
            if env <= 0.0:
                continue
            d = self._district_of[e.district]
            if e.kind == "pollution_episode":
                pm[d] *= 1.0 + (e.magnitude - 1.0) * env
            elif e.kind == "heat_wave":
                heat[d] += e.magnitude * env
            else:
                wet[d] = max(wet[d], e.magnitude * env)
        return pm, heat, wet

    def raw(self, t_ms: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """Unrounded clean values (every column filled), the lamp-on mask and the instant's rng."""
        city, n = self.city, len(self.city)
        rng = np.random.default_rng([self.seed, 0x5EED, int(t_ms) + 2**40])
        z = rng.standard_normal((n, len(NAMES)))
        v = np.empty((n, len(NAMES)))
        h = self.local_hour(t_ms)
        weekday = 0.45 if self.is_weekend(t_ms) else 1.0
        elev = self.sun_elevation(t_ms)
        on = elev < LAMP_ON_ELEVATION_DEG
        w = (self._fast(t_ms) * 0.6 + self._slow(t_ms))[:, self._dist]  # (channels, n)
        pm_evt, heat_evt, wet_evt = (a[self._dist] for a in self._event_effects(t_ms))
        doy = datetime.fromtimestamp(t_ms / 1000.0, tz=UTC).timetuple().tm_yday
        season = -math.cos(2 * math.pi * (doy - 20) / 365.25) * (1.0 if city.config.center_lat >= 0 else -1.0)

        # lamp and driver
        dim = np.where(on, dimming_schedule(h), 0.0)
        rated = city.rated_power_w
        p_base, p_noise, _ = _sig("lamp_power_w")
        power = np.where(on, rated * dim / 100.0 * (1.0 + 0.004 * z[:, _C["lamp_power_w"]])
                         + p_noise * z[:, _C["lamp_power_w"]] * (rated / p_base) * 0.5,
                         0.35 + 0.05 * np.abs(z[:, _C["lamp_power_w"]]))
        pf_base, pf_noise, _ = _sig("power_factor")
        pf = np.where(on, pf_base - 0.08 * (1.0 - dim / 100.0), 0.35) + pf_noise * z[:, _C["power_factor"]]
        v_noise = _sig("supply_voltage_v")[1]
        load = 0.006 * math.sin(2 * math.pi * (h - 4.0) / 24.0)  # evening peak load pulls V down
        volt = (city.nominal_voltage_v * (1.0 - load + 0.006 * w[_W_VOLT])
                + v_noise * z[:, _C["supply_voltage_v"]])
        i_noise = _sig("lamp_current_a")[1]
        current = power / (volt * np.clip(pf, 0.1, 1.0)) + i_noise * 0.2 * z[:, _C["lamp_current_a"]]
        v[:, _C["lamp_power_w"]] = power
        v[:, _C["supply_voltage_v"]] = volt
        v[:, _C["lamp_current_a"]] = np.abs(current)
        v[:, _C["power_factor"]] = pf
        v[:, _C["dimming_pct"]] = dim

        # environment
        t_base, t_noise, t_amp = _sig("ambient_temp_c")
        diurnal = math.cos(2 * math.pi * (h - 15.0) / 24.0)
        ambient = (t_base + 8.0 * season + t_amp * diurnal + 2.5 * w[_W_TEMP] + self._temp_off
                   + heat_evt * (0.6 + 0.4 * diurnal) + t_noise * z[:, _C["ambient_temp_c"]])
        wetness = np.clip(0.5 + 0.35 * w[_W_WET], 0.0, 1.0)
        wetness = np.maximum(wetness, wet_evt)
        h_base, h_noise, h_amp = _sig("humidity_pct")
        humid = (h_base + h_amp * diurnal + 30.0 * (wetness - 0.5) - 1.2 * heat_evt
                 + h_noise * z[:, _C["humidity_pct"]])
        v[:, _C["ambient_temp_c"]] = ambient
        v[:, _C["humidity_pct"]] = np.clip(humid, 8.0, 100.0)

        sin_e = np.sin(np.radians(elev))
        cloud = np.clip(0.55 + 0.3 * w[_W_CLOUD] + 0.4 * wet_evt, 0.0, 0.9)
        sky = np.where(elev > 0, 110_000.0 * np.clip(sin_e, 0.0, 1.0),
                       np.where(elev > -6.0, 400.0 * 10.0 ** (elev / 2.0), 0.0))
        spill = np.where(on, 2.0 + 3.0 * dim / 100.0, 0.0)
        lux_noise = _sig("illuminance_lux")[1]
        lux = sky * (1.0 - cloud) * self._shade * (1.0 + 0.02 * z[:, _C["illuminance_lux"]]) + spill
        v[:, _C["illuminance_lux"]] = lux + lux_noise * 0.3 * np.abs(z[:, _C["illuminance_lux"]])

        c_noise = _sig("cabinet_temp_c")[1]
        v[:, _C["cabinet_temp_c"]] = (ambient + 5.0 + 4.0 * dim / 100.0
                                      + 9.0 * np.clip(sin_e, 0.0, 1.0) * (1.0 - cloud)
                                      + c_noise * z[:, _C["cabinet_temp_c"]])

        rush = weekday * (_bump(h, 8.0, 1.2) + 0.9 * _bump(h, 17.5, 1.5)) + 0.25 * _bump(h, 13.5, 4.0)
        traffic = rush * self._traffic
        pm_factor = np.exp(0.3 * w[_W_PM]) * pm_evt * self._pm_local * (1.0 - 0.35 * wet_evt)
        b25, n25, a25 = _sig("pm25_ugm3")
        pm25 = (b25 + a25 * traffic) * pm_factor + n25 * z[:, _C["pm25_ugm3"]]
        b10, n10, a10 = _sig("pm10_ugm3")
        pm10 = (b10 + a10 * traffic) * pm_factor + n10 * z[:, _C["pm10_ugm3"]]
        v[:, _C["pm25_ugm3"]] = np.maximum(pm25, 0.5)
        v[:, _C["pm10_ugm3"]] = np.maximum(pm10, v[:, _C["pm25_ugm3"]] * 1.1)
        bno2, nno2, ano2 = _sig("no2_ugm3")
        no2_evt = 1.0 + (pm_evt - 1.0) * 0.5
        v[:, _C["no2_ugm3"]] = np.maximum((bno2 + ano2 * traffic) * np.exp(0.2 * w[_W_PM]) * no2_evt
                                          + nno2 * z[:, _C["no2_ugm3"]], 0.5)
        bdb, ndb, adb = _sig("noise_db")
        v[:, _C["noise_db"]] = (bdb + adb * traffic - 9.0 * _bump(h, 3.0, 2.0) + self._noise_off
                                + ndb * z[:, _C["noise_db"]])

        # safety and structure
        bv, nv, _ = _sig("vibration_g")
        v[:, _C["vibration_g"]] = bv + 0.03 * traffic + nv * np.abs(z[:, _C["vibration_g"]])
        nl = _sig("leakage_current_ma")[1]
        v[:, _C["leakage_current_ma"]] = np.maximum(self._leak_base * (1.0 + 0.4 * wetness ** 3)
                                                    + nl * z[:, _C["leakage_current_ma"]], 0.05)
        nt = _sig("tilt_deg")[1]
        v[:, _C["tilt_deg"]] = city.tilt_baseline_deg + nt * z[:, _C["tilt_deg"]]
        nw = _sig("water_level_cm")[1]
        v[:, _C["water_level_cm"]] = _sig("water_level_cm")[0] + nw * np.abs(z[:, _C["water_level_cm"]])
        v[:, _C["smoke"]] = _sig("smoke")[0]
        v[:, _C["door_open"]] = _sig("door_open")[0]

        # 5G small cell
        br, nr, _ = _sig("radio_tx_power_dbm")
        v[:, _C["radio_tx_power_dbm"]] = (br + 1.5 * np.minimum(rush, 1.2) + self._radio_off
                                          + nr * z[:, _C["radio_tx_power_dbm"]])
        v[:, _C["backhaul_up"]] = _sig("backhaul_up")[0]
        return v, on, rng

    @staticmethod
    def finish(v: np.ndarray) -> np.ndarray:
        """Clip into the catalog's valid ranges and round to its decimals (in place)."""
        np.clip(v, _LO, _HI, out=v)
        v *= _DEC
        np.rint(v, out=v)
        v /= _DEC
        return v

    def clean(self, t_ms: int) -> np.ndarray:
        """Clean rounded values at ``t_ms`` (every column filled; cached for stuck sensors)."""
        got = self._clean_cache.get(t_ms)
        if got is None:
            if len(self._clean_cache) > 256:
                self._clean_cache.clear()
            got = self.finish(self.raw(t_ms)[0])
            got.flags.writeable = False
            self._clean_cache[t_ms] = got
        return got

    def sample(self, t_ms: int, faults: FaultSet | Sequence[Fault] = ()) -> np.ndarray:
        """Values at ``t_ms`` with ``faults`` applied: (n_poles, n_metrics), NaN where no sensor."""
        v, on, rng = self.raw(t_ms)
        fs = faults if isinstance(faults, FaultSet) else (FaultSet(faults, self.city) if faults else None)
        if fs is not None and fs.signal:
            ctx = FaultContext(t_ms, rng, on, self.clean, self.city.tilt_baseline_deg)
            apply_signal_faults(v, fs, ctx)
        dead = np.isnan(v)  # a sensor_dropout: the driver's error value, outside the valid range
        self.finish(v)
        if dead.any():
            v[dead] = np.broadcast_to(_DEAD, v.shape)[dead]
        v[self._nan_mask] = np.nan
        return v

    def series(self, t0_ms: int, step_ms: int, n: int,
               faults: FaultSet | Sequence[Fault] = ()) -> np.ndarray:
        """``n`` samples from ``t0_ms`` every ``step_ms``: shape (n, n_poles, n_metrics)."""
        fs = faults if isinstance(faults, FaultSet) else FaultSet(faults, self.city)
        return np.stack([self.sample(t0_ms + k * step_ms, fs) for k in range(n)])
