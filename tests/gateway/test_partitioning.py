"""Two gateways share a city by district sets: every pole is owned by exactly one, stored once."""

from __future__ import annotations

from pathlib import Path

from gateway.service import Gateway, GatewayConfig
from ingest.sqlite import SqliteStore
from simulator.publisher import Publisher
from testbed.servers import Mosquitto
from tests.gateway.helpers import make_messages, wait_until


class _Recording(SqliteStore):
    """A real SQLite store that also remembers which poles this gateway wrote."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.poles: set[str] = set()

    def write(self, points):  # type: ignore[no-untyped-def]
        self.poles |= {dict(p.tags)["pole"] for p in points if p.measurement == "telemetry"}
        super().write(points)


def test_two_gateways_split_the_city_by_district(mosquitto: Mosquitto, tmp_path: Path) -> None:
    districts = ["north", "south", "east", "west"]
    msgs = [m for d in districts for m in make_messages(10, 5, seed=len(d), district=d, prefix=d[0])]
    stores = [_Recording(tmp_path / f"s{i}.sqlite") for i in range(2)]
    owned = [("north", "south"), ("east", "west")]
    gws = [Gateway(GatewayConfig(host=mosquitto.host, port=mosquitto.port, client_id=f"gw-{i}", districts=owned[i],
                                 spool_path=str(tmp_path / f"spool{i}.sqlite")), stores[i]) for i in range(2)]
    for g in gws:
        g.start()
    pub = Publisher(mosquitto.host, mosquitto.port, "pub").connect()
    for t, p, _m in msgs:
        pub.publish(t, p)
    pub.flush()
    wait_until(lambda: sum(g.counters().get("acked", 0) for g in gws) >= len(msgs), what="both gateways")
    pub.close()
    for g in gws:
        g.stop()
    assert stores[0].poles and stores[1].poles
    assert not stores[0].poles & stores[1].poles  # no pole handled by both
    assert {p[0] for p in stores[0].poles} == {"n", "s"} and {p[0] for p in stores[1].poles} == {"e", "w"}
    assert stores[0].count() + stores[1].count() == len(msgs)  # all stored, once
    for s in stores:
        s.close()
