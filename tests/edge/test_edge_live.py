"""The edge agent against a real Mosquitto: crash with a backlog, ACL denial, Last Will, commands."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from contract import topics
from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from edge.drivers import SimulatedDriver, catalog_model
from testbed.servers import Mosquitto
from tests.edge.edge_helpers import AgentProcess, Recorder, wait_until, write_config

DISTRICT = "north"


def _cfg(broker: Mosquitto, tmp: Path, pole: str = "p-1", **kw: object) -> EdgeConfig:
    base: dict[str, object] = dict(pole=pole, district=DISTRICT, mqtt_port=broker.port, backoff_min_s=0.1,
                                   backoff_max_s=0.5, outbox_path=tmp / f"outbox-{pole}.sqlite")
    base.update(kw)
    return EdgeConfig(**base)  # type: ignore[arg-type]


def _next_seq(outbox: Path) -> int:
    with sqlite3.connect(outbox) as db:
        (v,) = db.execute("SELECT v FROM meta WHERE k = 'next_seq'").fetchone()
        (depth,) = db.execute("SELECT count(*) FROM samples").fetchone()
    db.close()
    assert depth == 0, "the agent stopped with samples still in its outbox"
    return int(v)


def test_kill9_with_backlog_then_restart_delivers_everything_in_order(
        mosquitto: Mosquitto, recorder_factory: Callable[..., Recorder],
        agent_process: Callable[[Path, Path], AgentProcess], tmp_path: Path) -> None:
    rec = recorder_factory(mosquitto, topic=topics.filter_for("telemetry"))
    outbox = tmp_path / "outbox.sqlite"
    conf = write_config(tmp_path / "edge.toml", pole="p-crash", district=DISTRICT, mqtt_port=mosquitto.port,
                        report_interval_s=0.1, safety_interval_s=0.1, backoff_min_s=0.1, backoff_max_s=0.5,
                        outbox_path=str(outbox), log_level="DEBUG")
    agent = agent_process(conf, tmp_path / "agent.log").start()
    wait_until(lambda: len(rec.samples()) >= 5, what="first samples on the wire")

    mosquitto.stop()  # broker down: the agent keeps sampling into its outbox
    time.sleep(1.5)
    agent.kill9()  # kill -9 while it holds a backlog
    with sqlite3.connect(outbox) as db:
        (backlog,) = db.execute("SELECT count(*) FROM samples").fetchone()
    db.close()
    assert backlog > 0, "the drill needs a backlog at the moment of the crash"

    agent = agent_process(conf, tmp_path / "agent2.log").start()  # restart, broker still down
    time.sleep(1.0)
    mosquitto.start()
    time.sleep(1.0)
    assert agent.terminate() == 0, agent.log_text()[-2000:]  # clean stop: drains, then offline
    produced = _next_seq(outbox)

    wait_until(lambda: len({s["seq"] for s in rec.samples()}) >= produced, what="every sample delivered")
    samples = rec.samples("p-crash")
    first_seen: list[int] = []
    seen: set[int] = set()
    for s in samples:
        if s["seq"] not in seen:
            seen.add(s["seq"])
            first_seen.append(s["seq"])
    assert first_seen == list(range(produced)), "lost or out of order"
    assert len({s["boot"] for s in samples}) == 2  # two process starts, each with its own boot id


def test_acl_denies_another_poles_topics_and_the_agent_reports_it(
        mosquitto_factory: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder],
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pw = tmp_path / "passwd"
    pw.touch()
    for user, secret in (("p-a", "secret-a"), ("p-b", "secret-b"), ("ops", "secret-ops")):
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, secret], check=True, capture_output=True)
    acl = tmp_path / "acl"
    acl.write_text("pattern write lampwatch/v1/+/%u/#\npattern read lampwatch/v1/+/%u/cmd\n"
                   "user ops\ntopic read lampwatch/#\n")
    broker = mosquitto_factory(password_file=pw, acl_file=acl)
    rec = recorder_factory(broker, username="ops", password="secret-ops")
    good = EdgeAgent(_cfg(broker, tmp_path, "p-a", mqtt_username="p-a", mqtt_password="secret-a",
                          report_interval_s=0.2))
    # pole A's credentials, but configured as pole B: every publish lands on B's topics
    rogue = EdgeAgent(_cfg(broker, tmp_path, "p-b", mqtt_username="p-a", mqtt_password="secret-a",
                           report_interval_s=0.2))
    caplog.set_level(logging.ERROR, logger="lampwatch.edge")
    good.start()
    rogue.start()
    try:
        wait_until(lambda: rogue.counters().get("refused_rc_135", 0) >= 2, what="denials counted")
        wait_until(lambda: good.counters().get("acked", 0) >= 3, what="pole A's own samples acked")
    finally:
        rogue.stop(flush_timeout_s=1)
        good.stop(flush_timeout_s=1)
    c = rogue.counters()
    assert c["refused_publishes"] >= 2 and c.get("acked", 0) == 0
    assert good.counters().get("refused_publishes", 0) == 0
    assert any("reason code 135" in r.getMessage() and "p-b" in r.getMessage() for r in caplog.records)
    # nothing of the rogue reached B's topics; pole A's own traffic flowed
    assert not [m for m in rec.messages if "/p-b/" in m[0]]
    assert len(rec.samples("p-a")) >= 3
    # Mosquitto 2.0.11 closes the connection after a refused publish: the rogue's samples stay in
    # its outbox (nothing is dropped because of a misconfiguration) and its backoff keeps growing
    assert c["backlog"] > 0


def test_last_will_is_retained_offline_soon_after_kill9(
        mosquitto: Mosquitto, recorder_factory: Callable[..., Recorder],
        agent_process: Callable[[Path, Path], AgentProcess], tmp_path: Path) -> None:
    keepalive = 4
    rec = recorder_factory(mosquitto, topic=topics.status(DISTRICT, "p-will"))
    conf = write_config(tmp_path / "edge.toml", pole="p-will", district=DISTRICT, mqtt_port=mosquitto.port,
                        mqtt_keepalive_s=keepalive, report_interval_s=1.0, outbox_path=str(tmp_path / "o.sqlite"))
    agent = agent_process(conf, tmp_path / "agent.log").start()
    wait_until(lambda: any(json.loads(p)["state"] == "birth" for _t, p, _r, _ts in rec.messages),
               what="birth status")
    birth = json.loads(rec.messages[-1][1])
    assert birth["boot"] and birth["agent_version"] and birth["sensors"]
    killed_at = time.monotonic()
    agent.kill9()

    def will() -> list[tuple[str, bytes, bool, float]]:
        return [m for m in rec.messages if json.loads(m[1])["state"] == "offline"]

    wait_until(lambda: bool(will()), timeout_s=3 * keepalive, what="the Last Will")
    _t, payload, _r, at = will()[0]
    doc = json.loads(payload)
    assert doc["reason"] == "will" and doc["boot"] == birth["boot"]
    assert at - killed_at <= 1.5 * keepalive
    # retained: a newcomer sees the pole offline
    late = recorder_factory(mosquitto, topic=topics.status(DISTRICT, "p-will"), client_id="late")
    wait_until(lambda: bool(late.messages), what="retained status")
    assert late.messages[0][2] and json.loads(late.messages[0][1])["state"] == "offline"


def test_clean_shutdown_publishes_offline_itself(mosquitto: Mosquitto, recorder_factory: Callable[..., Recorder],
                                                 tmp_path: Path) -> None:
    rec = recorder_factory(mosquitto, topic=topics.status(DISTRICT, "p-1"))
    agent = EdgeAgent(_cfg(mosquitto, tmp_path))
    agent.start()
    wait_until(lambda: bool(rec.messages), what="birth")
    agent.stop()
    wait_until(lambda: len(rec.messages) >= 2, what="offline")
    states = [json.loads(p)["state"] + "/" + json.loads(p).get("reason", "") for _t, p, _r, _ts in rec.messages]
    assert states == ["birth/", "offline/shutdown"]


def test_set_interval_round_trip_and_other_commands(mosquitto: Mosquitto,
                                                   recorder_factory: Callable[..., Recorder],
                                                   tmp_path: Path) -> None:
    rec = recorder_factory(mosquitto)
    agent = EdgeAgent(_cfg(mosquitto, tmp_path, report_interval_s=30.0))
    agent.start()
    try:
        wait_until(lambda: len(rec.samples()) >= 1, what="the first (immediate) sample")
        cmd = topics.cmd(DISTRICT, "p-1")

        def ack(cid: str) -> dict[str, object]:
            wait_until(lambda: any(json.loads(p)["id"] == cid for _t, p, _r, _ts in rec.of("/cmd/ack")),
                       what=f"ack {cid}")
            return next(json.loads(p) for _t, p, _r, _ts in rec.of("/cmd/ack") if json.loads(p)["id"] == cid)

        rec.publish(cmd, b'{"v":1,"id":"c1","cmd":"set_interval","interval_s":0.3}')
        a = ack("c1")
        assert a["ok"] is True and a["result"] == {"interval_s": 0.3, "metric": "*"}
        n0 = len(rec.samples())
        wait_until(lambda: len(rec.samples()) >= n0 + 8, what="samples at the new interval")
        ts = [s["ts"] for s in rec.samples()[n0:]]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert 200 <= statistics.median(gaps) <= 450, gaps  # device-time spacing on the wire

        rec.publish(cmd, b'{"v":1,"id":"c2","cmd":"reboot"}')
        a = ack("c2")
        assert a["ok"] is False and "unknown command" in str(a["reason"])
        rec.publish(cmd, b'{"v":1,"id":"c3","cmd":"set_interval","interval_s":-1}')
        a = ack("c3")
        assert a["ok"] is False and "interval_s" in str(a["reason"])
        rec.publish(cmd, b"not json")
        a = ack("")
        assert a["ok"] is False and "malformed" in str(a["reason"])
        rec.publish(cmd, b'{"v":1,"id":"c4","cmd":"set_thresholds","thresholds":{"noise_db":10}}')
        assert ack("c4")["ok"] is False
        rec.publish(cmd, b'{"v":1,"id":"c5","cmd":"ping"}')
        a = ack("c5")
        assert a["ok"] is True and a["result"]["boot"] == agent.boot_id  # type: ignore[index]
        assert agent.counters()["commands_rejected"] == 4
    finally:
        agent.stop(flush_timeout_s=2)


def test_threshold_crossing_is_published_at_once(mosquitto: Mosquitto,
                                                 recorder_factory: Callable[..., Recorder],
                                                 tmp_path: Path) -> None:
    rec = recorder_factory(mosquitto, topic=topics.filter_for("telemetry"))
    leak = threading.Event()
    base = catalog_model(seed=1)

    def model(name: str, t_ms: int) -> float | None:
        if name == "leakage_current_ma":
            return 42.0 if leak.is_set() else 2.0
        return base(name, t_ms)

    cfg = _cfg(mosquitto, tmp_path, report_interval_s=3600.0, safety_interval_s=0.1)
    agent = EdgeAgent(cfg, drivers={n: SimulatedDriver([n], model) for n in cfg.sensors})
    agent.start()
    try:
        wait_until(lambda: len(rec.samples()) == 1, what="the first report")
        leak.set()
        wait_until(lambda: len(rec.samples()) >= 2, timeout_s=30, what="the fast-path sample")
        s = rec.samples()[1]
        assert s["m"]["leakage_current_ma"] == 42.0
        assert agent.counters()["fast_path"] == 1
    finally:
        agent.stop(flush_timeout_s=2)
