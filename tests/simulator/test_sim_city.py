from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.catalog import NAMES
from contract.ids import DISTRICT_RE, POLE_RE
from simulator.city import AIR_QUALITY, KITS, RADIO, City, CityConfig, boot_id


def test_poles_are_valid_and_near_the_centre() -> None:
    cfg = CityConfig(seed=1, poles=300, districts=5, center_lat=48.85, center_lon=2.35)
    c = City(cfg)
    assert len(c) == 300 and len(c.districts) == 5
    assert [p.pole_id for p in c.poles] == [f"p-{i:06d}" for i in range(300)]
    for p in c.poles:
        assert POLE_RE.fullmatch(p.pole_id) and DISTRICT_RE.fullmatch(p.district)
        assert p.district in c.districts and p.street
        km = math.hypot((p.lat - 48.85) * 110.6, (p.lon - 2.35) * 111.3 * math.cos(math.radians(48.85)))
        assert km < 4 * cfg.radius_km
        assert p.rated_power_w > 0 and p.nominal_voltage_v == 230.0 and 0 < p.tilt_baseline_deg < 1.5
        assert p.sensors == KITS[p.kit]
    assert {p.district for p in c.poles} == set(c.districts)  # every district has poles


def test_kit_variants_mostly_full() -> None:
    c = City(CityConfig(seed=2, poles=2000))
    kits = [p.kit for p in c.poles]
    assert kits.count("full") > 0.6 * len(kits)
    assert {"no_air", "no_radio", "basic"} <= set(kits)
    for p in c.poles:
        assert (not any(m in p.sensors for m in AIR_QUALITY)) == (p.kit in ("no_air", "basic"))
        assert (not any(m in p.sensors for m in RADIO)) == (p.kit in ("no_radio", "basic"))
        assert list(p.sensors) == [n for n in NAMES if n in p.sensors]  # catalog order
        assert c.has[p.index].sum() == len(p.sensors)


def test_same_seed_same_city_other_seed_differs() -> None:
    a, b = City(CityConfig(seed=5, poles=50)), City(CityConfig(seed=5, poles=50))
    c = City(CityConfig(seed=6, poles=50))
    assert a.poles == b.poles
    assert a.poles != c.poles


def test_district_names_explicit_and_generated() -> None:
    assert City(CityConfig(poles=20, districts=("a-1", "b"))).districts == ("a-1", "b")
    many = CityConfig(poles=40, districts=15).district_names
    assert len(set(many)) == 15 and all(DISTRICT_RE.fullmatch(d) for d in many)


@pytest.mark.parametrize("kw", [
    {"poles": 0}, {"districts": ("Bad Name",)}, {"districts": ("a", "a")}, {"districts": 0},
    {"center_lat": 80.0}, {"kit_shares": {"nope": 0.1}}, {"kit_shares": {"basic": 1.5}},
])
def test_bad_config_raises(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CityConfig(**kw)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), poles=st.integers(1, 60), districts=st.integers(1, 12))
def test_any_seed_builds_a_valid_city(seed: int, poles: int, districts: int) -> None:
    c = City(CityConfig(seed=seed, poles=max(poles, districts), districts=districts))
    assert all(POLE_RE.fullmatch(p.pole_id) and DISTRICT_RE.fullmatch(p.district) for p in c.poles)


def test_boot_id_shape_and_determinism() -> None:
    b = boot_id(1, "p-000001", 0)
    assert b == boot_id(1, "p-000001", 0) and len(b) == 16
    assert len({b, boot_id(2, "p-000001", 0), boot_id(1, "p-000002", 0), boot_id(1, "p-000001", 1)}) == 4
