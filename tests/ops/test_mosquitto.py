"""The repository's mosquitto.conf, run by the real Mosquitto 2.0.11, enforces lampwatch's access rules.

The config is used as committed except for what a test must change: listener ports bound to
127.0.0.1 on free ports, the certificate/passwd/acl/persistence paths pointed into a temp dir, the
log sent to a file and ``user root`` (the harness's test-only line). The TLS listener stays TLS: a
throwaway CA and server certificate are made with openssl for each test module.
"""

from __future__ import annotations

import csv
import re
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics
from ingest import credentials
from testbed.servers import Mosquitto, ServerMissing, free_port, require
from tests.servers import missing

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
NOT_AUTHORIZED = 135
POLE_A, POLE_B = "p-000001", "p-000002"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)




@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        require("openssl")
    except ServerMissing as exc:
        missing(exc)
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca",
             cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


class RepoBroker(Mosquitto):
    """Mosquitto started from the repository's mosquitto.conf (test substitutions only)."""

    def __init__(self, certs: Path, creds: Path) -> None:
        super().__init__()  # self.port: the TLS listener
        self.plain_port = free_port()
        self.certs, self.creds = certs, creds

    def listen_ports(self) -> tuple[int, ...]:
        return (self.port, self.plain_port)

    def config_text(self) -> str:
        text = (REPO / "mosquitto.conf").read_text()
        subs = {
            r"^listener 8883$": f"listener {self.port} {self.host}",
            r"^listener 1883$": f"listener {self.plain_port} {self.host}",
            r"/mosquitto/certs/": f"{self.certs}/",
            r"/mosquitto/config/passwd": str(self.creds / "passwd"),
            r"/mosquitto/config/acl": str(self.creds / "acl"),
            r"/mosquitto/data/": f"{self.persistence_dir}/",
            r"^log_dest stdout$": f"log_dest file {self.log_path}",
        }
        for pattern, repl in subs.items():
            text, n = re.subn(pattern, repl, text, flags=re.M)
            assert n >= 1, f"mosquitto.conf no longer has {pattern!r}"
        return "# test-only: stay root to read the temp dir\nuser root\n" + text


@pytest.fixture(scope="module", params=["python", "mosquitto_passwd"])
def broker(request: pytest.FixtureRequest, certs: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RepoBroker, dict[str, str]]]:
    """The broker with credentials for two poles and the gateway, hashed by each hasher in turn."""
    creds = tmp_path_factory.mktemp("creds")
    try:
        require("mosquitto_passwd" if request.param == "mosquitto_passwd" else "mosquitto")
        written = credentials.write_credentials(creds, [POLE_A, POLE_B], gateways=2, hasher=request.param)
        server = RepoBroker(certs, creds)
    except ServerMissing as exc:
        missing(exc)
    with (creds / "secrets.csv").open() as f:
        secrets = {row["username"]: row["password"] for row in csv.DictReader(f)}
    assert secrets[written.gateway_user] == written.gateway_password
    with server:
        yield server, secrets


class Client:
    """A paho MQTT 5 client over TLS (or the plain internal listener) recording what happens."""

    def __init__(self, server: RepoBroker, username: str | None, password: str | None, *,
                 tls: bool = True, client_id: str | None = None) -> None:
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"{username or 'anon'}-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        if tls:
            self.c.tls_set(ca_certs=str(server.certs / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.connack = threading.Event()
        self.reason: int | None = None
        self.got: list[tuple[str, bytes]] = []
        self.arrived = threading.Event()
        self.subscribed = threading.Event()
        self.pubacks: dict[int, int] = {}
        self.disconnected = threading.Event()
        self.acked = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        self.c.connect(server.host, server.port if tls else server.plain_port)
        self.c.loop_start()
        assert self.connack.wait(WAIT_S), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.reason = rc.value
        self.connack.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.got.append((msg.topic, msg.payload))
        self.arrived.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self.acked:
            self.pubacks[mid] = rc.value
            self.acked.notify_all()

    def send(self, topic: str, payload: bytes) -> None:
        """QoS 1 publish without waiting for its PUBACK."""
        assert self.c.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """QoS 1 publish; returns the PUBACK reason code."""
        info = self.c.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, WAIT_S), "no PUBACK"
            return self.pubacks[info.mid]

    def subscribe(self, topic_filter: str) -> None:
        self.subscribed.clear()
        self.c.subscribe(topic_filter, qos=1)
        assert self.subscribed.wait(WAIT_S)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(broker: tuple[RepoBroker, dict[str, str]]) -> Iterator[Any]:
    server, secrets = broker
    made: list[Client] = []

    def make(user: str | None, password: str | None = None, *, tls: bool = True,
             client_id: str | None = None) -> Client:
        pw = secrets.get(user or "", "") if password is None else password
        c = Client(server, user, pw if user is not None else None, tls=tls, client_id=client_id)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _flush(c: Client, pole: str | None = None) -> None:
    """A round trip through the broker (a QoS 1 publish the client may make): what the broker sent
    the client before has arrived once the PUBACK is back, since both travel the same connection."""
    topic = topics.cmd_ack("north", pole) if pole else topics.SYS + f"/test/{uuid.uuid4().hex}"
    assert c.publish(topic) in (0, 16)  # 16: accepted, no matching subscriber


def test_anonymous_and_wrong_passwords_are_refused(clients: Any) -> None:
    for tls in (True, False):
        anon = clients(None, tls=tls)
        assert anon.reason in (134, 135), anon.reason  # bad user name or password / not authorised
        bad = clients(POLE_A, "not-the-password", tls=tls)
        assert bad.reason in (134, 135), bad.reason


def test_a_pole_cannot_publish_as_another_pole(clients: Any) -> None:
    gw = clients(credentials.GATEWAY_USER)
    assert gw.reason == 0
    gw.subscribe(topics.filter_for("telemetry"))
    a = clients(POLE_A)
    assert a.reason == 0
    own = topics.telemetry("north", POLE_A)
    assert a.publish(own, b"mine") == 0
    assert a.publish(topics.telemetry("north", POLE_B), b"forged") == NOT_AUTHORIZED
    assert a.publish(topics.status("north", POLE_B), b"forged") == NOT_AUTHORIZED
    assert a.publish(topics.alert("north", POLE_A, "leakage.critical"), b"forged") == NOT_AUTHORIZED
    assert a.publish(topics.cmd("north", POLE_B), b"forged") == NOT_AUTHORIZED
    assert a.publish(topics.deadletter("bad_json"), b"forged") == NOT_AUTHORIZED
    assert a.publish(topics.cmd_ack("north", POLE_A), b"ack") in (0, 16)  # 16: no subscriber
    assert gw.arrived.wait(WAIT_S)
    _flush(gw)
    assert gw.got == [(own, b"mine")]


def test_the_gateway_reads_all_telemetry_and_status(clients: Any) -> None:
    gw = clients(credentials.GATEWAY_USER)
    gw.subscribe(topics.shared("gateways", topics.filter_for("telemetry")))
    gw.subscribe(topics.filter_for("status"))
    sent = []
    for district, pole in (("north", POLE_A), ("south", POLE_B)):
        c = clients(pole)
        for t in (topics.telemetry(district, pole), topics.status(district, pole)):
            assert c.publish(t, pole.encode()) == 0
            sent.append((t, pole.encode()))
    _flush(gw)
    assert sorted(gw.got) == sorted(sent)


def test_a_pole_reads_only_its_own_commands(clients: Any) -> None:
    a, b = clients(POLE_A), clients(POLE_B)
    a.subscribe(topics.cmd("north", POLE_A))
    a.subscribe(topics.cmd("north", POLE_B))  # not allowed: must never deliver
    a.subscribe(topics.filter_for("telemetry"))  # not allowed either
    b.subscribe(topics.cmd("north", POLE_B))
    gw = clients(credentials.GATEWAY_USER)
    assert gw.publish(topics.cmd("north", POLE_B), b"for-b") == 0
    assert gw.publish(topics.cmd("north", POLE_A), b"for-a") == 0
    assert b.publish(topics.telemetry("north", POLE_B), b"b-data") == 0
    assert b.arrived.wait(WAIT_S)
    _flush(a, POLE_A)
    _flush(b, POLE_B)
    assert a.got == [(topics.cmd("north", POLE_A), b"for-a")]
    assert b.got == [(topics.cmd("north", POLE_B), b"for-b")]


def test_oversized_messages_are_refused(clients: Any) -> None:
    gw = clients(credentials.GATEWAY_USER)
    gw.subscribe(topics.filter_for("telemetry"))
    a = clients(POLE_A)
    own = topics.telemetry("north", POLE_A)
    assert a.publish(own, b"x" * 262_144) == 0  # the gateway's MAX_PAYLOAD_BYTES: still accepted
    a.send(own, b"y" * 270_336)  # a packet over max_packet_size: the broker hangs up
    assert a.disconnected.wait(WAIT_S)
    _flush(gw)
    assert [(t, len(p)) for t, p in gw.got] == [(own, 262_144)]


@pytest.mark.parametrize("tls", [True, False], ids=["tls-listener", "plain-listener"])
def test_nobody_can_take_another_clients_id(clients: Any, tls: bool) -> None:
    """use_username_as_clientid on every listener: a pole logging in with the gateway's client id, or
    with another pole's, gets a session of its own name and disconnects nobody."""
    gw = clients(credentials.GATEWAY_USER, tls=tls, client_id=credentials.GATEWAY_USER)
    gw.subscribe(topics.filter_for("telemetry"))
    b = clients(POLE_B, tls=tls, client_id=POLE_B)
    b.subscribe(topics.cmd("north", POLE_B))
    for target in (credentials.GATEWAY_USER, POLE_B):
        thief = clients(POLE_A, tls=tls, client_id=target)
        assert thief.reason == 0
        # what it sends is still confined to its own username's topics
        assert thief.publish(topics.telemetry("north", POLE_B), b"forged") == NOT_AUTHORIZED
        assert thief.publish(topics.telemetry("north", POLE_A), target.encode()) == 0
        thief.close()
    assert not gw.disconnected.is_set() and not b.disconnected.is_set()
    _flush(gw)
    assert gw.got == [(topics.telemetry("north", POLE_A), credentials.GATEWAY_USER.encode()),
                      (topics.telemetry("north", POLE_A), POLE_B.encode())]


def test_each_gateway_has_its_own_user_and_the_ops_user_reads_and_commands(clients: Any) -> None:
    gw0 = clients(credentials.GATEWAY_USER)
    gw1 = clients("lampwatch.gw-1")
    ops = clients(credentials.OPS_USER)
    assert (gw0.reason, gw1.reason, ops.reason) == (0, 0, 0)
    for c in (gw1, ops):
        c.subscribe(topics.filter_for("telemetry"))
    ops.subscribe(topics.SYS + "/gateway/+/status")
    a = clients(POLE_A)
    a.subscribe(topics.cmd("north", POLE_A))
    assert a.publish(topics.telemetry("north", POLE_A), b"t") == 0
    assert gw0.publish(topics.gateway_status(credentials.GATEWAY_USER), b'{"state":"online"}') in (0, 16)
    # the operators' user: commands and its own _sys/ops branch; nothing a pole or a gateway writes
    assert ops.publish(topics.cmd("north", POLE_A), b"ping") == 0
    assert ops.publish(topics.SYS + "/ops/ack/x", b"ack") in (0, 16)
    for forged in (topics.telemetry("north", POLE_A), topics.status("north", POLE_A),
                   topics.alert("north", POLE_A, "leakage.critical"), topics.deadletter("bad_json"),
                   topics.gateway_status(credentials.GATEWAY_USER)):
        assert ops.publish(forged, b"forged") == NOT_AUTHORIZED, forged
    _flush(gw1)
    assert ops.publish(topics.SYS + "/ops/flush") in (0, 16)  # the round trip _flush makes, on its branch
    _flush(a, POLE_A)
    assert (topics.telemetry("north", POLE_A), b"t") in gw1.got
    assert (topics.telemetry("north", POLE_A), b"t") in ops.got
    assert (topics.gateway_status(credentials.GATEWAY_USER), b'{"state":"online"}') in ops.got
    assert a.got == [(topics.cmd("north", POLE_A), b"ping")]
