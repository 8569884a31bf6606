"""The MQTT adapter: one paho 2.x client (MQTT 5) as ONE non-blocking state machine.

paho's own threads (``loop_start``/``loop_forever``) are not used. :class:`MqttLink` never blocks
and never sleeps (one exception: paho opens a connection with a blocking ``connect()``, bounded by
``connect_timeout_s``); whoever drives it (:class:`edge.loop.EdgeLoop`, for one pole or for a
simulated fleet alike) selects on :meth:`MqttLink.socket`, calls :meth:`read` / :meth:`write` when
the socket is ready (paho's documented external-loop API: ``loop_read`` / ``loop_write``, with
``want_write``), and calls :meth:`step` at the deadline it returned last or whenever something
changed. :meth:`step` is the whole state machine::

    no socket, not closing   wait for the backoff deadline, then (if the driver's connect gate lets it)
                             register the Last Will and open a connection
    socket                   paho's ``loop_misc`` (keepalive) every ``misc_s``; drop a connection
                             that got no CONNACK in time
    closing                  publish the final status (retained, QoS 1) while connected and wait for
                             its ack (bounded), then DISCONNECT (no Last Will) and wait for paho to
                             write it (bounded); then closed: ``step`` returns None

The application owns reconnecting, with jittered exponential backoff (equal jitter:
``d = min(max, min * 2**n)``, wait ``d/2 + U(0, d/2)``; ``n`` resets only after a connection that
lasted ``STABLE_S``), so a fleet that lost its broker does not come back in lock-step.

Session: client id = pole id, ``clean_start=False`` and a Session Expiry Interval, so QoS 1 messages in
flight at a disconnect are re-sent by paho after the reconnect (same packet ids, DUP set) and the
broker keeps queued commands for us while we are away.

Brokers: ``LinkSettings.brokers`` is an ordered address list (a cluster's nodes). Every failed attempt
and every lost connection moves to the next address (wrapping), each attempt after the usual backoff; a
one-element list (the default: ``host``/``port``) behaves exactly as before. paho re-sends the in-flight
QoS 1 messages on whichever node accepts us, whether that node has our session or not.

``mqtt_version=311`` (brokers without MQTT 5, e.g. NATS): clean session off instead of clean start +
Session Expiry Interval (the broker keeps the session until it is cleaned), and no reason codes: every
PUBACK reads as success, so a PUBLISH the broker's ACL refuses is lost silently (docs/scaling.md says
how the agent and the gateway live with that).

Threads: everything but :meth:`request_close` and the read-only properties runs on the driving
thread; the handler's callbacks run there too, so neither needs locks against paho.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("lampwatch.edge.link")

#: a connection that lived this long resets the backoff; one the broker drops sooner (bad ACL, a
#: client id taken over by a twin) keeps growing it, so a misconfigured pole cannot hammer the broker
STABLE_S = 10.0
#: once DISCONNECT is queued, how long paho may take to write it before the socket is cut
DISCONNECT_WAIT_S = 2.0


class LinkHandler(Protocol):
    def will(self) -> tuple[str, bytes]:
        """The Last Will (topic, payload) to register with the next connection attempt."""
        ...

    def on_connected(self, session_present: bool) -> None: ...

    def on_disconnected(self, reason: str) -> None: ...

    def on_published(self, mid: int, reason_code: int, reason: str) -> None: ...

    def on_message(self, topic: str, payload: bytes) -> None: ...


class SocketWatcher(Protocol):
    """Told (on the driving thread) when paho opens or is about to close a link's socket."""

    def socket_opened(self, link: MqttLink, sock: Any) -> None: ...

    def socket_closed(self, link: MqttLink, sock: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkSettings:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86_400
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout_s: float = 5.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    max_inflight: int = 32
    clean_start: bool = False
    #: failover order, tried in turn; empty: just (host, port)
    brokers: tuple[tuple[str, int], ...] = ()
    mqtt_version: int = 5  # 5, or 311 (no reason codes, no session expiry)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return self.brokers or ((self.host, self.port),)


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: in [d/2, d] with d = min(hi, lo * 2**attempt)."""
    d = min(hi, lo * (2 ** min(attempt, 30)))
    return d / 2 + rng.uniform(0, d / 2)


def make_client(s: LinkSettings) -> mqtt.Client:
    v5 = s.mqtt_version == 5
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else s.clean_start)
    if s.username:
        c.username_pw_set(s.username, s.password)
    if s.tls or s.tls_ca:
        c.tls_set(ca_certs=s.tls_ca, certfile=s.tls_cert, keyfile=s.tls_key)
    c.max_inflight_messages_set(s.max_inflight)
    c.max_queued_messages_set(0)
    c.connect_timeout = s.connect_timeout_s
    aim(c, s, 0)
    return c


def aim(c: mqtt.Client, s: LinkSettings, index: int) -> None:
    """Point a closed client at ``s.addresses[index]`` for its next ``reconnect()``."""
    host, port = s.addresses[index]
    if s.mqtt_version != 5:
        c.connect_async(host, port, s.keepalive_s)
        return
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = s.session_expiry_s
    c.connect_async(host, port, s.keepalive_s, clean_start=s.clean_start, properties=props)


class MqttLink:
    """One pole's MQTT connection as a non-blocking state machine (see the module docstring)."""

    def __init__(self, settings: LinkSettings, handler: LinkHandler, *, rng: random.Random | None = None) -> None:
        self.s = settings
        self.handler = handler
        self.rng = rng or random.Random()
        self.client = make_client(settings)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.counts: dict[str, int] = {"connects": 0, "disconnects": 0, "connect_failures": 0}
        self.last_error = ""
        #: keepalive and CONNACK-timeout checks this often (paho's loop_misc)
        self.misc_s = min(1.0, settings.keepalive_s / 4)
        self.closed = threading.Event()  # set once step() finished the clean shutdown
        self._attempt = 0
        self._broker = 0  # index into settings.addresses of the broker tried or used now
        self._next_attempt = 0.0
        self._next_misc = 0.0
        self._connack = False
        self._connecting_since: float | None = None
        self._connected_at = 0.0
        self._closing = False
        self._final: tuple[str, bytes] | None = None
        self._final_deadline = 0.0
        self._final_mid: int | None = None
        self._final_done = False
        self._disconnect_deadline: float | None = None  # DISCONNECT queued, socket not yet closed

    # --- observation (any thread) ----------------------------------------------------------------
    @property
    def where(self) -> str:
        """host:port of the broker this link uses (or tries next)."""
        host, port = self.s.addresses[self._broker]
        return f"{host}:{port}"

    @property
    def connected(self) -> bool:
        return self._connack and self.client.socket() is not None

    @property
    def closing(self) -> bool:
        return self._closing

    def request_close(self, final: tuple[str, bytes] | None = None, timeout_s: float = 5.0) -> None:
        """Ask for a clean shutdown (any thread; the driver then steps the link to :attr:`closed`):
        publish ``final`` (retained, QoS 1) if connected and wait up to ``timeout_s`` for its ack, then
        disconnect without the Last Will."""
        self._final = final
        self._final_deadline = time.monotonic() + timeout_s
        self._closing = True

    # --- the driver's surface (driving thread) ---------------------------------------------------
    def watch(self, watcher: SocketWatcher) -> None:
        """Have ``watcher`` told when the socket opens and before it closes (to keep a selector true)."""
        self.client.on_socket_open = lambda _c, _u, sock: watcher.socket_opened(self, sock)
        self.client.on_socket_close = lambda _c, _u, sock: watcher.socket_closed(self, sock)

    def socket(self) -> Any | None:
        return self.client.socket()

    def wants_write(self) -> bool:
        return self.client.socket() is not None and self.client.want_write()

    def read(self) -> None:
        """The socket is readable: let paho read (callbacks fire here)."""
        self.client.loop_read()

    def write(self) -> None:
        """The socket is writable: let paho write what it has queued."""
        if self.client.socket() is not None:
            self.client.loop_write()

    def step(self, now: float, may_connect: Callable[[float], bool] | None = None) -> float | None:
        """Advance the state machine at monotonic time ``now``; return when to step again at the
        latest (sooner if the socket becomes ready or the link is woken), or None once closed.
        ``may_connect(now)`` is asked only when a connection attempt is due (the driver's pacing)."""
        if self.closed.is_set():
            return None
        if self._closing:
            nxt = self._close_step(now)
            if nxt is None:
                self.closed.set()
            return nxt
        if self.client.socket() is None:
            if now < self._next_attempt:
                return self._next_attempt
            if may_connect is not None and not may_connect(now):
                return now + 0.02
            self._connect(now)
        self._turn(now)
        return self._deadline(now)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Queue a publish; return its packet id, or None when paho refused it (not connected, full)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("publish on %s refused by paho: %s", topic, mqtt.error_string(info.rc))
            return None
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos))

    # --- the state machine ------------------------------------------------------------------------
    def _turn(self, now: float) -> None:
        """What an open socket needs besides reading and writing: TLS bytes paho has buffered,
        keepalive, the CONNACK timeout."""
        sock = self.client.socket()
        if sock is None:
            return
        if _pending(sock):
            self.client.loop_read()
        if self.client.socket() is None or now < self._next_misc:
            return
        self._next_misc = now + self.misc_s
        self.client.loop_misc()
        if self._connecting_since is not None and self.client.socket() is not None:
            if now - self._connecting_since > self.s.connect_timeout_s + self.s.keepalive_s:
                log.warning("no CONNACK from %s; dropping the connection", self.where)
                self._abort_socket()

    def _deadline(self, now: float) -> float:
        sock = self.client.socket()
        if sock is None:
            return self._next_attempt
        if _pending(sock):
            return now
        return self._next_misc

    def _connect(self, now: float) -> None:
        topic, payload = self.handler.will()
        self.client.will_set(topic, payload, qos=1, retain=True)
        if len(self.s.addresses) > 1:
            aim(self.client, self.s, self._broker)
        self._connack = False
        try:
            self.client.reconnect()
        except (OSError, ssl.SSLError, ValueError) as exc:  # refused, unreachable, TLS handshake
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        self._connecting_since = now
        self._next_misc = now + self.misc_s

    def _failed(self, why: str) -> None:
        self.counts["connect_failures"] += 1
        delay = backoff_delay(self._attempt, self.s.backoff_min_s, self.s.backoff_max_s, self.rng)
        self._attempt += 1
        where = self.where
        self._broker = (self._broker + 1) % len(self.s.addresses)  # failover: the next address next time
        if why != self.last_error:
            log.warning("cannot reach broker %s (%s); retrying with backoff (next: %s)", where, why, self.where)
        else:
            log.debug("broker still unreachable (%s); next try in %.1f s", why, delay)
        self.last_error = why
        self._next_attempt = time.monotonic() + delay

    def _abort_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]  # next loop_read sees EOF
            self.client.loop_read()

    def _close_step(self, now: float) -> float | None:
        """One step of the clean shutdown; None when done."""
        if self._disconnect_deadline is not None:  # DISCONNECT queued: wait until paho wrote it
            if self.client.socket() is not None and now >= self._disconnect_deadline:
                self._abort_socket()
            return None if self.client.socket() is None else self._disconnect_deadline
        if self.connected:
            if self._final is not None and self._final_mid is None and not self._final_done:
                topic, payload = self._final
                self._final_mid = self.publish(topic, payload, qos=1, retain=True)
                if self._final_mid is None:
                    self._final_done = True
            if not (self._final_done or self._final is None or now >= self._final_deadline):
                self._turn(now)  # keep the connection alive while the final status is acknowledged
                return min(self._final_deadline, self._deadline(now))
        if self.client.socket() is None:
            return None
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_write()
        if self.client.socket() is None:
            return None
        self._disconnect_deadline = now + DISCONNECT_WAIT_S
        return self._disconnect_deadline

    # --- paho callbacks (driving thread, inside read/write/step) ----------------------------------
    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self._connecting_since = None
        if rc.is_failure:
            log.error("broker %s refused pole %s: %s", self.where, self.s.client_id, rc)
            self._failed(f"broker refused the connection: {rc}")
            return
        self._connack = True
        self._connected_at = time.monotonic()
        self.last_error = ""
        self.counts["connects"] += 1
        log.info("connected to %s (session present: %s)", self.where, flags.session_present)
        self.handler.on_connected(bool(flags.session_present))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        was = self._connack
        self._connack = False
        self._connecting_since = None
        if self._closing:
            return
        if was:
            if time.monotonic() - self._connected_at >= STABLE_S:
                self._attempt = 0  # it was a good connection: start the backoff over
            self.counts["disconnects"] += 1
            log.warning("disconnected from broker %s (%s); reconnecting with backoff", self.where, rc)
            self.last_error = why = f"connection lost: {rc}"
            self._failed(why)
            self.handler.on_disconnected(str(rc))
        elif self._next_attempt <= time.monotonic():
            self._failed(f"connection closed before CONNACK: {rc}")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        code = int(getattr(rc, "value", rc))
        if mid == self._final_mid:
            self._final_done = True
        self.handler.on_published(mid, code, str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.handler.on_message(msg.topic, bytes(msg.payload))


def _pending(sock: Any) -> bool:
    """TLS: bytes already decrypted into the SSL object, which the selector cannot see."""
    return bool(hasattr(sock, "pending") and sock.pending() > 0)


def probe(s: LinkSettings, cmd_topic: str, timeout_s: float = 10.0) -> str:
    """Connect once (clean session, client id ``<id>-check`` so a running agent is not kicked off),
    subscribe to ``cmd_topic``, disconnect. Return a one-line description; raise BrokerError."""
    from contract.errors import BrokerError

    check = LinkSettings(**{**{f: getattr(s, f) for f in s.__slots__},  # type: ignore[attr-defined]
                            "client_id": f"{s.client_id}-check", "clean_start": True, "session_expiry_s": 0})
    c = make_client(check)
    state: dict[str, Any] = {}
    c.on_connect = lambda _c, _u, _f, rc, _p: state.__setitem__("connack", rc)
    c.on_subscribe = lambda _c, _u, _m, rcs, _p: state.__setitem__("suback", rcs)
    where = "{}:{}".format(*s.addresses[0])
    try:
        c.reconnect()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BrokerError(f"cannot reach broker {where}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    try:
        subscribed = False
        while time.monotonic() < deadline:
            sock = c.socket()
            if sock is None:
                rc = state.get("connack")
                raise BrokerError(f"broker {where} closed the connection"
                                  + (f": {rc}" if rc is not None and rc.is_failure else ""))
            with contextlib.suppress(OSError, ValueError):
                select.select([sock], [sock] if c.want_write() else [], [], 0.05)
            c.loop_read()
            if c.socket() is not None:
                c.loop_write()
            rc = state.get("connack")
            if rc is not None and rc.is_failure:
                raise BrokerError(f"broker {where} refused the connection: {rc}")
            if rc is not None and not subscribed:
                c.subscribe(cmd_topic, options=mqtt.SubscribeOptions(qos=1))
                subscribed = True
            if "suback" in state:
                sub = state["suback"][0]
                if sub.is_failure:
                    raise BrokerError(f"broker {where} accepted the connection but refused the "
                                      f"subscription to {cmd_topic}: {sub}")
                version = "5" if s.mqtt_version == 5 else "3.1.1"
                tls = "on" if s.tls or s.tls_ca else "off"
                return (f"broker {where} accepted {s.client_id} (MQTT {version}, TLS {tls}"
                        f"{', user ' + s.username if s.username else ''}); {cmd_topic} granted QoS {int(sub.value)}")
        raise BrokerError(f"no answer from broker {where} within {timeout_s:.0f} s")
    finally:
        with contextlib.suppress(Exception):
            if c.socket() is not None:
                c.disconnect()
                c.loop_write()
        with contextlib.suppress(Exception):
            sock = c.socket()
            if sock is not None:
                sock.close()
