"""CPU per message of each process, Mosquitto vs a 3-node NATS cluster: ``python -m bench.bench_cluster``.

Configurations, each with a fresh InfluxDB 1.6.7 and fresh brokers (testbed.servers,
testbed.nats), the same offered load and the same gateway code (``python -m gateway run``):

* ``mosquitto/gw-1``  one Mosquitto, one gateway (MQTT 5, the default deployment);
* ``nats/gw-1``       3 NATS nodes (JetStream, MQTT streams and consumers R3), one gateway on node 1
                      (MQTT 3.1.1), publishers spread over the three nodes;
* ``nats/gw-2``       the same cluster, two gateways (district partitions 0/2 and 1/2) on nodes 1 and 2.

Load: a publisher process (``python -m bench.bench_cluster publish``, paho, QoS 1, one connection per
broker node) sends TelemetryStream messages of a 10k-pole city at ``rate`` msg/s for ``seconds``. A
configuration *holds* the rate when every message was published and stored (``count(seq)`` in InfluxDB)
within ``settle_s``. CPU: utime + stime from ``/proc/<pid>/stat`` of every process (each broker node,
each gateway, influxd, the publisher) from the start of the load to the last stored message, divided by
the messages published: microseconds of CPU per message, per process. Then one edge agent
(``python -m edge run``, 10 samples/s) on a NATS node gives the agent's own CPU per message.

Prints one line per configuration::

    cluster: config=<c> rate=<r> published=<n> stored=<n> held=<yes|no> us_per_msg broker=<b>
             gateway=<g> influxd=<i> publisher=<p> [node1=.. node2=.. node3=..] [gw0=.. gw1=..]

(one line each) and ``cluster-agent: broker=<kind> us_per_msg=<a> messages=<n>``. Runs are short and
bounded; the machine is shared, so read the figures as orders of magnitude and compare configurations of
the same run only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.influx1 import Influx1Store
from testbed.nats import NatsCluster, ack_pending_for
from testbed.servers import InfluxDB1, Mosquitto, _http, free_port

ROOT = Path(__file__).resolve().parents[1]
POLES = 10_000
DISTRICT_COUNT = 8
SEED = 7
CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None) -> float:
    """utime + stime of a live process, in seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


# --- the publisher process ---------------------------------------------------------------------------------
def _city(seed: int = SEED) -> Any:
    from simulator.city import City, CityConfig

    return City(CityConfig(seed=seed, poles=POLES, districts=DISTRICT_COUNT))


def districts() -> tuple[str, ...]:
    """The bench city's district names (what gateway partitions split)."""
    return tuple(sorted({p.district for p in _city().poles}))


def publish(brokers: Sequence[tuple[str, int]], version: int, rate: float, seconds: float, seed: int = SEED) -> int:
    """Publish ``rate * seconds`` telemetry messages round-robin over one connection per broker; returns the
    number acknowledged."""
    from simulator.publisher import Publisher
    from simulator.signals import SignalModel
    from simulator.stream import TelemetryStream

    total = int(rate * seconds)
    ticks = -(-total // POLES)
    city = _city(seed)
    start_ms = int(time.time() * 1000) - (ticks + 1) * 10_000
    stream = TelemetryStream(city, SignalModel(city, seed), (), start_ms=start_ms, step_ms=10_000, seed=seed)
    msgs = [m for _ in range(ticks) for m in stream.tick()][:total]
    pubs = [Publisher(h, p, f"bench-pub-{i}", mqtt_version=version).connect() for i, (h, p) in enumerate(brokers)]
    print("ready", flush=True)
    t0 = time.monotonic()
    try:
        for k, (topic, payload) in enumerate(msgs):
            pubs[k % len(pubs)].publish(topic, payload)
            if k % 50 == 0:
                time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
                for p in pubs:
                    p.wait_below(20_000, timeout_s=120)
        for p in pubs:
            p.flush(timeout_s=120)
    finally:
        for p in pubs:
            p.close()
    return sum(p.acked for p in pubs)


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- configurations -----------------------------------------------------------------------------------------
@dataclass
class Result:
    config: str
    rate: float
    published: int = 0
    stored: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds over the run

    @property
    def held(self) -> bool:
        return self.published > 0 and self.stored >= self.published

    def us(self, key: str) -> float:
        return 1e6 * self.cpu.get(key, 0.0) / max(1, self.published)

    def line(self) -> str:
        nodes = sorted(k for k in self.cpu if k.startswith("node"))
        broker = sum(self.us(k) for k in nodes) if nodes else self.us("mosquitto")
        gws = sorted(k for k in self.cpu if k.startswith("gw"))
        parts = [f"cluster: config={self.config} rate={self.rate:g} published={self.published} stored={self.stored} "
                 f"held={'yes' if self.held else 'no'} us_per_msg broker={broker:.0f} "
                 f"gateway={sum(self.us(k) for k in gws):.0f} influxd={self.us('influxd'):.0f} "
                 f"publisher={self.us('publisher'):.0f}"]
        parts += [f"{k}={self.us(k):.0f}" for k in nodes + (gws if len(gws) > 1 else [])]
        return " ".join(parts)


class _Gateway:
    def __init__(self, k: int, n: int, brokers: Sequence[tuple[str, int]], version: int, influx: InfluxDB1,
                 db: str, tmp: Path) -> None:
        self.health = free_port()
        env = {"MQTT_BROKERS": ",".join(f"{h}:{p}" for h, p in brokers), "MQTT_VERSION": str(version),
               "CLIENT_ID": f"bench-gw-{k}", "INFLUX_URL": influx.url, "INFLUX_DB": db,
               "STATE_DIR": str(tmp / f"gw-{k}"), "HEALTH_PORT": str(self.health), "SELFMETRICS_INTERVAL_S": "5"}
        if n > 1:
            env |= {"PARTITION": f"{k}/{n}", "CITY_DISTRICTS": ",".join(districts())}
        self.log = (tmp / f"gw-{k}.log").open("ab")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run"], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **{f"LAMPWATCH_GATEWAY_{a}": b for a, b in env.items()}})

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return _http("GET", f"http://127.0.0.1:{self.health}/readyz", timeout=2.0)[0] == 200
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _count(store: Influx1Store) -> int:
    with contextlib.suppress(Exception):
        rows = store.rows('SELECT count("seq") FROM "telemetry"')
        return int(rows[0]["count"]) if rows else 0
    return 0


@contextlib.contextmanager
def _brokers(kind: str, gateways: int) -> Iterator[tuple[dict[str, int | None], list[tuple[str, int]], int]]:
    """(process name -> pid of each broker, MQTT addresses, MQTT version)."""
    if kind == "mosquitto":
        with Mosquitto() as m:
            yield {"mosquitto": m.pid}, [(m.host, m.port)], 5
        return
    subs = 2 + (2 * max(len(d) for d in _owned(gateways)) if gateways > 1 else 2)
    with NatsCluster(3, max_ack_pending=ack_pending_for(subs)) as c:
        yield {f"node{i + 1}": n.pid for i, n in enumerate(c.nodes)}, c.addresses, 311


def _owned(n: int) -> list[tuple[str, ...]]:
    from gateway.partition import districts_for

    return [districts_for(k, n, districts()) for k in range(n)]


def run_config(kind: str, gateways: int, rate: float, seconds: float, settle_s: float) -> Result:
    res = Result(f"{kind}/gw-{gateways}", rate)
    with tempfile.TemporaryDirectory(prefix="lampwatch-bench-cluster-") as d, InfluxDB1() as influx, \
            _brokers(kind, gateways) as (pids, addrs, version):
        tmp = Path(d)
        influx.create_database("bench")
        store = Influx1Store(influx.url, "bench")
        # gateway k attached to node k (and failing over along the others)
        gws = [_Gateway(k, gateways, addrs[k % len(addrs):] + addrs[:k % len(addrs)], version, influx, "bench", tmp)
               for k in range(gateways)]
        pub: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 60
            while not all(g.ready() for g in gws):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{res.config}: gateways not ready")
                time.sleep(0.2)
            procs: dict[str, int | None] = {**pids, "influxd": influx.pid,
                                            **{f"gw{k}": g.proc.pid for k, g in enumerate(gws)}}
            brokers_arg = ",".join(f"{h}:{p}" for h, p in addrs)
            pub = subprocess.Popen([sys.executable, "-m", "bench.bench_cluster", "publish", "--brokers", brokers_arg,
                                    "--version", str(version), "--rate", str(rate), "--seconds", str(seconds)],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
            assert pub.stdout is not None
            pub.stdout.readline()  # "ready": messages rendered, connections up; the clock starts now
            procs["publisher"] = pub.pid
            before = {k: cpu_s(p) for k, p in procs.items()}
            last = {k: before[k] for k in procs}
            out = pub.stdout.read().decode().split()
            pub.wait(seconds + settle_s)
            if len(out) >= 2 and out[-2].isdigit():  # "<acked> <its CPU seconds since the clock started>"
                res.published = int(out[-2])
                before["publisher"], last["publisher"] = 0.0, float(out[-1])
            deadline = time.monotonic() + settle_s
            while time.monotonic() < deadline:
                for k, p in procs.items():
                    if k != "publisher":
                        last[k] = cpu_s(p)
                res.stored = _count(store)
                if res.stored >= res.published:
                    break
                time.sleep(0.5)
            res.cpu = {k: last[k] - before[k] for k in procs}
        finally:
            if pub is not None and pub.poll() is None:
                os.killpg(pub.pid, signal.SIGKILL)
                pub.wait()
            for g in gws:
                g.stop()
            store.close()
    return res


def agent_cost(kind: str, seconds: float = 15.0, hz: float = 10.0) -> tuple[float, int]:
    """(CPU us per message, messages) of one ``python -m edge run`` at ``hz`` samples/s on Mosquitto (MQTT 5)
    or on the NATS cluster (MQTT 3.1.1)."""
    with _brokers(kind, 1) as (_pids, addrs, version), \
            tempfile.TemporaryDirectory(prefix="lampwatch-bench-agent-") as d:
        brokers = ",".join(f"{h}:{p}" for h, p in addrs)
        conf = Path(d) / "edge.toml"
        conf.write_text(f'pole = "bench-agent"\ndistrict = "d0"\nbrokers = "{brokers}"\nmqtt_version = {version}\n'
                        f'report_interval_s = {1 / hz}\nsafety_interval_s = 1.0\noutbox_path = "{d}/o.sqlite"\n'
                        'log_level = "WARNING"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPWATCH_EDGE_")}
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(conf)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(3.0)  # connected, birth sent, imports done
            c0 = cpu_s(proc.pid)
            time.sleep(seconds)
            c1 = cpu_s(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    n = int(seconds * hz)
    return 1e6 * (c1 - c0) / n, n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_cluster", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    p = sub.add_parser("publish", help="(internal) the publisher process")
    p.add_argument("--brokers", required=True)
    p.add_argument("--version", type=int, default=5)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rate", type=float, default=1000.0, help="offered msg/s (default 1000)")
    ap.add_argument("--seconds", type=float, default=15.0, help="publishing time per configuration")
    ap.add_argument("--settle-s", type=float, default=60.0)
    ap.add_argument("--configs", default="mosquitto/1,nats/1,nats/2", help="kind/gateways, comma-separated")
    ap.add_argument("--no-agent", action="store_true", help="skip the edge agent measurement")
    a = ap.parse_args(argv)
    if a.cmd == "publish":
        from contract.address import parse_brokers

        c0 = _own_cpu_s()
        acked = publish(parse_brokers(a.brokers), a.version, a.rate, a.seconds)
        print(acked, f"{_own_cpu_s() - c0:.3f}", flush=True)
        return
    for spec in a.configs.split(","):
        kind, n = spec.split("/")
        print(run_config(kind, int(n), a.rate, a.seconds, a.settle_s).line(), flush=True)
    if not a.no_agent:
        for kind in ("mosquitto", "nats"):
            us, n = agent_cost(kind)
            print(f"cluster-agent: broker={kind} us_per_msg={us:.0f} messages={n}", flush=True)


if __name__ == "__main__":
    main()
