"""Acceptance: the mosquitto_pub examples of docs/contract.md, run exactly as written (only the port is
the test broker's; the passwords come from the environment, as the doc says) with the C client, through
a real Mosquitto running the README's broker config (rendered from mosquitto.conf: passwords, ACL, a
client id that is the username) and a real gateway logged in as the README's gateway command does, into
InfluxDB 1.6.7; every value they carry is read back unchanged. The examples are parsed from the doc, so
this fails when the doc drifts from what the system accepts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from contract import topics
from contract.models import COMMAND, Status, Telemetry
from gateway.service import Gateway, GatewayConfig
from ingest.influx1 import Influx1Store
from testbed.servers import InfluxDB1
from tests.gateway.helpers import wait_until
from tests.servers import need

DOC = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def example_blocks() -> list[str]:
    """Every ```sh block of the doc that publishes something."""
    return [b for b in _BLOCK.findall(DOC.read_text(encoding="utf-8")) if "mosquitto_pub" in b]


def run_block(block: str, port: int, env: dict[str, str] | None = None) -> list[list[str]]:
    """Run one block with bash exactly as written except the port; return the argv of every
    mosquitto_pub it ran, as bash expanded it (from its xtrace)."""
    import os

    assert " -p 1883 " in block
    script = block.replace(" -p 1883 ", f" -p {port} ")
    res = subprocess.run(["bash", "-e", "-u", "-x", "-c", script], capture_output=True, text=True, timeout=30,
                         check=False, env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    runs = [shlex.split(line[2:]) for line in res.stderr.splitlines() if line.startswith("+ mosquitto_pub ")]
    assert len(runs) == block.count("mosquitto_pub "), res.stderr
    return runs


def _status_count(store: Influx1Store) -> int:
    rows = store.rows('SELECT count("state") FROM "status"')
    return int(rows[0]["count"]) if rows else 0


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_every_example_block_is_only_assignments_comments_and_mosquitto_pub() -> None:
    blocks = example_blocks()
    assert len(blocks) >= 3
    versions = set()
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            assert line.startswith("mosquitto_pub ") or re.match(r"^[A-Z]+=(\$\([^)]*\)|\S+)(\s+#.*)?$", line), line
            if line.startswith("mosquitto_pub "):
                versions.add(line.split()[2])
    assert versions == {"mqttv5", "mqttv311"}


def test_doc_examples_through_mosquitto_and_gateway_into_influxdb(
        influx_db: tuple[InfluxDB1, str], tmp_path: Path) -> None:
    need("mosquitto", "mosquitto_pub", "bash", "openssl")
    from ingest import broker as brokerfiles
    from ingest import credentials
    from simulator.drills.identity_drills import ProductionBroker

    server, db = influx_db
    bdir = tmp_path / "broker"
    credentials.write_credentials(bdir, ["p-000001", "p-000002"])
    brokerfiles.make_certs(bdir / "certs")
    (bdir / "data").mkdir()
    pw = dict(line.split(",", 1) for line in (bdir / "secrets.csv").read_text().splitlines()[1:])
    store = Influx1Store(server.url, db)
    with ProductionBroker(bdir) as mosquitto:
        _through_the_readme_broker(mosquitto, store, pw, tmp_path)


def _through_the_readme_broker(mosquitto: Any, store: Influx1Store, pw: dict[str, str], tmp_path: Path) -> None:
    from ingest import credentials

    gw = Gateway(GatewayConfig(host=mosquitto.host, port=mosquitto.plain_port, client_id=credentials.GATEWAY_USER,
                               username=credentials.GATEWAY_USER, password=pw[credentials.GATEWAY_USER],
                               spool_path=str(tmp_path / "spool.sqlite")), store)
    gw.start()
    published: list[tuple[str, dict[str, Any], list[str]]] = []
    try:
        wait_until(lambda: gw.connected, 20, "gateway subscribed")  # nothing published from now on is missed
        t0 = int(time.time() * 1000)
        for block in example_blocks():
            user = re.search(r" -u (\S+) ", block)
            assert user is not None, "an example that does not log in would be refused by the broker"
            env = {"PASSWORD": pw.get(user.group(1), ""), "OPS_PASSWORD": pw[credentials.OPS_USER]}
            for argv in run_block(block, mosquitto.plain_port, env):
                assert argv[:3] in (["mosquitto_pub", "-V", "mqttv5"], ["mosquitto_pub", "-V", "mqttv311"])
                assert _opt(argv, "-q") == "1"
                published.append((_opt(argv, "-t"), json.loads(_opt(argv, "-m")), argv))
        t1 = int(time.time() * 1000)
        # validated in JSON mode, as the gateway and the agent do
        telemetry = [(t, Telemetry.model_validate_json(json.dumps(d))) for t, d, _ in published
                     if t.endswith("/telemetry")]
        statuses = [(t, Status.model_validate_json(json.dumps(d)), a) for t, d, a in published
                    if t.endswith("/status")]
        commands = [COMMAND.validate_json(json.dumps(d)) for t, d, _ in published if t.endswith("/cmd")]
        assert telemetry and statuses and len(commands) == 4
        n_samples = sum(len(m.samples) for _t, m in telemetry)
        wait_until(lambda: store.count() >= n_samples and _status_count(store) >= len(statuses), 60,
                   "examples stored")
    finally:
        gw.stop()
    assert gw.counters()["samples_rejected"] == 0
    rows = store.rows("SELECT * FROM telemetry GROUP BY pole, district", epoch="ms")
    got = {(r["pole"], r["time"]): r for r in rows}
    assert len(rows) == n_samples
    for topic, msg in telemetry:
        district = topics.parse(topic).district
        for s in msg.samples:
            assert t0 - 120_000 <= s.ts <= t1
            row = got[(msg.pole, s.ts)]
            assert row["district"] == district and row["seq"] == s.seq
            for name, value in s.m.items():
                assert row[name] == value, (msg.pole, s.seq, name)
            others = {k for k, v in row.items() if v is not None} - {"time", "pole", "district", "seq"}
            assert others == set(s.m), (msg.pole, s.seq)
    st_rows = {(r["pole"], r["time"]): r for r in store.rows("SELECT * FROM status GROUP BY pole, district",
                                                             epoch="ms")}
    for _topic, st, argv in statuses:
        assert "-r" in argv  # a status is retained
        row = st_rows[(st.pole, st.ts)]
        assert row["state"] == st.state and row["boot"] == st.boot and row["district"] == st.district
        assert row["lat"] == st.location.lat and row["lon"] == st.location.lon  # type: ignore[union-attr]
        assert row["rated_power_w"] == st.rated_power_w and row["nominal_voltage_v"] == st.nominal_voltage_v
        assert row["interval_s"] == st.interval_s
        will = Status.model_validate_json(_opt(argv, "--will-payload"))
        assert will.state == "offline" and will.reason == "will" and will.pole == st.pole
        assert _opt(argv, "--will-topic") == topics.status(st.district, st.pole) == _topic
    store.close()


@pytest.mark.parametrize("payload", ["telemetry", "status"])
def test_the_doc_limits_are_the_code_limits(payload: str) -> None:
    from contract import models
    from gateway.decode import MAX_PAYLOAD_BYTES

    text = DOC.read_text(encoding="utf-8")
    from contract import export
    from edge import conform
    from gateway.decode import Limits

    assert MAX_PAYLOAD_BYTES == 256 * 1024 and "**at most 256 KiB** (262,144 bytes)" in text
    # the copies that cannot import the gateway (contract and edge stand below it) agree with it
    assert export.MAX_PAYLOAD_BYTES == conform.MAX_PAYLOAD_BYTES == MAX_PAYLOAD_BYTES
    assert (conform.MAX_FUTURE_MS, conform.MAX_PAST_MS) == (Limits().max_future_ms, Limits().max_past_ms)
    assert "`now - 30 days <= ts <= now + 300 s`" in text
    assert models.MAX_SAMPLES_PER_MESSAGE == 1000 and "| 1 .. 1,000 items |" in text
    assert models.MAX_METRICS_PER_SAMPLE == 64 and "| 1 .. 64 entries |" in text
    assert f"`lampwatch/v1/{{district}}/{{pole}}/{payload}`" in text
