"""Rendezvous partitioning of districts (pure)."""

from __future__ import annotations

import pytest

from contract.errors import ConfigError
from gateway.partition import districts_for, parse_partition
from gateway.settings import GatewaySettings

CITY = [f"d-{i:02d}" for i in range(60)]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_every_district_owned_by_exactly_one(n: int) -> None:
    parts = [districts_for(k, n, CITY) for k in range(n)]
    flat = [d for p in parts for d in p]
    assert sorted(flat) == sorted(CITY) and len(set(flat)) == len(flat)
    assert all(parts)  # 60 districts over <= 5 gateways: nobody idle


def test_adding_a_gateway_moves_only_its_share() -> None:
    before = {d: k for k in range(3) for d in districts_for(k, 3, CITY)}
    after = {d: k for k in range(4) for d in districts_for(k, 4, CITY)}
    moved = [d for d in CITY if before[d] != after[d]]
    assert all(after[d] == 3 for d in moved)  # only moves onto the new gateway
    assert len(moved) < len(CITY) / 2


def test_settings_partition_and_errors() -> None:
    s = GatewaySettings(partition="1/2", city_districts="north,south,east,west")
    other = GatewaySettings(partition="0/2", city_districts="north,south,east,west")
    assert set(s.district_list()) | set(other.district_list()) == {"north", "south", "east", "west"}
    for bad in ["2/2", "x", "1/0", "-1/3"]:
        with pytest.raises(ConfigError):
            parse_partition(bad)
    with pytest.raises(ConfigError):
        GatewaySettings(partition="0/2").district_list()
