"""gateway.mqttsock: the buffered socket hands paho exactly the bytes, in order, and says what it holds."""

from __future__ import annotations

import socket

import pytest

from gateway import mqttsock
from gateway.mqttsock import BufferedSocket


def test_reads_are_served_from_one_recv_byte_exactly() -> None:
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        sock = BufferedSocket(b)
        data = bytes(range(256)) * 40  # 10,240 bytes in one write
        a.sendall(data)
        got = [sock.recv(1), sock.recv(1), sock.recv(300)]
        assert sock.pending() == len(data) - 302  # all of it came in with the first recv
        while sock.pending():
            got.append(sock.recv(1000))  # the last one is short: what is left
        assert b"".join(got) == data and sock.pending() == 0
        with pytest.raises(BlockingIOError):  # nothing buffered, nothing in the kernel: as a socket does
            sock.recv(1)
        a.sendall(b"xy")
        assert sock.recv(5) == b"xy" and sock.pending() == 0  # a short read is passed through as it is
        a.close()
        assert sock.recv(1) == b""  # end of stream reaches paho unchanged
        assert sock.fileno() == b.fileno()
    finally:
        a.close()
        b.close()


def test_large_reads_fill_the_buffer_by_the_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqttsock, "RECV_BYTES", 16)
    a, b = socket.socketpair()
    try:
        sock = BufferedSocket(b)
        a.sendall(b"0123456789abcdefXYZ")
        assert sock.recv(2) == b"01" and sock.pending() == 14  # one recv of 16 bytes
        assert sock.recv(100) == b"23456789abcdef"  # never more than what is buffered
        assert sock.recv(100) == b"XYZ"
    finally:
        a.close()
        b.close()
