"""The benchmark's load generator: the simulator's multiplexed mode in its own process.

``python -m bench.loadgen --port P --rate R --seconds S [--poles N] [--conns C] [--shard K/N] [--out FILE]
[--warm-ticks W --ready FILE --go FILE]``

Renders a city's telemetry with :class:`simulator.stream.TelemetryStream` (device time ending now, one
message per pole per 10 s tick, each tick's poles in a seeded random order so every district is
loaded evenly), then publishes it at QoS 1 through ``--conns``
:class:`simulator.publisher.Publisher` connections at a fixed offered rate, paced in 5 ms slots, and
waits for every PUBACK. It runs in a process of its own so that generating and publishing never
compete with the measured consumer for a GIL. Messages are rendered before the clock starts (a
measured, separate cost); ``--rate 0`` instead generates on the fly and publishes as fast as it can
(the simulator's own offered-rate capability).

Every message of a *probe pole* (pole index divisible by ``--probe-every``: every 200th message in
pole order) has its publish wall-clock time recorded, so the caller can compute publish-to-queryable
latency. The result is one JSON object, on stdout or in ``--out``.

**Steady state** (``--warm-ticks W``): the city's first ``W`` ticks (every pole once per tick: what a
consumer sees in a city's first interval, when every series and every per-pole state is new) are
published first, at the same rate, unmeasured by the caller's clock; then the load generator writes
``--ready`` (a JSON object: the warm phase's counts, rate and CPU) and waits until the caller creates
``--go`` (after the consumer has stored the warm messages), and only then publishes the measured
``rate * seconds`` messages from the following ticks. ``cpu_s`` / ``warm_cpu_s`` are this process's own
CPU (``RUSAGE_SELF``) over each publish phase, so rendering before the clock is not counted in either.

**Births** (``--births``): before any telemetry, each pole's retained birth (its status with the rated lamp
power, nominal voltage, installed tilt and sensor kit of its inventory record), at the same rate, as the
simulator and every edge agent send them; with ``--shard k/n`` every n-th pole's from the k-th. They are
part of the warm phase's time and the consumer's first-interval CPU, and never counted as published
messages. Without them a lampwatch gateway judged every lamp against the catalog's default rating
(120 W): the city's 60-100 W lamps, over half of them, read as failed, and the bench measured an alarm
storm instead of a city. Today it learns an unrated lamp's rating from its lit draw
(``tests/bench/test_loadgen.py`` checks both ways), but a real agent declares it, so the bench sends
it. Only the lampwatch gateways are sent them: every other consumer subscribes to telemetry alone, so
the broker would route them to nobody.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator.city import City, CityConfig
from simulator.publisher import Publisher
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream, birth_messages

STEP_MS = 10_000
# keys of a Telemetry payload that are not metric values: v, pole, boot, samples, seq, ts, m, evicted
_ENVELOPE_KEYS = 8


@dataclass
class LoadResult:
    offered_rate: float
    published: int = 0
    acked: int = 0
    refused: int = 0
    values: int = 0  # metric values carried by the published messages
    gen_s: float = 0.0  # time spent rendering before the clock started
    t_start: float = 0.0  # wall clock of the first publish
    t_last_publish: float = 0.0
    t_all_acked: float = 0.0
    achieved_rate: float = 0.0  # published / (t_last_publish - t_start)
    max_outstanding: int = 0
    probes: list[tuple[str, int, float]] = field(default_factory=list)  # (pole, seq, publish wall time)
    cpu_s: float = 0.0  # this process's CPU over the measured publish phase (first publish to last PUBACK)
    warm_published: int = 0  # the warm phase (--warm-ticks): published, achieved rate, own CPU, last PUBACK
    warm_achieved_rate: float = 0.0
    warm_cpu_s: float = 0.0
    warm_t_all_acked: float = 0.0


def probe_poles(poles: int, every: int) -> list[str]:
    """Pole ids whose messages are latency probes (same rule as the load generator uses)."""
    from simulator.city import pole_id

    return [pole_id(i) for i in range(0, poles, every)]


def make_stream(poles: int, seed: int, districts: int, ticks: int) -> TelemetryStream:
    city = City(CityConfig(seed=seed, poles=poles, districts=districts))
    start_ms = int(time.time() * 1000) - ticks * STEP_MS
    return TelemetryStream(city, SignalModel(city, seed), (), start_ms=start_ms, step_ms=STEP_MS, seed=seed)


def _values(payload: bytes) -> int:
    return payload.count(b":") - _ENVELOPE_KEYS


def _connect(host: str, port: int, conns: int, tag: str) -> list[Publisher]:
    return [Publisher(host, port, f"bench-load-{tag}-{i}", max_inflight=0).connect() for i in range(conns)]


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _publish(pubs: list[Publisher], msgs: list[tuple[str, bytes]], rate: float, max_outstanding: int,
             probe_at: dict[int, tuple[str, int]], res: LoadResult, *,
             retain: bool = False) -> list[tuple[str, int, float]]:
    """Publish ``msgs`` paced at ``rate`` in 5 ms slots, outstanding PUBACKs bounded; wait for every PUBACK.
    Returns the probes' publish times; adds the message values to ``res.values``."""
    conns, total, slot = len(pubs), len(msgs), 0.005
    probes: list[tuple[str, int, float]] = []
    start = time.monotonic()
    k = 0
    while k < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while k < due:
            topic, payload = msgs[k]
            pubs[k % conns].publish(topic, payload, retain=retain)
            res.values += _values(payload)
            if k in probe_at:
                probes.append((*probe_at[k], time.time()))
            k += 1
        out = sum(p.outstanding for p in pubs)
        res.max_outstanding = max(res.max_outstanding, out)
        if out > max_outstanding:
            for p in pubs:
                p.wait_below(max_outstanding // conns // 2, timeout_s=120)
        nxt = start + (k + 1) / rate
        time.sleep(max(0.0, min(slot, nxt - time.monotonic())))
    res.t_last_publish = time.time()
    for p in pubs:
        p.flush(timeout_s=300)
    res.t_all_acked = time.time()
    return probes


def _wait_for(path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"loadgen: no {path} within {timeout_s:.0f} s after the warm phase")
        time.sleep(0.02)


def run(host: str, port: int, rate: float, seconds: float, *, poles: int = 100_000, seed: int = 7,
        districts: int = 8, conns: int = 1, probe_every: int = 200, max_outstanding: int = 20_000,
        tag: str = "0", shard_k: int = 0, shard_n: int = 1, warm_ticks: int = 0, ready: str = "",
        go: str = "", go_timeout_s: float = 300.0, births: bool = False) -> LoadResult:
    """Publish ``rate * seconds`` messages at ``rate`` msg/s (paced); see the module docstring."""
    total = max(1, int(rate * seconds))
    warm_n = warm_ticks * poles
    ticks = warm_ticks + math.ceil(total / poles)
    res = LoadResult(offered_rate=rate)
    t0 = time.perf_counter()
    stream = make_stream(poles, seed, districts, ticks)
    born = birth_messages(stream, stream.start_ms)[shard_k::shard_n] if births else []
    rng = np.random.default_rng(seed)
    probe_ix = set(range(0, poles, probe_every))
    msgs: list[tuple[str, bytes]] = []
    probe_at: dict[int, tuple[str, int]] = {}  # message index (measured phase) -> (pole, seq) of a probe
    for tick in range(ticks):
        batch = stream.tick()
        # poles report at their own phase within the interval: each tick in a seeded random pole order
        for i in rng.permutation(len(batch)).tolist():
            if i in probe_ix and tick >= warm_ticks:
                probe_at[len(msgs) - warm_n] = (batch[i][0].split("/")[3], tick)  # seq = tick index (no faults)
            msgs.append(batch[i])
    warm, msgs = msgs[:warm_n], msgs[warm_n:warm_n + total]
    if shard_n > 1:  # one of several load processes: every shard_n-th message, at rate / shard_n
        keep = range(shard_k, len(msgs), shard_n)
        probe_at = {j: probe_at[i] for j, i in enumerate(keep) if i in probe_at}
        msgs = [msgs[i] for i in keep]
        warm = warm[shard_k::shard_n]
        total, rate = len(msgs), rate / shard_n
        res.offered_rate = rate
    res.gen_s = time.perf_counter() - t0
    pubs = _connect(host, port, conns, tag)
    before = (0, 0, 0)  # (sent, acked, refused) of the births and the warm phase, not the measured load
    try:
        if born:
            c0, w0 = _cpu_self(), time.time()
            _publish(pubs, born, rate, max_outstanding, {}, res, retain=True)
            res.warm_cpu_s = _cpu_self() - c0
            before = (sum(p.sent for p in pubs), sum(p.acked for p in pubs), sum(p.refused for p in pubs))
            res.values = 0
        if warm:
            c0, w0 = _cpu_self(), time.time()
            _publish(pubs, warm, rate, max_outstanding, {}, res)
            res.warm_cpu_s += _cpu_self() - c0
            sent_births = before[0]
            before = (sum(p.sent for p in pubs), sum(p.acked for p in pubs), sum(p.refused for p in pubs))
            res.warm_published = before[0] - sent_births
            res.warm_achieved_rate = res.warm_published / max(1e-9, res.t_last_publish - w0)
            res.warm_t_all_acked = res.t_all_acked
            res.values = 0
            if ready:  # written whole, then renamed: the caller never reads half of it
                part = Path(ready + ".part")
                part.write_text(json.dumps({"published": res.warm_published, "t_all_acked": res.t_all_acked,
                                            "achieved_rate": res.warm_achieved_rate, "cpu_s": res.warm_cpu_s}))
                os.replace(part, ready)
            if go:
                _wait_for(go, go_timeout_s)
        c0 = _cpu_self()
        res.t_start = time.time()
        res.probes = _publish(pubs, msgs, rate, max_outstanding, probe_at, res)
        res.cpu_s = _cpu_self() - c0
    finally:
        for p in pubs:
            res.published += p.sent
            res.acked += p.acked
            res.refused += p.refused
            p.close()
    res.published, res.acked, res.refused = (res.published - before[0], res.acked - before[1],
                                             res.refused - before[2])
    res.achieved_rate = res.published / max(1e-9, res.t_last_publish - res.t_start)
    return res


def run_unpaced(host: str, port: int, seconds: float, *, poles: int = 10_000, seed: int = 7,
                districts: int = 8, conns: int = 1) -> dict[str, float]:
    """Generate tick by tick and publish as fast as the broker acknowledges, for ``seconds``.

    Returns msgs/s acknowledged end to end (generation included) from this one process."""
    stream = make_stream(poles, seed, districts, ticks=int(seconds * 20_000 / poles) + 2)
    pubs = _connect(host, port, conns, "unpaced")
    n = values = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            for i, (topic, payload) in enumerate(stream.tick()):
                pubs[i % conns].publish(topic, payload)
                values += _values(payload)
                n += 1
                if n % 1000 == 0:
                    for p in pubs:
                        p.wait_below(10_000)
                    if time.monotonic() - t0 >= seconds:
                        break
        for p in pubs:
            p.flush(timeout_s=120)
        dt = time.monotonic() - t0
    finally:
        for p in pubs:
            p.close()
    return {"msgs_s": n / dt, "values_s": values / dt, "published": float(n), "seconds": dt}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="offered msg/s; 0 = unpaced, generate on the fly")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--poles", type=int, default=100_000)
    ap.add_argument("--districts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--probe-every", type=int, default=200)
    ap.add_argument("--tag", default="0", help="distinguishes client ids of concurrent load generators")
    ap.add_argument("--shard", default="0/1", help="k/n: publish every n-th message from the k-th, at rate/n "
                    "(n load processes together offer --rate when one cannot)")
    ap.add_argument("--warm-ticks", type=int, default=0, help="publish the city's first W ticks before the "
                    "measured phase (steady state); with --ready/--go the caller decides when it starts")
    ap.add_argument("--ready", default="", help="file written when the warm phase is acknowledged")
    ap.add_argument("--go", default="", help="file whose existence starts the measured phase")
    ap.add_argument("--births", action="store_true", help="publish each pole's retained birth first (see above)")
    ap.add_argument("--out", default="-")
    a = ap.parse_args(argv)
    res: dict[str, Any]
    if a.rate <= 0:
        res = run_unpaced(a.host, a.port, a.seconds, poles=a.poles, seed=a.seed, districts=a.districts,
                          conns=a.conns)
    else:
        res = asdict(run(a.host, a.port, a.rate, a.seconds, poles=a.poles, seed=a.seed, districts=a.districts,
                         conns=a.conns, probe_every=a.probe_every, tag=a.tag,
                         shard_k=int(a.shard.split("/")[0]), shard_n=int(a.shard.split("/")[1]),
                         warm_ticks=a.warm_ticks, ready=a.ready, go=a.go, births=a.births))
    text = json.dumps(res)
    if a.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
