"""The gateway's broker address list: settings, and failover between real brokers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from contract.errors import ConfigError
from gateway.service import Gateway, GatewayConfig
from gateway.settings import load
from ingest.sqlite import SqliteStore
from simulator.publisher import Publisher
from testbed.servers import Mosquitto, free_port
from tests.gateway.helpers import make_messages, wait_until


def test_settings_take_a_comma_list_and_version_311_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_BROKERS", "127.0.0.1:4101,127.0.0.1:4102")
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_VERSION", "311")
    cfg = load().gateway_config()
    assert cfg.brokers == (("127.0.0.1", 4101), ("127.0.0.1", 4102))
    assert cfg.mqtt_version == 311


def test_settings_default_to_the_single_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_PORT", "1999")
    assert load().gateway_config().brokers == (("127.0.0.1", 1999),)


def test_a_bad_broker_address_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_BROKERS", "127.0.0.1:4101,node-2")
    with pytest.raises(ConfigError, match=r"invalid gateway setting: mqtt_brokers: .*'node-2' is not host:port"):
        load()


@pytest.mark.parametrize("version", [311, 5])
def test_gateway_skips_a_dead_address_and_fails_over_when_its_broker_dies(
        version: int, mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    first, second = mosquitto_factory(), mosquitto_factory()
    store = SqliteStore(tmp_path / "s.sqlite")
    brokers = (("127.0.0.1", free_port()), (first.host, first.port), (second.host, second.port))
    gw = Gateway(GatewayConfig(brokers=brokers, mqtt_version=version, client_id="gw-fo",
                               spool_path=str(tmp_path / "spool.sqlite")), store)
    gw.start(wait_connected_s=30)
    try:
        assert gw.connected
        before = make_messages(5, 4, seed=1, prefix="a")
        after = make_messages(5, 4, seed=2, prefix="b")
        pub = Publisher(first.host, first.port, "pub-1", mqtt_version=version).connect()
        for t, p, _m in before:
            pub.publish(t, p)
        pub.flush()
        pub.close()
        wait_until(lambda: gw.counters().get("acked", 0) >= len(before), what="gateway on the second address")
        first.stop()  # the gateway's broker dies: it moves to the third address and subscribes there
        wait_until(lambda: gw.connected and gw.stats["disconnects"] >= 1, what="gateway on the third address")
        pub = Publisher(second.host, second.port, "pub-2", mqtt_version=version).connect()
        for t, p, _m in after:
            pub.publish(t, p)
        pub.flush()
        pub.close()
        wait_until(lambda: gw.counters().get("acked", 0) >= len(before) + len(after), what="after failover")
    finally:
        gw.stop()
    assert store.count() == len(before) + len(after)
    store.close()
