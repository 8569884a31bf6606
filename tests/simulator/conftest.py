"""Fixtures for the simulator tests: a small seeded city and its signal model."""

from __future__ import annotations

import pytest

from simulator.city import City, CityConfig
from simulator.signals import SignalModel


@pytest.fixture(scope="module")
def city() -> City:
    return City(CityConfig(seed=3, poles=40, districts=("centre", "north", "harbour")))


@pytest.fixture(scope="module")
def model(city: City) -> SignalModel:
    return SignalModel(city, 3)
