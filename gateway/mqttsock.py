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
"""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

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


class BufferedClient(mqtt.Client):
    """paho's client, reading through :class:`BufferedSocket` on plain connections."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        return BufferedSocket(sock) if type(sock) is socket.socket else sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(MAX_PACKETS_PER_READ):  # the packets already buffered, then back to paho's loop
            sock = self._sock
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not isinstance(sock, BufferedSocket) or not sock.pending():
                break
            rc = super().loop_read(1)
        return rc
