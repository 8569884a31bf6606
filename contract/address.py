"""Broker addresses as configs spell them: ``host:port`` (``[v6]:port`` for IPv6), pure."""

from __future__ import annotations


def parse_broker(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError with the reason."""
    host, sep, port = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"broker {address!r} is not host:port (port 1-65535)")
    return host, int(port)


def parse_brokers(text: str) -> tuple[tuple[str, int], ...]:
    """A comma-separated list of ``host:port`` (empty items ignored)."""
    return tuple(parse_broker(b) for b in text.split(",") if b.strip())
