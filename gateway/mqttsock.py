"""A paho client that reads its socket in 64 KB gulps instead of three or four ``recv`` calls a packet.

paho 2.x reads every incoming packet with one ``recv(1)`` for the command byte, one ``recv(1)`` per
remaining-length byte and one for the body, and goes back to ``select`` after each packet: at 4,000
PUBLISHes a second that is ~15,000 system calls and as many trips through its loop, which py-spy
showed as ~20 % of the gateway's samples (``Client._loop`` and ``Client._sock_recv``, own time).

:class:`BufferedSocket` wraps the plain TCP (or Unix) socket paho creates: a ``recv`` with its buffer
empty reads up to 64 KB at once and hands out the bytes asked for; the rest is served from memory.
It tells paho about those bytes the way an SSL socket does, through ``pending()``: paho's loop then
does not wait in ``select`` while bytes remain (``Client._loop`` checks ``pending`` first), so
nothing sits in the buffer waiting for more traffic. :class:`BufferedClient.loop_read` then handles
the packets already in the buffer (at most ``MAX_PACKETS_PER_READ``) before paho's loop runs again.
End of stream and ``BlockingIOError`` pass through unchanged once the buffer is empty, so paho's
connection-lost and would-block handling is what it always was. TLS and websocket connections
are left as paho makes them (an SSL socket buffers on its own and already has ``pending``).

The PUBLISHes already whole in that buffer skip the rest of paho's per-packet path too. With a
``publish_sink`` set, :func:`split_publishes` cuts every complete QoS 0/1 PUBLISH at the front of the
buffer straight into ``(topic, payload, mid, qos)`` tuples and the sink gets each, in stream order. paho's
path for the same packet (``_packet_read``'s dictionary of partial state, ``decode_publish``, a
``Properties`` object on MQTT 5, an ``MQTTMessage``, a debug-log call, the topic-filter trie walked
for callbacks nobody registered) was ~17 % of the gateway's samples in a steady-state py-spy profile
at 3,000 msg/s. Anything the splitter does not fully understand stops it there and goes to paho as
before: another packet type, QoS 2, a packet not yet whole, an MQTT 5 topic alias (empty topic), a
topic that is not UTF-8, a length field that does not add up (paho then fails it as malformed). The
sink needs ``manual_ack`` (the client acknowledges nothing itself); the keepalive's "bytes received"
time is stamped once a gulp.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import MQTTErrorCode

log = logging.getLogger("lampwatch.gateway")

_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id
RECV_BYTES = 65_536
#: at most this many buffered packets handled per wake-up before paho's loop runs again (its writes:
#: the PUBACKs; its keepalive), however fast bytes keep arriving
MAX_PACKETS_PER_READ = 256


class BufferedSocket:
    """A socket whose reads are served from one large ``recv`` (see the module docstring)."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos < len(buf):
            end = pos + n
            self._pos = end
            return buf[pos:end]
        data = self._sock.recv(max(n, RECV_BYTES))  # b"" (closed) and BlockingIOError reach paho as they are
        if len(data) <= n:
            self._buf, self._pos = b"", 0
            return data
        self._buf, self._pos = data, n
        return data[:n]

    def pending(self) -> int:
        """Bytes received from the kernel and not yet handed to paho."""
        return len(self._buf) - self._pos if self._pos < len(self._buf) else 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def __getattr__(self, name: str) -> Any:  # send, setblocking, close, ...: the socket's own
        return getattr(self._sock, name)


#: ``(topic, payload, mid, qos)`` of one PUBLISH (mid 0 at QoS 0)
Publish = tuple[str, bytes, int, int]


def _varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    """MQTT's variable-byte integer at ``buf[i:end]`` (1-4 bytes, 7 bits each, least significant first):
    ``(value, position after it)``, or ``(0, -1)`` if it runs past ``end`` or past four bytes."""
    value = shift = 0
    for k in range(i, min(end, i + 4)):
        b = buf[k]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, k + 1
        shift += 7
    return 0, -1


def split_publishes(buf: bytes, pos: int, v5: bool, limit: int) -> tuple[list[Publish], int]:
    """The complete QoS 0/1 PUBLISH packets at ``buf[pos:]`` (at most ``limit``) and the position after
    the last one taken. Stops, taking nothing more, at the first packet it does not fully understand
    (see the module docstring): that one, and what follows, is paho's."""
    out: list[Publish] = []
    end = len(buf)
    while len(out) < limit and pos + 2 <= end:
        head = buf[pos]
        qos = (head & 0x06) >> 1
        if head & 0xF0 != 0x30 or qos > 1:  # not a PUBLISH, or QoS 2 (and the invalid 3)
            break
        rl, i = _varint(buf, pos + 1, end)  # the remaining length
        if i < 0:
            break
        stop = i + rl
        if stop > end:
            break  # not whole yet: paho reads the rest
        tlen = (buf[i] << 8 | buf[i + 1]) if i + 2 <= stop else -1
        j = i + 2 + tlen
        if tlen <= 0 or j > stop:
            break  # empty topic (an MQTT 5 alias) or a length that does not fit: paho's
        mid = 0
        if qos:
            if j + 2 > stop:
                break
            mid = buf[j] << 8 | buf[j + 1]
            j += 2
        if v5:  # the properties: a variable-byte length, then skipped (the gateway reads none)
            plen, k = _varint(buf, j, stop)
            j = k + plen
            if k < 0 or j > stop:
                break
        try:
            topic = buf[i + 2:i + 2 + tlen].decode("utf-8")
        except UnicodeDecodeError:
            break
        out.append((topic, buf[j:stop], mid, qos))
        pos = stop
    return out, pos


class BufferedClient(mqtt.Client):
    """paho's client, reading through :class:`BufferedSocket` on plain connections; with
    ``publish_sink`` set (and ``manual_ack``), buffered PUBLISHes go to it without paho's per-packet path."""

    publish_sink: Callable[[Publish], None] | None = None
    split_taken = 0  # PUBLISHes handed to the sink by the splitter (the rest went through paho's path)

    def send_pubacks(self, mids: list[int]) -> None:
        """The PUBACKs released together (in arrival order), queued as one buffer: one socket write and one
        wake-up of paho's network thread for the whole flush, instead of one of each per message (paho's
        ``ack`` queues every 4-byte PUBACK as its own packet). Each is the short form MQTT 3.1.1 and 5
        both accept (remaining length 2: with MQTT 5 it means reason code 0, success). paho sends it as
        any packet of its own: after a reconnect its queue is dropped, and the broker redelivers what was
        not acknowledged, as it would for single acks."""
        body = b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])
        self._packet_queue(PUBACK, body, 0, 1)  # the private queue of paho 2.x (pinned >= 2.1)

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        return BufferedSocket(sock) if type(sock) is socket.socket else sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        budget = MAX_PACKETS_PER_READ  # the packets already buffered, then back to paho's loop
        while budget > 0 and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            sock = self._sock
            if not isinstance(sock, BufferedSocket) or not sock.pending():
                break
            if self.publish_sink is not None and self._manual_ack and self._in_packet["command"] == 0:
                taken = self._take_publishes(sock, budget)
                budget -= taken
                if budget <= 0 or not sock.pending():
                    break
            rc = super().loop_read(1)
            budget -= 1
        return rc

    def _take_publishes(self, sock: BufferedSocket, limit: int) -> int:
        sink = self.publish_sink
        assert sink is not None
        try:
            got, pos = split_publishes(sock._buf, sock._pos, self._protocol == mqtt.MQTTv5, limit)
        except Exception:  # a bug here must not kill paho's network thread: paho reads everything from now on
            log.exception("the PUBLISH splitter failed; paho handles every packet from now on")
            self.publish_sink = None
            return 0
        sock._pos = pos
        if got:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()  # paho's clock
            for item in got:
                sink(item)
            self.split_taken += len(got)
        return len(got)
