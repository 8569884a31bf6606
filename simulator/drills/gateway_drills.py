"""Gateway fault drills on real servers: gateway-kill, store-outage, hostile-traffic.

Each starts a real Mosquitto and a real InfluxDB 1.6.7 through :mod:`testbed.servers`, runs a real
gateway (a subprocess for gateway-kill, so kill -9 is the real thing), publishes a simulated city at
QoS 1 through the multiplexed publisher, disrupts something mid-stream, waits for the system to
settle and then counts from the store itself:

* ``published`` = distinct samples the simulator produced (plus refusable hostile messages);
* ``stored``    = distinct (pole, seq) samples in InfluxDB;
* ``duplicates`` = stored points beyond one per (pole, seq);
* ``rejected``  = the hostile messages the simulator knows must be refused (its own ground truth, not
  the gateway's claim), so a hostile message that was wrongly stored shows up as ``lost < 0``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.service import Gateway, GatewayConfig
from ingest.influx1 import Influx1Store
from simulator.city import City, CityConfig
from simulator.drills import DrillResult
from simulator.hostile import ACCEPTED_KINDS, HOSTILE_KINDS, hostile_messages, routed_to_gateway
from simulator.publisher import Publisher
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream
from testbed.gateway import GatewayProcess, wait_gateway_online
from testbed.servers import InfluxDB1, Mosquitto

DRILL_DB = "drill"
REFUSED_KINDS = tuple(k for k in HOSTILE_KINDS if k not in ACCEPTED_KINDS)
Log = Callable[[str], None]


@dataclass
class DrillSpec:
    poles: int = 100
    seconds: float = 20.0  # publishing time
    rate_hz: float = 5.0  # ticks per second: poles x rate_hz messages/s
    step_ms: int = 10_000  # simulated time per tick
    seed: int = 7
    settle_s: float = 120.0  # how long to wait for the store to catch up at the end


@contextlib.contextmanager
def rig() -> Iterator[tuple[Path, Mosquitto, InfluxDB1, Influx1Store]]:
    """A temp dir, a real Mosquitto, a real InfluxDB 1.6.7 and the drill's store on it; all torn down."""
    with tempfile.TemporaryDirectory(prefix="lampwatch-drill-") as tmp, Mosquitto() as broker, \
            InfluxDB1() as influx:
        store = Influx1Store(influx.url, DRILL_DB)
        try:
            yield Path(tmp), broker, influx, store
        finally:
            store.close()


def _stored(store: Influx1Store) -> tuple[int, int]:
    """(distinct (pole, seq) samples, points) in the telemetry measurement."""
    rows = store.rows('SELECT "seq" FROM "telemetry" GROUP BY "pole"')
    return len({(r["pole"], r["seq"]) for r in rows}), len(rows)


def _wait_store(store: Influx1Store, target: int, settle_s: float, log: Log,
                count: Callable[[Influx1Store], tuple[int, int]] = _stored) -> tuple[int, int]:
    """Poll ``count`` (distinct samples, points) until ``target`` samples are stored or ``settle_s`` passed."""
    deadline = time.monotonic() + settle_s
    last = (-1, -1)
    while time.monotonic() < deadline:
        try:
            got = count(store)
        except Exception:
            time.sleep(1)
            continue
        if got != last:
            log(f"store holds {got[0]} distinct samples ({got[1]} points), want {target}")
            last = got
        if got[0] >= target:
            time.sleep(1.0)  # let anything still in flight land, then count once more
            return count(store)
        time.sleep(0.5)
    return last


def _publish_city(broker: Mosquitto, spec: DrillSpec, *, hostile_frac: float = 0.0, replay_frac: float = 0.0,
                  shuffle: bool = False, on_tick: Callable[[int, int], None] | None = None,
                  log: Log = print) -> tuple[int, int, int]:
    """Publish the city at spec.rate_hz for spec.seconds. Returns (samples, refusable, extra_sent)."""
    ticks = max(1, int(spec.seconds * spec.rate_hz))
    now = int(time.time() * 1000)
    start_ms = now - ticks * spec.step_ms
    city = City(CityConfig(seed=spec.seed, poles=spec.poles, districts=max(1, min(6, spec.poles // 20))))
    stream = TelemetryStream(city, SignalModel(city, spec.seed), (), start_ms=start_ms, step_ms=spec.step_ms,
                             seed=spec.seed)
    rng = np.random.default_rng(spec.seed)
    refusable = extra = hostile = 0

    def tick(pub: Publisher, k: int) -> None:
        nonlocal refusable, extra, hostile
        t_sim = start_ms + k * spec.step_ms
        msgs = stream.tick()
        if shuffle:  # out-of-order delivery inside each tick: valid, must all be stored
            msgs = [msgs[int(i)] for i in rng.permutation(len(msgs))]
        for topic, payload in msgs:
            pub.publish(topic, payload)
        n_h = int(rng.binomial(len(msgs), hostile_frac)) if hostile_frac else 0
        for topic, payload, _kind in hostile_messages(rng, n_h, city, now_ms=t_sim, clock_ms=int(time.time() * 1000),
                                                   kinds=REFUSED_KINDS, first=hostile):
            pub.publish(topic, payload)
            hostile += 1
            refusable += routed_to_gateway(topic)  # elsewhere the broker routes it to no gateway at all
        n_r = int(rng.binomial(len(msgs), replay_frac)) if replay_frac else 0
        for i in rng.choice(len(msgs), size=min(n_r, len(msgs)), replace=False):
            pub.publish(*msgs[int(i)])
            extra += 1

    took = paced(broker, "drill-sim", ticks, spec, tick, on_tick)
    log(f"published {stream.published_samples} samples, {refusable} hostile, {extra} replays in {took:.1f} s")
    return stream.published_samples, refusable, extra


def paced(broker: Mosquitto, client_id: str, ticks: int, spec: DrillSpec, tick: Callable[[Publisher, int], None],
          on_tick: Callable[[int, int], None] | None = None) -> float:
    """Run ``tick(pub, k)`` for k in range(ticks) at ``spec.rate_hz`` on one QoS 1 publisher, then wait
    for every PUBACK; ``on_tick(k, ticks)`` after each (where drills disrupt things). Returns seconds."""
    pub = Publisher(broker.host, broker.port, client_id).connect()
    t0 = time.monotonic()
    try:
        for k in range(ticks):
            tick(pub, k)
            if on_tick is not None:
                on_tick(k, ticks)
            pub.wait_below(20_000)
            time.sleep(max(0.0, t0 + (k + 1) / spec.rate_hz - time.monotonic()))
        pub.flush(timeout_s=spec.settle_s)
    finally:
        pub.close()
    return time.monotonic() - t0


def gateway_kill(spec: DrillSpec | None = None, *, kill_at: float = 0.5, down_s: float = 2.0,
                 log: Log = print) -> DrillResult:
    """kill -9 the gateway process mid-stream, restart it: the broker redelivers what it had not acked."""
    spec = spec or DrillSpec()
    with rig() as (tmp, broker, influx, store):
        gw = GatewayProcess(broker, tmp, tmp / "gateway.log", influx_url=influx.url, influx_db=DRILL_DB,
                            client_id="drill-gw")
        since = int(time.time() * 1000)
        gw.start()
        wait_gateway_online(broker, "drill-gw", since)
        killed: list[int] = []

        def on_tick(k: int, n: int) -> None:
            if not killed and k >= int(n * kill_at):
                log(f"kill -9 gateway (pid {gw.pid}) at tick {k}/{n}")
                gw.kill()
                killed.append(k)
                time.sleep(down_s)
                gw.start()
                log("gateway restarted")

        published, refusable, _ = _publish_city(broker, spec, on_tick=on_tick, log=log)
        distinct, points = _wait_store(store, published, spec.settle_s, log)
        gw.stop()
    return DrillResult("gateway-kill", published, distinct, points - distinct, refusable,
                       failed_checks=() if killed else ("the gateway was never killed",))


def store_outage(spec: DrillSpec | None = None, *, outage_s: float = 60.0, at: float = 0.3,
                 log: Log = print) -> DrillResult:
    """Stop InfluxDB for ``outage_s`` mid-stream: the gateway spools to disk and replays in order."""
    spec = spec or DrillSpec(seconds=max(20.0, outage_s * 1.5))
    with rig() as (tmp, broker, influx, store):
        gw = Gateway(GatewayConfig(host=broker.host, port=broker.port, client_id="drill-gw",
                                   spool_path=str(tmp / "spool.sqlite"), selfmetrics_interval_s=1.0),
                     store)
        gw.start()
        state = {"down_at": None, "restarted": False, "max_spool": 0.0}

        def on_tick(k: int, n: int) -> None:
            now = time.monotonic()
            state["max_spool"] = max(state["max_spool"], gw.counters().get("spool_points", 0))  # type: ignore[type-var]
            if state["down_at"] is None and k >= int(n * at):
                log(f"InfluxDB stopped at tick {k}/{n} for {outage_s:.0f} s")
                influx.stop()
                state["down_at"] = now
            elif state["down_at"] is not None and not state["restarted"] and now - state["down_at"] >= outage_s:
                influx.start()
                state["restarted"] = True
                log(f"InfluxDB back; gateway spool holds {gw.counters().get('spool_points', 0):.0f} points")

        published, refusable, _ = _publish_city(broker, spec, on_tick=on_tick, log=log)
        if not state["restarted"]:
            remaining = outage_s - (time.monotonic() - (state["down_at"] or time.monotonic()))
            time.sleep(max(0.0, remaining))
            state["max_spool"] = max(state["max_spool"], gw.counters().get("spool_points", 0))  # type: ignore[type-var]
            influx.start()
            log(f"InfluxDB back; gateway spool holds {gw.counters().get('spool_points', 0):.0f} points")
        distinct, points = _wait_store(store, published, spec.settle_s, log)
        c = gw.counters()
        gw.stop()
    checks = []
    if not state["max_spool"]:
        checks.append("the gateway never spooled: the outage was not exercised")
    if c.get("spool_points", 0):
        checks.append(f"spool not drained: {c['spool_points']:.0f} points left")
    return DrillResult("store-outage", published, distinct, points - distinct, refusable,
                       extra={"max_spool_points": float(state["max_spool"])},  # type: ignore[arg-type]
                       failed_checks=tuple(checks))


def hostile_traffic(spec: DrillSpec | None = None, *, hostile_frac: float = 0.10, log: Log = print) -> DrillResult:
    """10 % hostile payloads mixed in, plus byte-for-byte replays and out-of-order delivery."""
    spec = spec or DrillSpec()
    with rig() as (tmp, broker, _influx, store):
        gw = Gateway(GatewayConfig(host=broker.host, port=broker.port, client_id="drill-gw",
                                   spool_path=str(tmp / "spool.sqlite")), store)
        gw.start()
        published, refusable, replays = _publish_city(broker, spec, hostile_frac=hostile_frac, replay_frac=0.02,
                                                      shuffle=True, log=log)
        distinct, points = _wait_store(store, published, spec.settle_s, log)
        deadline = time.monotonic() + 30
        while gw.counters().get("samples_rejected", 0) < refusable and time.monotonic() < deadline:
            time.sleep(0.2)
        c = gw.counters()
        gw.stop()
        poles = {r["value"] for r in store.rows('SHOW TAG VALUES FROM "telemetry" WITH KEY = "pole"')}
    city = City(CityConfig(seed=spec.seed, poles=spec.poles, districts=max(1, min(6, spec.poles // 20))))
    checks = []
    strangers = poles - {p.pole_id for p in city.poles}
    if strangers:
        checks.append(f"hostile pole ids reached the store: {sorted(strangers)[:5]}")
    if c.get("samples_rejected", 0) != refusable:
        checks.append(f"gateway refused {c.get('samples_rejected', 0):.0f} samples, {refusable} were hostile")
    if c.get("duplicates", 0) < replays:
        checks.append(f"only {c.get('duplicates', 0):.0f} of {replays} replays were recognised as duplicates")
    return DrillResult("hostile-traffic", published + refusable, distinct, points - distinct, refusable,
                       extra={"replays": float(replays), "rejected_by_gateway": c.get("samples_rejected", 0)},
                       failed_checks=tuple(checks))
