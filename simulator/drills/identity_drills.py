"""Identity drills on the repository's production broker config: ``session-hijack``.

Mosquitto is started from the repository's mosquitto.conf, rendered for bare metal exactly as
``lampwatch-ingest broker-config`` renders it (TLS device listener, passwords, ACL, queue limits,
``use_username_as_clientid``). The only test adaptations: both listeners on free ports bound to
127.0.0.1, and ``user root`` so the broker can read the temp dir. Certificates come from
``lampwatch-ingest certs`` (openssl), credentials from ``lampwatch-ingest credentials``.

session-hijack, step by step:

1. a real gateway process logs in as its own user ``lampwatch.gw-0`` (client id = username) and
   stores into SQLite; a victim pole logs in with a persistent session, subscribes to its commands
   and goes offline; an operator command is queued for it;
2. the gateway is killed with SIGKILL (its persistent session stays on the broker) and
   ``messages`` telemetry samples are published by real poles over TLS, each with its own login:
   the broker queues them for the gateway;
3. an attacker pole with valid credentials logs in with a clean start under the gateway's client
   id, then under the victim's client id (on a broker that honours the client id, each login
   discards that session and everything queued in it);
4. the gateway comes back: every queued sample must be stored, and the victim's session must still
   be there with its queued command.

The verdict line is the drills' usual one; ``stored`` counts distinct (pole, seq) in the store.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import topics
from ingest import broker as brokerfiles
from ingest import credentials
from ingest.sqlite import SqliteStore
from simulator.city import City, CityConfig
from simulator.drills import DrillResult
from simulator.drills.gateway_drills import Log
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream
from testbed.gateway import GatewayProcess
from testbed.servers import Mosquitto, free_port

WAIT_S = 30.0
GATEWAY = credentials.GATEWAY_USER


class ProductionBroker(Mosquitto):
    """Mosquitto running the repository's mosquitto.conf as rendered for bare metal (see above)."""

    def __init__(self, broker_dir: Path, *, identity: bool = True) -> None:
        super().__init__()  # self.port: the TLS listener
        self.plain_port = free_port()
        self.broker_dir = broker_dir
        self.identity = identity

    def listen_ports(self) -> tuple[int, ...]:
        return (self.port, self.plain_port)

    def config_text(self) -> str:
        text = brokerfiles.bare_metal_config(brokerfiles.repository_config().read_text(), self.broker_dir,
                                             tls_port=self.port, plain_port=self.plain_port)
        text, n = re.subn(rf"^listener {self.port}$", f"listener {self.port} {self.host}", text, flags=re.M)
        assert n == 1, "the rendered config has no TLS listener line"
        if not self.identity:  # the config before this drill existed: client ids as the client sends them
            text = re.sub(r"^use_username_as_clientid true$", "# (drill: removed)", text, flags=re.M)
        return "# drill-only: stay root to read the temp dir\nuser root\n" + text


class _Login:
    """One paho MQTT 5 client logged in with a username (TLS to the device listener, or plain)."""

    def __init__(self, server: ProductionBroker, user: str, password: str, *, client_id: str,
                 tls: bool, clean_start: bool = True, session_s: int = 0) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls:
            self.c.tls_set(ca_certs=str(server.broker_dir / "certs" / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        self.c.username_pw_set(user, password)
        self.connack = threading.Event()
        self.reason = -1
        self.session_present = False
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Condition()
        self.acked: dict[int, int] = {}
        self.subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = lambda *_a: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_s
        self.c.connect(server.host, server.port if tls else server.plain_port, clean_start=clean_start,
                       properties=props)
        self.c.loop_start()
        if not self.connack.wait(WAIT_S):
            raise RuntimeError(f"no CONNACK for {user}")

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.reason = rc.value
        self.session_present = bool(getattr(flags, "session_present", False))
        self.connack.set()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, bytes(m.payload)))
            self.lock.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self.lock:
            self.acked[mid] = rc.value
            self.lock.notify_all()

    def publish_all(self, msgs: list[tuple[str, bytes]]) -> list[int]:
        """QoS 1 publishes; returns the PUBACK reason codes once all are back."""
        mids = []
        for topic, payload in msgs:
            info = self.c.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed locally: {mqtt.error_string(info.rc)}")
            mids.append(info.mid)
        with self.lock:
            if not self.lock.wait_for(lambda: all(m in self.acked for m in mids), WAIT_S):
                raise RuntimeError("PUBACKs missing")
            return [self.acked[m] for m in mids]

    def subscribe(self, topic_filter: str) -> None:
        self.subscribed.clear()
        self.c.subscribe(topic_filter, qos=1)
        if not self.subscribed.wait(WAIT_S):
            raise RuntimeError("no SUBACK")

    def wait_messages(self, n: int, timeout_s: float) -> list[tuple[str, bytes]]:
        with self.lock:
            self.lock.wait_for(lambda: len(self.got) >= n, timeout_s)
            return list(self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@contextlib.contextmanager
def _logins() -> Iterator[list[_Login]]:
    made: list[_Login] = []
    try:
        yield made
    finally:
        for login in made:
            with contextlib.suppress(Exception):
                login.close()


def _wait_online(server: ProductionBroker, pw: dict[str, str], since_ms: int, timeout_s: float = 60.0) -> None:
    """Block until the gateway's retained status says online (it publishes that once subscribed)."""
    with _logins() as made:
        ops = _Login(server, credentials.OPS_USER, pw[credentials.OPS_USER], tls=False,
                     client_id=f"lampwatch-status-{secrets.token_hex(3)}")
        made.append(ops)
        ops.subscribe(topics.gateway_status(GATEWAY))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _t, payload in ops.wait_messages(len(ops.got) + 1, 0.5):
                with contextlib.suppress(ValueError):
                    st = json.loads(payload)
                    if st.get("state") == "online" and st.get("ts", 0) >= since_ms:
                        return
    raise RuntimeError(f"gateway {GATEWAY} did not come online within {timeout_s:.0f} s; broker log: "
                       f"{' | '.join(server.log_tail(8).splitlines())}")


def _stored(path: Path) -> tuple[int, int]:
    store = SqliteStore(path)
    try:
        rows = store.select("telemetry")
    finally:
        store.close()
    return len({(r["pole"], r["seq"]) for r in rows}), len(rows)


def session_hijack(messages: int = 500, *, poles: int = 5, identity: bool = True, settle_s: float = 90.0,
                   seed: int = 11, log: Log = print) -> DrillResult:
    """See the module docstring. ``identity=False`` runs it on the config without
    ``use_username_as_clientid`` (what main had before), which must FAIL."""
    if messages < 1 or poles < 1:
        raise ValueError("messages and poles must be at least 1")
    city = City(CityConfig(seed=seed, poles=poles + 2, districts=1))
    victim, attacker, *senders = [p.pole_id for p in city.poles]
    checks: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lampwatch-hijack-") as tmp_name, _logins() as made:
        tmp = Path(tmp_name)
        bdir = tmp / "broker"
        credentials.write_credentials(bdir, [p.pole_id for p in city.poles])
        brokerfiles.make_certs(bdir / "certs")
        (bdir / "data").mkdir()
        pw = dict(line.split(",", 1) for line in (bdir / "secrets.csv").read_text().splitlines()[1:])
        with ProductionBroker(bdir, identity=identity) as server:
            log(f"broker: repository config, use_username_as_clientid {'on' if identity else 'OFF'}, "
                f"TLS :{server.port}, plain :{server.plain_port}")
            store_path = tmp / "store.sqlite"
            gw = GatewayProcess(server, tmp / "state", tmp / "gateway.log", mqtt_port=server.plain_port,
                                mqtt_username=GATEWAY, mqtt_password=pw[GATEWAY], store="sqlite",
                                sqlite_path=str(store_path))
            since = int(time.time() * 1000)
            gw.start()
            try:
                _wait_online(server, pw, since)
                log(f"gateway online as {GATEWAY}")
                # the victim: a persistent session with a command waiting in it
                v = _Login(server, victim, pw[victim], client_id=victim, tls=True, clean_start=True,
                           session_s=3600)
                v.subscribe(topics.cmd(city.poles[0].district, victim))
                v.close()
                # closed at once: every lampwatch.ops login has the client id "lampwatch.ops", and two
                # of them (this one and _wait_online's), each reconnecting, would disconnect each other
                ops = _Login(server, credentials.OPS_USER, pw[credentials.OPS_USER], tls=False,
                             client_id=f"lampwatch-ops-{secrets.token_hex(3)}")
                cmd_payload = b'{"drill":"queued command"}'
                try:
                    ops.publish_all([(topics.cmd(city.poles[0].district, victim), cmd_payload)])
                finally:
                    ops.close()
                gw.kill()
                log(f"gateway killed (SIGKILL); publishing {messages} samples from {len(senders)} poles over TLS")
                n_ticks = -(-messages // len(senders))
                stream = TelemetryStream(city, SignalModel(city, seed), (), step_ms=10_000, seed=seed,
                                         start_ms=int(time.time() * 1000) - n_ticks * 10_000)
                by_pole: dict[str, list[tuple[str, bytes]]] = {p: [] for p in senders}
                sent = 0
                for _ in range(n_ticks):
                    for topic, payload in stream.tick():
                        sender = str(topics.parse(topic).pole)
                        if sender in by_pole and sent < messages:
                            by_pole[sender].append((topic, payload))
                            sent += 1
                codes: list[int] = []
                for pole, msgs in by_pole.items():
                    c = _Login(server, pole, pw[pole], client_id=pole, tls=True)
                    made.append(c)
                    codes += c.publish_all(msgs)
                refused = sum(1 for rc in codes if rc not in (0, 16))
                if refused:
                    checks.append(f"{refused} telemetry publishes refused by the broker")
                log(f"published {sent}; PUBACK reason codes {dict(collections.Counter(codes))}")
                # the attack: a real pole's valid login, a clean start under someone else's client id
                for target in (GATEWAY, victim):
                    a = _Login(server, attacker, pw[attacker], client_id=target, tls=True, clean_start=True)
                    log(f"attacker {attacker} logged in with client id {target!r}: CONNACK {a.reason}")
                    time.sleep(0.5)
                    a.close()
                since = int(time.time() * 1000)
                gw.start()
                _wait_online(server, pw, since)
                log("gateway back")
                deadline = time.monotonic() + settle_s
                stored, points = _stored(store_path)
                while stored < sent and time.monotonic() < deadline:
                    time.sleep(0.5)
                    stored, points = _stored(store_path)
                time.sleep(1.0)  # anything still in flight lands, then count once more
                stored, points = _stored(store_path)
                log(f"store holds {stored} distinct samples ({points} points)")
                # the victim comes back to its session
                v = _Login(server, victim, pw[victim], client_id=victim, tls=True, clean_start=False,
                           session_s=3600)
                made.append(v)
                got = v.wait_messages(1, 5.0)
                if not v.session_present:
                    checks.append(f"victim {victim}'s session was gone when it came back")
                if (topics.cmd(city.poles[0].district, victim), cmd_payload) not in got:
                    checks.append(f"victim {victim} never received the command queued for it")
                log(f"victim back: session_present={v.session_present} queued command received={bool(got)}")
            finally:
                gw.stop()
    return DrillResult("session-hijack", sent, stored, points - stored, failed_checks=tuple(checks))
