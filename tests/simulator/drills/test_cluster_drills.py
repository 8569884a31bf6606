"""``lampwatch-sim drill cluster-node-kill`` at a small size (make test): a real 3-node NATS cluster
(JetStream R3), real edge agents on MQTT 3.1.1 spread over the nodes, two real gateway processes
(partitions 0/2 and 1/2) and InfluxDB 1.6.7; kill -9 the node of gateway 0 and of a third of the agents."""

from __future__ import annotations

import re

from simulator.drills import DrillResult
from simulator.drills.cluster_drills import ClusterSpec, cluster_node_kill
from tests.servers import need


def test_cluster_node_kill_small() -> None:
    need("nats-server", "influxd")
    res = cluster_node_kill(ClusterSpec(agents=6, rate_hz=2.0, seconds=15.0, down_s=4.0), log=lambda _m: None)
    assert res.failed_checks == ()
    assert res.published > 0 and res.lost == 0 and res.duplicates == 0
    assert res.extra["agent_connects"] > 6  # the agents on the killed node really moved
    assert re.fullmatch(r"drill cluster-node-kill: published=\d+ stored=\d+ duplicates=0 lost=0 verdict=PASS",
                        res.line())


def test_a_pole_stored_by_both_gateways_fails_the_verdict() -> None:
    r = DrillResult("cluster-node-kill", 10, 10, 0, failed_checks=("1 poles stored by both gateways",))
    assert not r.passed and r.line().endswith("verdict=FAIL")
