"""The agent's broker address list and MQTT 3.1.1 mode: config parsing, and failover on real brokers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from contract import topics
from contract.address import parse_broker
from contract.errors import ConfigError
from edge.agent import EdgeAgent
from edge.config import EdgeConfig, load_config
from edge.link import LinkSettings
from testbed.servers import Mosquitto, free_port
from tests.edge.edge_helpers import Recorder, wait_until

DISTRICT = "north"


def test_parse_broker_accepts_host_port_and_ipv6() -> None:
    assert parse_broker("127.0.0.1:4222") == ("127.0.0.1", 4222)
    assert parse_broker(" node-2.example:1883 ") == ("node-2.example", 1883)
    assert parse_broker("[::1]:1883") == ("::1", 1883)
    for bad in ("127.0.0.1", ":1883", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError, match="not host:port"):
            parse_broker(bad)


def test_brokers_from_env_as_a_comma_list_and_version_311(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_BROKERS", "127.0.0.1:4001, 127.0.0.1:4002,127.0.0.1:4003")
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_VERSION", "311")
    cfg = load_config(pole="p-1", district=DISTRICT)
    assert cfg.broker_list == (("127.0.0.1", 4001), ("127.0.0.1", 4002), ("127.0.0.1", 4003))
    assert cfg.mqtt_version == 311


def test_brokers_from_toml_list_and_default_single_host(tmp_path: Path) -> None:
    conf = tmp_path / "edge.toml"
    conf.write_text('pole = "p-1"\ndistrict = "north"\nmqtt_brokers = ["10.0.0.1:1883", "10.0.0.2:1884"]\n')
    assert load_config(conf).broker_list == (("10.0.0.1", 1883), ("10.0.0.2", 1884))
    plain = EdgeConfig(pole="p-1", district=DISTRICT, mqtt_host="10.0.0.9", mqtt_port=1999)
    assert plain.broker_list == (("10.0.0.9", 1999),)
    assert plain.mqtt_version == 5


def test_a_bad_broker_address_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_BROKERS", "127.0.0.1:4001,nonsense")
    with pytest.raises(ConfigError, match=r"brokers: broker 'nonsense' is not host:port"):
        load_config(pole="p-1", district=DISTRICT)
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_BROKERS", "127.0.0.1:4001")
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_VERSION", "4")
    with pytest.raises(ConfigError, match="mqtt_version"):
        load_config(pole="p-1", district=DISTRICT)


def test_link_settings_default_to_the_single_address() -> None:
    s = LinkSettings(host="h", port=1, client_id="c")
    assert s.addresses == (("h", 1),)
    assert LinkSettings(host="h", port=1, client_id="c", brokers=(("a", 2), ("b", 3))).addresses == (("a", 2), ("b", 3))


@pytest.mark.parametrize("version", [311, 5])
def test_agent_skips_a_dead_address_then_fails_over_when_its_broker_dies(
        version: int, mosquitto_factory: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder],
        tmp_path: Path) -> None:
    first, second = mosquitto_factory(), mosquitto_factory()
    dead = free_port()  # nothing listens there: the first attempt fails and the agent moves on
    rec1 = recorder_factory(first, topic=topics.filter_for("telemetry"), client_id="rec-1")
    rec2 = recorder_factory(second, topic=topics.filter_for("telemetry"), client_id="rec-2")
    cfg = EdgeConfig(pole="p-fo", district=DISTRICT, mqtt_version=version, report_interval_s=0.1,
                     safety_interval_s=0.1, backoff_min_s=0.05, backoff_max_s=0.2, outbox_path=tmp_path / "o.sqlite",
                     mqtt_brokers=[f"127.0.0.1:{dead}", f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"])
    agent = EdgeAgent(cfg)
    agent.start()
    try:
        wait_until(lambda: len(rec1.samples()) >= 5, what="samples through the second address")
        assert agent.link is not None and agent.link.counts["connect_failures"] >= 1
        assert rec2.samples() == []
        first.stop()  # the agent's broker dies: it moves to the third address
        wait_until(lambda: len(rec2.samples()) >= 5, what="samples through the third address after failover")
    finally:
        agent.stop()
    # a message the first broker acked just before it stopped may still wait in its persistent store for
    # rec-1: bring the broker back so it can hand it over
    first.start()
    produced = int(agent.counters()["acked"])

    def seqs() -> set[int]:
        return {s["seq"] for s in rec1.samples()} | {s["seq"] for s in rec2.samples()}

    # everything acked reached one of the brokers' subscribers; nothing acked went missing in the switch
    wait_until(lambda: len(seqs()) >= produced, what="every acked sample at a subscriber")
    assert produced > 0
    got = seqs()
    assert got == set(range(min(got), max(got) + 1)), "a gap in the sequence across the failover"


def test_the_simulator_spreads_agents_over_the_nodes() -> None:
    from simulator.run import spread

    nodes = [("a", 1), ("b", 2), ("c", 3)]
    assert spread(nodes, 0) == nodes
    assert spread(nodes, 1) == [("b", 2), ("c", 3), ("a", 1)]
    assert spread(nodes, 5) == [("c", 3), ("a", 1), ("b", 2)]
    assert [spread(nodes, i)[0] for i in range(6)].count(("b", 2)) == 2
    assert spread([], 3) == []
