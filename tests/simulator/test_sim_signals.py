from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.catalog import METRICS
from simulator.city import City, CityConfig
from simulator.signals import (
    Event,
    SignalModel,
    dimming_schedule,
    random_events,
    read_events,
    sun_elevation_deg,
    write_events,
)
from tests.simulator.sim_helpers import HOUR, MIN, T0, col


def _assert_catalog_clean(v: np.ndarray, city: City) -> None:
    assert np.array_equal(np.isnan(v), ~city.has), "NaN exactly where a pole lacks the sensor"
    for j, m in enumerate(METRICS):
        x = v[:, j][city.has[:, j]]
        assert np.all((x >= m.lo) & (x <= m.hi)), m.name
        assert np.array_equal(np.round(x, m.decimals), x), f"{m.name} not rounded to {m.decimals}"
        if m.dtype == "bool":
            assert set(np.unique(x)) <= {0.0, 1.0}


def test_values_in_catalog_ranges_and_rounded_over_days(city: City, model: SignalModel) -> None:
    for k in range(0, 3 * 24 * 60, 37):  # three days, every 37 minutes
        _assert_catalog_clean(model.sample(T0 + k * MIN), city)


def test_pure_function_of_time(city: City) -> None:
    a, b = SignalModel(city, 9), SignalModel(city, 9)
    ts = [T0 + 5 * HOUR, T0, T0 + 30 * HOUR, T0 + 5 * HOUR]
    ra = [a.sample(t) for t in ts]
    rb = [b.sample(t) for t in reversed(ts)][::-1]
    for x, y in zip(ra, rb, strict=True):
        assert np.array_equal(x, y, equal_nan=True)
    assert np.array_equal(ra[0], ra[3], equal_nan=True)
    assert not np.array_equal(a.sample(T0), SignalModel(city, 10).sample(T0), equal_nan=True)


def test_lamp_on_at_night_off_at_noon_amsterdam(city: City, model: SignalModel) -> None:
    p, d = col("lamp_power_w"), col("dimming_pct")
    for day in range(3):
        midnight = model.sample(T0 + day * 24 * HOUR)  # 00:00 UTC ~ 01:00 local: dark
        noon = model.sample(T0 + day * 24 * HOUR + 12 * HOUR)
        assert np.all(midnight[:, d] > 0)
        assert np.all(midnight[:, p] >= 0.8 * city.rated_power_w * midnight[:, d] / 100)
        assert np.all(noon[:, d] == 0) and np.all(noon[:, p] < 2.0)


@settings(max_examples=25, deadline=None)
@given(lat=st.floats(-60, 60), lon=st.floats(-179, 179), day=st.integers(0, 365 * 70))
def test_lamp_follows_the_sun_anywhere(lat: float, lon: float, day: int) -> None:
    """At local solar noon the lamp is off, at solar midnight it is on, for any latitude and date."""
    c = City(CityConfig(seed=1, poles=3, districts=1, center_lat=lat, center_lon=lon, radius_km=0.5))
    m = SignalModel(c, 1)
    base = 946_684_800_000 + day * 86_400_000
    noon = base + int((720 - 4 * lon) * MIN)
    midnight = noon + 12 * HOUR
    assert not m.lamp_on(noon).any() and m.sample(noon)[:, col("dimming_pct")].max() == 0
    assert m.lamp_on(midnight).all() and m.sample(midnight)[:, col("dimming_pct")].min() > 0


def test_sun_elevation_known_values() -> None:
    # Amsterdam, 2024-06-21 solar noon ~ 61 deg; 2024-12-21 ~ 14 deg; equator equinox ~ 90 deg
    jun = 1_718_971_200_000 - int(4 * 4.9 * MIN)
    dec = 1_734_782_400_000 - int(4 * 4.9 * MIN)
    assert abs(float(sun_elevation_deg(jun, 52.37, 4.9)) - 61.1) < 1.0
    assert abs(float(sun_elevation_deg(dec, 52.37, 4.9)) - 14.2) < 1.0
    assert float(sun_elevation_deg(1_710_936_000_000, 0.0, 0.0)) > 88.0


def test_night_dimming_profile() -> None:
    assert [dimming_schedule(h) for h in (18, 22.5, 23.5, 2, 5.5, 7)] == [100, 80, 50, 50, 80, 100]


def test_power_current_and_power_factor_are_consistent(model: SignalModel, city: City) -> None:
    v = model.sample(T0 + 20 * HOUR)  # lit, full power
    p, i, u, pf = (v[:, col(n)] for n in ("lamp_power_w", "lamp_current_a", "supply_voltage_v",
                                             "power_factor"))
    assert np.allclose(i, p / (u * pf), atol=0.02)
    assert np.all((pf > 0.9) & (pf <= 1.0))
    assert np.allclose(p, city.rated_power_w, rtol=0.05)


def test_rush_hour_and_daily_cycles(city: City, model: SignalModel) -> None:
    """Weekday NO2 and noise peak at 08:00 above 03:00; afternoon warmer than dawn; noon is bright."""
    days = range(5)  # Monday..Friday
    at = {h: np.stack([model.sample(T0 + d * 24 * HOUR + h * HOUR) for d in days]) for h in (3, 5, 8, 12, 15)}
    for name in ("no2_ugm3", "noise_db", "vibration_g"):
        assert np.nanmean(at[8][..., col(name)]) > 1.3 * np.nanmean(at[3][..., col(name)]), name
    assert np.nanmean(at[15][..., col("ambient_temp_c")]) > np.nanmean(at[5][..., col("ambient_temp_c")]) + 3
    lux = col("illuminance_lux")
    assert np.nanmean(at[12][..., lux]) > 1000 > np.nanmean(at[3][..., lux])


def test_particulates_correlate_within_a_district(city: City, model: SignalModel) -> None:
    s = np.stack([model.sample(T0 + k * HOUR)[:, col("pm25_ugm3")] for k in range(24 * 20)])
    ok = city.has[:, col("pm25_ugm3")]
    s, d = s[:, ok], city.district_index[ok]
    cc = np.corrcoef(s.T)
    same = (d[:, None] == d[None, :]) & ~np.eye(len(d), dtype=bool)
    assert cc[same].mean() > cc[d[:, None] != d[None, :]].mean() + 0.2


def test_weather_is_shared_by_a_district(city: City, model: SignalModel) -> None:
    s = np.stack([model.sample(T0 + k * 3 * HOUR)[:, col("ambient_temp_c")] for k in range(8 * 40)])
    resid = s - s.mean(axis=1, keepdims=True)  # remove the city-wide daily cycle
    d = city.district_index
    cc = np.corrcoef(resid.T)
    same = (d[:, None] == d[None, :]) & ~np.eye(len(d), dtype=bool)
    assert cc[same].mean() > cc[d[:, None] != d[None, :]].mean()


def test_events_change_only_their_district(city: City) -> None:
    start, end = T0 + 6 * HOUR, T0 + 30 * HOUR
    evs = [Event("harbour", "pollution_episode", start, end, 5.0),
           Event("north", "heat_wave", start, end, 9.0)]
    calm, busy = SignalModel(city, 4), SignalModel(city, 4, evs)
    t = T0 + 18 * HOUR
    a, b = calm.sample(t), busy.sample(t)
    harbour = np.array([p.district == "harbour" for p in city.poles])
    north = np.array([p.district == "north" for p in city.poles])
    pm = col("pm25_ugm3")
    assert np.nanmean(b[harbour, pm]) > 3 * np.nanmean(a[harbour, pm])
    assert np.nanmean(b[north, col("ambient_temp_c")]) > np.nanmean(a[north, col("ambient_temp_c")]) + 4
    centre = ~harbour & ~north
    assert np.array_equal(a[centre], b[centre], equal_nan=True)
    assert np.array_equal(calm.sample(T0), busy.sample(T0), equal_nan=True)  # before the events
    _assert_catalog_clean(b, city)


def test_random_events_deterministic_and_io(city: City, tmp_path: Path) -> None:
    evs = random_events(city, 1, T0, T0 + 30 * 24 * HOUR, rate=0.2)
    assert evs == random_events(city, 1, T0, T0 + 30 * 24 * HOUR, rate=0.2)
    assert evs != random_events(city, 2, T0, T0 + 30 * 24 * HOUR, rate=0.2)
    assert {e.kind for e in evs} == {"pollution_episode", "heat_wave", "rainstorm"}
    assert all(T0 <= e.start_ms < e.end_ms <= T0 + 30 * 24 * HOUR for e in evs)
    write_events(tmp_path / "events.csv", evs)
    assert read_events(tmp_path / "events.csv") == evs


def test_series_shape(city: City, model: SignalModel) -> None:
    s = model.series(T0, 10 * MIN, 7)
    assert s.shape == (7, len(city), len(METRICS))
    assert (~city.has).any() and city.has.any(), "the fixture city must have poles without some sensors"
    for k in range(7):  # every step is the sample at its own time, clean per the catalog
        assert np.array_equal(s[k], model.sample(T0 + k * 10 * MIN), equal_nan=True)
        _assert_catalog_clean(s[k], city)
