"""gateway.mqttsock: the buffered socket hands paho exactly the bytes, in order, and says what it holds."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import mqttsock
from gateway.mqttsock import BufferedSocket, split_publishes


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


# --- the PUBLISH splitter: the same packets paho's decoder reads, and nothing it should not take --------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: bytes, payload: bytes, qos: int, mid: int, v5: bool, props: bytes = b"") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if v5:
        body += _varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + _varint(len(body)) + body


_topics = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).map(str.encode)
# MQTT 5 properties a broker may put on a PUBLISH: payload format (1), message expiry (2), content type (3),
# user property (38); paho must read them too
_props = st.sampled_from([b"", b"\x01\x01", b"\x02\x00\x00\x0e\x10", b"\x03\x00\x04json",
                          b"\x26\x00\x01k\x00\x02vv\x01\x00"])


@settings(max_examples=300, deadline=None)
@given(packets=st.lists(st.tuples(_topics, st.binary(max_size=300), st.integers(0, 1), st.integers(1, 65535),
                                  _props), min_size=1, max_size=8),
       v5=st.booleans(), cut=st.integers(0, 10_000))
def test_the_splitter_reads_what_paho_reads_and_leaves_a_partial_packet(packets, v5, cut) -> None:  # type: ignore[no-untyped-def]
    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion


    raw = [_publish(t, p, q, m, v5, pr) for t, p, q, m, pr in packets]
    stream = b"".join(raw)
    cut = min(cut, len(stream))
    got, pos = split_publishes(stream[:cut], 0, v5, 1000)
    whole = 0  # the packets wholly inside the cut are taken, the rest is left for paho
    while whole < len(raw) and sum(map(len, raw[:whole + 1])) <= cut:
        whole += 1
    assert len(got) == whole and pos == sum(map(len, raw[:whole]))
    proto = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    for (topic, payload, mid, qos), pkt in zip(got, raw, strict=False):
        n = 1
        while pkt[n] & 0x80:
            n += 1
        ref = _packet.decode_publish(pkt[0], pkt[n + 1:], proto)
        assert (topic, payload, qos) == (ref.topic.decode(), bytes(ref.payload), ref.qos)
        assert mid == (ref.mid if qos else 0)


def test_the_splitter_stops_at_what_is_not_its_own() -> None:

    ok = _publish(b"a/b", b"x", 1, 7, False)
    for other in (b"\xd0\x00",  # PINGRESP
                  bytes([0x34]) + ok[1:],  # QoS 2
                  b"\x32\x05\x00\x00\x00\x01x",  # empty topic (an MQTT 5 alias, or malformed on 3.1.1)
                  b"\x32\x06\x00\x02\xff\xfe\x00\x01",  # topic not UTF-8
                  b"\x32\x04\x00\x09ab",  # topic length past the packet
                  b"\x32\xff\xff\xff\xff\x01"):  # a remaining length of five bytes
        got, pos = split_publishes(ok + other + ok, 0, False, 10)
        assert [g[0] for g in got] == ["a/b"] and pos == len(ok), other
    got, pos = split_publishes(ok * 5, 0, False, 3)  # the limit
    assert len(got) == 3 and pos == 3 * len(ok)


def test_a_failing_splitter_hands_everything_to_paho(monkeypatch: pytest.MonkeyPatch) -> None:
    # a bug in the splitter must not kill paho's network thread (the gateway would go deaf): it is logged,
    # switched off, and the packets it would have taken go through paho
    from paho.mqtt.enums import CallbackAPIVersion

    def broken(*_a: object) -> tuple[list[mqttsock.Publish], int]:
        raise IndexError("a bug")

    monkeypatch.setattr(mqttsock, "split_publishes", broken)
    a, b = socket.socketpair()
    try:
        c = mqttsock.BufferedClient(CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True)
        got: list[object] = []
        c.publish_sink = got.append
        sock = BufferedSocket(b)
        sock._buf, sock._pos = _publish(b"a/b", b"x", 0, 0, False) * 2, 0
        assert c._take_publishes(sock, 10) == 0 and c.publish_sink is None and sock._pos == 0 and not got
    finally:
        a.close()
        b.close()
