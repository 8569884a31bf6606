"""README's bare-metal section, run line by line as written: the first ``sh`` block under "Running
each component against real servers" is parsed from README.md, so this test fails when README drifts.

The only adaptations, each a plain text substitution checked to apply: the ports 8883, 1883 and 8086
become free loopback ports (other servers run on this machine), and the InfluxDB on "8086" is a test
InfluxDB 1.6.7 started by the harness (README expects the Debian service). The lines run with bash in
a fresh directory under /tmp that user ``mosquitto`` can traverse (README: not under /root). A line
ending in ``&`` runs in the background; before the next line the test waits until that server is
ready (the broker's TLS port open; the gateway's retained status "online"), as a person would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics
from ingest import credentials
from testbed.servers import InfluxDB1, free_port
from tests.servers import need

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Running each component against real servers"


def readme_lines() -> list[str]:
    """The commands of the section's first sh block: comments dropped, continuations joined."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, "README lost its bare-metal section"
    block = re.search(r"```sh\n(.*?)```", text[text.index(SECTION):], re.S)
    assert block is not None
    lines: list[str] = []
    pending = ""
    for raw in block.group(1).splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = pending + raw
        pending = ""
        lines.append(re.sub(r"\s+#\s[^'\"]*$", "", line).strip())  # a trailing comment (none inside quotes)
    return lines


def test_readme_block_is_what_this_test_expects() -> None:
    lines = readme_lines()
    assert lines[0].startswith("lampwatch-ingest credentials ") and "--out broker/" in lines[0]
    assert any(line.startswith("mosquitto -c broker/mosquitto.conf") for line in lines)
    assert any("lampwatch-gateway run" in line for line in lines)
    assert any(line.startswith("mosquitto_pub ") and "-p 8883" in line and "--cafile" in line for line in lines)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _wait(cond: Any, what: str, logs: list[Path], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
            pytest.fail(f"{what} within {timeout_s:.0f} s\n{tails}")
        time.sleep(0.2)


def _gateway_online(port: int, password: str) -> bool:
    seen = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
    c.username_pw_set(credentials.OPS_USER, password)

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            if json.loads(m.payload).get("state") == "online":
                seen.set()

    c.on_message = on_message
    c.on_connect = lambda cl, *_a: cl.subscribe(topics.gateway_status(credentials.GATEWAY_USER), qos=1)
    try:
        c.connect("127.0.0.1", port)
    except OSError:
        return False
    c.loop_start()
    try:
        return seen.wait(2.0)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lampwatch-readme-"))
    d.chmod(0o755)  # user mosquitto must traverse it (tmp_path's parents are 0700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_readme_bare_metal_section_works_line_by_line(workdir: Path) -> None:
    need("mosquitto", "mosquitto_pub", "influxd", "openssl")
    ports = {"8883": free_port(), "1883": free_port()}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LAMPWATCH_")},
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin"])}
    background: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    with InfluxDB1() as influx:
        ports["8086"] = influx.port
        lines = readme_lines()
        for old in ports:
            assert any(re.search(rf"(?<=[ :=]){old}\b", line) for line in lines), f"README no longer uses {old}"
        try:
            for n, line in enumerate(lines):
                cmd = line
                for old, new in ports.items():
                    cmd = re.sub(rf"(?<=[ :=]){old}\b", str(new), cmd)
                if cmd.endswith("&"):
                    log = workdir / f"line{n}.log"
                    logs.append(log)
                    with log.open("wb") as out:
                        background.append(subprocess.Popen(["bash", "-c", cmd[:-1]], cwd=workdir, env=env,
                                                           stdout=out, stderr=subprocess.STDOUT,
                                                           start_new_session=True))
                    if cmd.startswith("mosquitto "):
                        _wait(lambda: _port_open(ports["8883"]) and _port_open(ports["1883"]),
                              "the broker did not listen", logs)
                    elif "lampwatch-gateway run" in cmd:
                        pw = dict(r.split(",", 1) for r in (workdir / "broker/secrets.csv").read_text().split())
                        _wait(lambda pw=pw: _gateway_online(ports["1883"], pw[credentials.OPS_USER]),  # type: ignore[misc]
                              "the gateway did not report online", logs)
                    continue
                proc = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True, text=True,
                                      timeout=120)
                assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
                if "lampwatch-gateway status" in cmd:
                    assert credentials.GATEWAY_USER in proc.stdout and "online" in proc.stdout, proc.stdout
            # the pole's reading, as the gateway stored it in InfluxDB
            rows: list[Any] = []

            def stored() -> bool:
                res = influx.query('SELECT "leakage_current_ma", "seq" FROM "telemetry"', db="lampwatch")
                rows[:] = [v for s in res["results"][0].get("series", []) for v in s["values"]]
                return bool(rows)

            _wait(stored, "the reading did not reach InfluxDB", logs)
            assert [r[1:] for r in rows] == [[2.5, 1]]
        finally:
            for p in background:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in background:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    broker = workdir / "broker"
    assert (broker / "passwd").stat().st_uid == (broker / "data").stat().st_uid  # handed to one user
    if os.geteuid() == 0:
        import pwd

        assert (broker / "passwd").stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
