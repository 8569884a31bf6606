"""Shared helpers for gateway tests: build real telemetry, run it through a real gateway."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract import topics
from contract.catalog import METRICS
from contract.models import Sample, Telemetry
from gateway.service import Gateway, GatewayConfig
from gateway.sink import Sink
from simulator.publisher import Publisher

T0_MS = int(time.time() * 1000) - 3_600_000  # an hour ago: inside the gateway's accepted window


def make_messages(poles: int, samples: int, seed: int = 1, district: str = "north",
                  metrics: Sequence[str] | None = None, prefix: str = "p") -> list[tuple[str, bytes, Telemetry]]:
    """One message per pole per sample with catalog-plausible values (rounded to catalog decimals)."""
    rng = np.random.default_rng(seed)
    chosen = [m for m in METRICS if metrics is None or m.name in metrics]
    out = []
    for s in range(samples):
        for p in range(poles):
            pole = f"{prefix}-{p:05d}"
            m = {}
            for met in chosen:
                lo, hi = max(met.lo, met.signal.base - 10), min(met.hi, met.signal.base + 10)
                v = float(rng.uniform(lo, hi)) if met.dtype == "float" else float(rng.integers(0, 2))
                m[met.name] = round(v, met.decimals)
            msg = Telemetry(pole=pole, boot="b1", samples=[Sample(seq=s, ts=T0_MS + s * 1000 + p, m=m)])
            out.append((topics.telemetry(district, pole), msg.model_dump_json().encode(), msg))
    return out


def wait_until(pred: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_through_gateway(broker_host: str, broker_port: int, sink: Sink, tmp: Path,
                        messages: Sequence[tuple[str, bytes]], expected_handled: int,
                        mqtt_version: int = 5, on_outcome: Any = None, **cfg: object) -> Gateway:
    """Start a gateway (``on_outcome``: its detection stage), publish every message at QoS 1, wait until
    each one is handled and the last batch is written, stop the gateway. Returns it (stopped) for its
    counters."""
    gw = Gateway(GatewayConfig(host=broker_host, port=broker_port, spool_path=str(tmp / "spool.sqlite"),
                               mqtt_version=mqtt_version, **cfg), sink,  # type: ignore[arg-type]
                 on_outcome=on_outcome)
    gw.start()
    pub = Publisher(broker_host, broker_port, "test-publisher", mqtt_version=mqtt_version).connect()
    try:
        for topic, payload in messages:
            pub.publish(topic, payload)
            pub.wait_below(5000)
        pub.flush()
        wait_until(lambda: gw.counters().get("acked", 0) >= expected_handled, what="gateway acks")
    finally:
        pub.close()
        gw.stop()
    return gw
