"""Provisioning one pole at a time (`lampwatch-ingest credentials add|remove|rotate`) against the real
Mosquitto 2.0.11 running the repository's config: after a SIGHUP the broker rereads passwd, the new
pole and every existing one log in, a removed pole cannot, a rotated pole's old password fails."""

from __future__ import annotations

import csv
import os
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract.errors import ConfigError
from ingest import broker as brokerfiles
from ingest import credentials
from ingest.cli import main
from simulator.drills.identity_drills import ProductionBroker
from tests.servers import need, need_root

POLES = ["p-000000", "p-000001", "p-000002"]
OK = 0


def _secrets(d: Path) -> dict[str, str]:
    with (d / "secrets.csv").open() as f:
        return {r["username"]: r["password"] for r in csv.DictReader(f)}


def _passwd(d: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in (d / "passwd").read_text().splitlines())


def login(server: ProductionBroker, user: str, password: str) -> int:
    """The CONNACK reason code of one TLS login (0 = accepted)."""
    got: list[int] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(server.broker_dir / "certs" / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    c.username_pw_set(user, password)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        got.append(rc.value)
        done.set()

    c.on_connect = on_connect
    c.connect(server.host, server.port)
    c.loop_start()
    try:
        assert done.wait(30), "no CONNACK"
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def until(server: ProductionBroker, check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """SIGHUP once, then poll (bounded) until the broker shows the reloaded files."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"after SIGHUP: {what}; log:\n{server.log_tail()}"
        time.sleep(0.2)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ProductionBroker]:
    need("mosquitto", "openssl")
    d = tmp_path / "broker"
    credentials.write_credentials(d, POLES)
    brokerfiles.make_certs(d / "certs")
    (d / "data").mkdir()
    with ProductionBroker(d) as server:
        yield server


def test_add_remove_rotate_on_a_running_broker(broker: ProductionBroker, capsys: pytest.CaptureFixture[str]) -> None:
    d = broker.broker_dir
    before = _passwd(d)
    pw = _secrets(d)
    assert all(login(broker, p, pw[p]) == OK for p in POLES)

    assert main(["credentials", "add", "p-000003", "--out", str(d)]) == 0
    assert capsys.readouterr().out.strip() == (f"credentials add: poles=1 users={len(before) + 1} "
                                               f"passwd={d / 'passwd'} secrets={d / 'secrets.csv'}")
    after = _passwd(d)
    assert {u: after[u] for u in before} == before  # every other password untouched, byte for byte
    new = _secrets(d)
    assert {u: new[u] for u in pw} == pw
    until(broker, lambda: login(broker, "p-000003", new["p-000003"]) == OK, "the added pole cannot log in")
    assert all(login(broker, p, pw[p]) == OK for p in POLES)  # existing poles still can

    assert main(["credentials", "remove", "p-000001", "--out", str(d)]) == 0
    assert "p-000001" not in _passwd(d) and "p-000001" not in _secrets(d)
    until(broker, lambda: login(broker, "p-000001", pw["p-000001"]) != OK, "the removed pole still logs in")
    assert login(broker, "p-000000", pw["p-000000"]) == OK

    ids = d.parent / "rotate.txt"
    ids.write_text("p-000002\n")
    assert main(["credentials", "rotate", "--pole-ids", str(ids), "--out", str(d)]) == 0
    rotated = _secrets(d)["p-000002"]
    assert rotated != pw["p-000002"]
    until(broker, lambda: login(broker, "p-000002", pw["p-000002"]) != OK, "the old password still works")
    assert login(broker, "p-000002", rotated) == OK
    assert login(broker, "p-000000", pw["p-000000"]) == OK and login(broker, "p-000003", new["p-000003"]) == OK
    for name in ("passwd", "secrets.csv"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_refusals_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    d = tmp_path / "broker"
    credentials.write_credentials(d, POLES, hasher="python")
    snapshot = {n: (d / n).read_bytes() for n in credentials.FILES}
    cases = [
        (["add", "p-000000"], "already has a password"),
        (["remove", "p-000009"], "has no password"),
        (["rotate", "p-000009"], "has no password"),
        (["add", "P-BAD"], "invalid pole id"),
        (["add"], "exactly one of a pole id or --pole-ids"),
        (["add", "p-000005", "--poles", "3"], "not --poles"),
        (["wipe", "p-000000"], "unknown action"),
    ]
    for args, text in cases:
        proc = subprocess.run([sys.executable, "-m", "ingest.cli", "credentials", *args, "--out", str(d)],
                              capture_output=True, text=True, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("lampwatch-ingest: error: ") and text in lines[0], (args, lines)
    assert {n: (d / n).read_bytes() for n in credentials.FILES} == snapshot
    with pytest.raises(ConfigError, match="does not exist"):
        credentials.provision(tmp_path / "nowhere", "add", ["p-000001"])


def test_rewrites_keep_the_owner_the_broker_needs(tmp_path: Path) -> None:
    need_root("ownership is only changed (and kept) as root")
    d = tmp_path / "broker"
    credentials.write_credentials(d, POLES, hasher="python")
    os.chown(d / "passwd", 1, 1)  # any non-root owner (daemon), as user mosquitto would be
    credentials.provision(d, "add", ["p-000007"], hasher="python")
    st = (d / "passwd").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1, 1, 0o600)
