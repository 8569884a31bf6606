"""Many agents on one EdgeLoop (shared network + sampler threads) against a real Mosquitto."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from contract import topics
from edge.agent import EdgeAgent
from edge.clock import ScaledClock, SystemClock
from edge.config import EdgeConfig
from edge.loop import EdgeLoop
from testbed.servers import Mosquitto
from tests.edge.edge_helpers import Recorder, wait_until

DISTRICT = "north"
N = 50


def _cfg(broker: Mosquitto, tmp: Path, pole: str, **kw: object) -> EdgeConfig:
    base: dict[str, object] = dict(pole=pole, district=DISTRICT, mqtt_port=broker.port, backoff_min_s=0.1,
                                   backoff_max_s=0.5, report_interval_s=2.0, outbox_sync="off",
                                   outbox_path=tmp / f"outbox-{pole}.sqlite")
    base.update(kw)
    return EdgeConfig(**base)  # type: ignore[arg-type]


def _states(rec: Recorder, pole: str) -> list[str]:
    return [json.loads(p)["state"] + "/" + json.loads(p).get("reason", "")
            for _t, p, _r, _ts in rec.of(f"/{pole}/status")]


def test_fifty_agents_share_two_threads_and_each_stays_a_device(
        mosquitto: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path) -> None:
    rec = recorder_factory(mosquitto)
    poles = [f"p-{i:03d}" for i in range(N)]
    threads_before = threading.active_count()
    with EdgeLoop(ScaledClock(5.0)) as loop:
        agents = [EdgeAgent(_cfg(mosquitto, tmp_path, p), loop=loop) for p in poles]
        for a in agents:
            a.start()
        try:
            assert threading.active_count() == threads_before + 2  # the loop's, not two per agent
            wait_until(lambda: all(a.connected for a in agents), what="every agent connected")
            wait_until(lambda: all(len(_states(rec, p)) >= 1 for p in poles), what="every birth")
            # telemetry flows for every pole, in sequence order, and the outboxes drain
            wait_until(lambda: all(len(rec.samples(p)) >= 3 for p in poles), what="3 samples per pole")
            for p in poles:
                seqs = [s["seq"] for s in rec.samples(p)]
                assert seqs == sorted(seqs) and seqs[0] == 0, (p, seqs)
            # a command reaches its own agent only
            rec.publish(topics.cmd(DISTRICT, poles[7]), b'{"v":1,"id":"c1","cmd":"ping"}')
            wait_until(lambda: bool(rec.of(f"/{poles[7]}/cmd/ack")), what="ack")
            ack = json.loads(rec.of(f"/{poles[7]}/cmd/ack")[0][1])
            assert ack["ok"] is True and ack["result"]["boot"] == agents[7].boot_id
            assert not any(rec.of(f"/{p}/cmd/ack") for p in poles if p != poles[7])
        finally:
            with ThreadPoolExecutor(max_workers=N) as ex:
                list(ex.map(lambda a: a.stop(flush_timeout_s=5.0), agents))
    for a in agents:
        c = a.counters()
        assert c["produced"] >= 3 and c["backlog"] == 0 and c["connects"] == 1, (a.pole, c)
    wait_until(lambda: all(_states(rec, p)[-1:] == ["offline/shutdown"] for p in poles), what="offline statuses")
    for p in poles:
        assert _states(rec, p) == ["birth/", "offline/shutdown"], p
    # the births and the offline statuses are retained: a newcomer sees one status per pole
    late = recorder_factory(mosquitto, topic=topics.status(DISTRICT, "p-000").replace("p-000", "+"),
                           client_id="late-recorder")
    wait_until(lambda: len(late.messages) >= N, what="retained statuses")
    assert {json.loads(p)["pole"] for _t, p, r, _ts in late.messages if r} == set(poles)


def test_agents_on_a_loop_reconnect_after_the_broker_restarts(
        mosquitto: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path) -> None:
    rec = recorder_factory(mosquitto)
    with EdgeLoop(ScaledClock(5.0), connect_rate=50) as loop:
        agents = [EdgeAgent(_cfg(mosquitto, tmp_path, f"p-{i:03d}"), loop=loop) for i in range(10)]
        for a in agents:
            a.start()
        try:
            wait_until(lambda: all(a.connected for a in agents), what="connected")
            mosquitto.stop()
            wait_until(lambda: not any(a.connected for a in agents), what="disconnected")
            mosquitto.start()
            wait_until(lambda: all(a.connected for a in agents), what="reconnected")
            wait_until(lambda: all(_states(rec, a.pole)[-1:] == ["online/"] for a in agents), what="online")
            for a in agents:
                a.wait_drained(30)
        finally:
            for a in agents:
                a.stop(flush_timeout_s=5.0)
    assert all(a.counters()["connects"] >= 2 and a.backlog() == 0 for a in agents)


def test_an_agent_on_a_shared_loop_uses_the_loops_clock(tmp_path: Path) -> None:
    loop = EdgeLoop(ScaledClock(2.0))
    try:
        cfg = EdgeConfig(pole="p-1", district=DISTRICT, outbox_path=tmp_path / "o.sqlite")
        assert EdgeAgent(cfg, loop=loop).clock is loop.clock
        with pytest.raises(ValueError, match="loop's clock"):
            EdgeAgent(cfg, loop=loop, clock=SystemClock())
    finally:
        loop.stop()


def test_a_pole_is_the_same_loop_with_one_agent(mosquitto: Mosquitto, recorder_factory: Callable[..., Recorder],
                                                tmp_path: Path) -> None:
    rec = recorder_factory(mosquitto)
    before = {t.name for t in threading.enumerate()}
    agent = EdgeAgent(_cfg(mosquitto, tmp_path, "p-solo", report_interval_s=0.2))
    assert isinstance(agent.loop, EdgeLoop) and not agent.loop.running
    agent.start()
    try:
        assert agent.loop.running
        assert {t.name for t in threading.enumerate()} - before == {"edge-p-solo-net", "edge-p-solo-sampler"}
        wait_until(lambda: agent.loop.members == 1 and len(rec.samples("p-solo")) >= 3, what="samples")
    finally:
        agent.stop()
    assert not agent.loop.running and agent.loop.members == 0  # stopping the pole stops its loop
    assert {t.name for t in threading.enumerate()} - before == set()
    wait_until(lambda: _states(rec, "p-solo")[-1:] == ["offline/shutdown"], what="offline status")
