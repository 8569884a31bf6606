"""Sustained zero-loss ingest rate, real servers: ``python -m bench.bench_gateway [--quick]``.

Every system consumes the same load on the same real Mosquitto (testbed.servers: queue limits
lifted) and writes to the same real InfluxDB 1.6.7:

* ``raw``            a bare paho subscriber (MQTT 5, QoS 1, persistent session) that only counts;
* ``naive``          the tutorial pipeline: paho callback -> pydantic ``Telemetry.model_validate_json``
                     -> one InfluxDB ``/write`` per message (``Influx1Store.write`` of its points);
* ``gateway-1``      ``python -m gateway run`` (one process);
* ``gateway-2``      two gateway processes, districts partitioned (LAMPWATCH_GATEWAY_DISTRICTS);
* ``mqtt2influxdb``  the PyPI bridge 1.5.2 (the last release that speaks InfluxDB 1.x), in its own venv.

Load: :mod:`bench.loadgen` in a separate process (TelemetryStream messages of a 100k-pole city through
the multiplexed Publisher, QoS 1) at fixed offered rates, each held ``hold_s`` seconds. A rate is
*sustained* when the load generator achieved it, and every published message was counted (raw) or
stored and queryable (the others) within ``settle_s`` of the last PUBACK. Each system climbs a ladder
of rates until one fails; the highest sustained rate is its result. After a failed rate the bench
keeps waiting while the consumer still makes progress, to tell "late" from "lost".

Latency: every message of every 200th pole is a probe whose publish wall time the load generator
records; a poller queries ``SELECT last(seq) ... GROUP BY pole`` every 0.2 s and stamps a probe
queryable at the first answer that shows it (an upper bound: up to one poll interval late). For
``raw`` it is publish-to-delivery instead. RSS = VmHWM of the consumer process(es).

Prints a table, ``sim: msgs_s=<n> agents=<n>`` and, last,
``bench: gateway_msgs_s=<x> raw_msgs_s=<y> naive_msgs_s=<z> ratio_raw=<x/y> ratio_naive=<x/z>
gw_us_per_msg=<a> raw_us_per_msg=<b> cpu_ratio=<a/b> two_proc_msgs_s=<w> p99_ms=<l> lost=<n>`` (one line).

CPU: for every trial, the CPU time (utime + stime from /proc) that the consumer process(es), Mosquitto,
InfluxDB and the load generator(s) spent between the start of the load and the end of the settle or
drain, divided by the messages published: microseconds of CPU per message, per process. Above
``ONE_LOADGEN_MAX`` msg/s the load comes from two load-generator processes publishing disjoint halves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.loadgen import probe_poles
from contract.catalog import NAMES
from ingest.influx1 import Influx1Store
from simulator.city import KITS, City, CityConfig
from testbed.gateway import GatewayProcess, wait_gateway_online
from testbed.servers import InfluxDB1, Mosquitto

LADDER = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 10_000, 12_000, 14_000, 16_000, 20_000, 24_000,
          28_000, 32_000)
#: above this offered rate the load comes from two load-generator processes (one tops out near here)
ONE_LOADGEN_MAX = 10_000
M2I_VERSION = "1.5.2"
SYSTEMS = ("raw", "naive", "gateway-1", "gateway-2", "mqtt2influxdb")
err = Console(stderr=True)


@dataclass
class Spec:
    poles: int = 100_000
    districts: int = 8
    hold_s: float = 8.0
    settle_s: float = 3.0  # all stored/counted within this long after the last PUBACK
    drain_s: float = 40.0  # after a failed rate: wait at most this long for the rest...
    idle_s: float = 4.0  # ...while the count still moves at least every idle_s
    probe_every: int = 200
    poll_s: float = 0.2
    ladder: tuple[int, ...] = LADDER
    start: dict[str, int] = field(default_factory=lambda: {"raw": 4000, "naive": 250, "gateway-1": 2000,
                                                           "gateway-2": 2000, "mqtt2influxdb": 250})
    max_trials: int = 7  # per system
    systems: tuple[str, ...] = SYSTEMS
    sim_s: float = 5.0  # unpaced simulator capability run
    agents: tuple[int, ...] = (2000,)  # per-device agents: how many of n hold (0: skip)
    quiet: bool = False


def quick_spec() -> Spec:
    return Spec(poles=5_000, hold_s=3.0, drain_s=15.0, ladder=(250, 1000, 2000),
                start={"raw": 2000, "naive": 250, "gateway-1": 1000, "gateway-2": 1000, "mqtt2influxdb": 250},
                max_trials=1, systems=("raw", "naive", "gateway-1", "gateway-2"), sim_s=2.0, agents=(50,))


@dataclass
class Trial:
    system: str
    rate: int
    published: int = 0
    achieved_rate: float = 0.0
    values_per_msg: float = 0.0
    stored_at_end: int = 0  # when the load generator had all its PUBACKs
    stored_settled: int = 0  # at settle_s after that
    stored_final: int = 0  # after the drain
    sustained: bool = False
    lost: int = 0  # published - stored_final (only meaningful once the consumer went idle)
    drained: bool = True  # the consumer went idle (or completed) within drain_s
    p50_ms: float | None = None
    p99_ms: float | None = None
    probes: int = 0
    probes_seen: int = 0
    rss_mb: list[float] = field(default_factory=list)
    # CPU microseconds per published message, from /proc, over the trial (load start to settle/drain)
    cpu_us: dict[str, float] = field(default_factory=dict)  # consumer, broker, influxd, loadgen
    note: str = ""


@dataclass
class SystemResult:
    system: str
    trials: list[Trial] = field(default_factory=list)
    note: str = ""

    @property
    def best(self) -> Trial | None:
        ok = [t for t in self.trials if t.sustained]
        return max(ok, key=lambda t: t.rate) if ok else None

    @property
    def msgs_s(self) -> float:
        b = self.best
        return float(b.rate) if b else 0.0


# --- small process helpers -----------------------------------------------------------------------------
def vm_hwm_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | None) -> float:
    """utime + stime of a live process, in seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def children_cpu_s() -> float:
    """CPU of the waited-for children of this process (the load generators, once they have exited)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _terminate(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class _LineProc:
    """A child process whose stdout lines a thread reads: ``ready``, ``n <count>``, ``p <pole> <seq> <t>``."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
                                     text=True, bufsize=1)
        self.ready = threading.Event()
        self.count = 0
        self.seen: dict[tuple[str, int], float] = {}
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "ready":
                self.ready.set()
            elif parts[0] == "n":
                self.count = int(parts[1])
            elif parts[0] == "p":
                self.seen.setdefault((parts[1], int(parts[2])), float(parts[3]))

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self.ready.wait(timeout):
            raise RuntimeError(f"consumer {self.proc.args} not ready within {timeout:.0f} s")

    def stop(self) -> None:
        _terminate(self.proc)
        self._t.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


# --- consumers that run in their own process (python -m bench.bench_gateway consume ...) ----------------
def consume(kind: str, host: str, port: int, client_id: str, influx_url: str, db: str, probes: set[str]) -> None:
    """The raw counter or the naive pipeline: MQTT 5, QoS 1, persistent session, paho's automatic PUBACK
    (sent after the callback returns)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from contract import schema, topics
    from contract.models import Telemetry
    from contract.readings import Reading

    lock = threading.Lock()
    state = {"n": 0}
    out = sys.stdout
    store = Influx1Store(influx_url, db) if kind == "naive" else None

    def on_message_raw(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        state["n"] += 1
        pole = m.topic.split("/")[3]
        if pole in probes:
            seq = json.loads(m.payload)["samples"][0]["seq"]
            with lock:
                out.write(f"p {pole} {seq} {time.time():.6f}\n")

    def on_message_naive(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        t = Telemetry.model_validate_json(m.payload)
        _, _, district, pole, _ = m.topic.split("/")
        assert store is not None
        store.write([schema.telemetry_point(Reading(pole, district, t.boot, s.seq, s.ts, dict(s.m)))
                     for s in t.samples])
        state["n"] += 1

    def on_subscribe(*_a: Any) -> None:
        with lock:
            out.write("ready\n")
            out.flush()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_message = on_message_raw if kind == "raw" else on_message_naive
    c.on_subscribe = on_subscribe
    c.on_connect = lambda cl, *_a: cl.subscribe(topics.filter_for("telemetry"), qos=1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    c.connect(host, port, 30, clean_start=False, properties=props)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c.loop_start()
    while not stop.wait(0.1):
        with lock:
            out.write(f"n {state['n']}\n")
            out.flush()
    c.disconnect()
    c.loop_stop()


# --- mqtt2influxdb (PyPI), in its own venv -------------------------------------------------------------
def m2i_venv(version: str = M2I_VERSION, timeout_s: float = 240.0) -> tuple[Path | None, str]:
    """Install mqtt2influxdb==version (and paho-mqtt<2, which its code needs) into a cached venv under the
    temp dir, never into the project's. Returns (path of the mqtt2influxdb script or None, note)."""
    venv = Path(tempfile.gettempdir()) / f"lampwatch-bench-mqtt2influxdb-{version}"
    exe = venv / "bin" / "mqtt2influxdb"
    if exe.exists():
        return exe, f"mqtt2influxdb {version} (cached venv {venv})"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=60)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"mqtt2influxdb=={version}",
                            "paho-mqtt<2"], capture_output=True, text=True, timeout=timeout_s)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install mqtt2influxdb {version}: {exc}"
    if r.returncode != 0 or not exe.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"pip install mqtt2influxdb=={version} failed: {tail[0][:200]}"
    return exe, f"mqtt2influxdb {version} (installed into {venv})"


def m2i_config(broker: Mosquitto, influx: InfluxDB1, db: str) -> str:
    """A config mapping our telemetry JSON: one point per message, tags district/pole from the topic, fields
    seq plus every metric all sensor kits carry (a metric a pole lacks would log two warnings per message)."""
    common = [n for n in NAMES if all(n in kit for kit in KITS.values())]
    fields = "\n".join(f"      {n}: $.payload.samples[0].m.{n}" for n in common)
    return f"""\
mqtt:
  host: {broker.host}
  port: {broker.port}
influxdb:
  host: {influx.host}
  port: {influx.port}
  database: {db}
points:
  - measurement: telemetry
    topic: lampwatch/v1/+/+/telemetry
    fields:
      seq: $.payload.samples[0].seq
{fields}
    tags:
      district: $.topic[2]
      pole: $.topic[3]
"""


# --- the latency poller ------------------------------------------------------------------------------------
class _Poller:
    """Polls last(seq) per probe pole; records when each (pole, seq) first became queryable."""

    def __init__(self, store: Influx1Store, poles: list[str], every_s: float) -> None:
        self.store, self.every_s = store, every_s
        rx = "|".join(poles)
        self.q = f'SELECT last("seq") FROM "telemetry" WHERE "pole" =~ /^({rx})$/ GROUP BY "pole"'
        self.first: dict[str, list[tuple[int, float]]] = {}  # pole -> [(last seq, wall time seen)]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                rows = self.store.rows(self.q)
            except Exception:
                continue
            t = time.time()
            for r in rows:
                hist = self.first.setdefault(r["pole"], [])
                seq = int(r["last"])
                if not hist or seq > hist[-1][0]:
                    hist.append((seq, t))

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.store.close()

    def seen_at(self, pole: str, seq: int) -> float | None:
        for s, t in self.first.get(pole, ()):
            if s >= seq:
                return t
        return None


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


# --- one trial ----------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, spec: Spec, influx: InfluxDB1, workdir: Path) -> None:
        self.spec, self.influx, self.workdir = spec, influx, workdir
        self.city_districts = City(CityConfig(seed=7, poles=min(spec.poles, 2000),
                                              districts=spec.districts)).districts
        self.probes = probe_poles(spec.poles, spec.probe_every)
        self.m2i: Path | None = None
        self._n = 0

    def log(self, text: str) -> None:
        if not self.spec.quiet:
            err.print(f"[dim]bench:[/] {text}", highlight=False)

    @contextlib.contextmanager
    def _consumers(self, system: str, broker: Mosquitto, db: str, tag: str) -> Iterator[Any]:
        """Start the system's consumer process(es); yield an object with .count() / .pids / .seen."""
        tmp = self.workdir
        url = self.influx.url
        if system in ("raw", "naive"):
            lp = _LineProc([sys.executable, "-m", "bench.bench_gateway", "consume", system, "--port", str(broker.port),
                            "--client-id", f"bench-{system}-{tag}", "--influx-url", url, "--db", db,
                            "--probe-every", str(self.spec.probe_every), "--poles", str(self.spec.poles)],
                           tmp / f"{system}-{tag}.log")
            try:
                lp.wait_ready()
                yield lp
            finally:
                lp.stop()
        elif system.startswith("gateway"):
            n = 1 if system == "gateway-1" else 2
            ds = self.city_districts
            parts = [",".join(ds[i::n]) for i in range(n)] if n > 1 else ["+"]
            gws = []
            try:
                for i, part in enumerate(parts):
                    cid = f"bench-gw{i}-{tag}"
                    gw = GatewayProcess(broker, tmp / cid, tmp / f"{cid}.log", influx_url=url, influx_db=db,
                                        client_id=cid, districts=part, selfmetrics_interval_s=5)
                    since = int(time.time() * 1000)
                    gw.start()
                    gws.append(gw)
                    wait_gateway_online(broker, cid, since)
                yield gws
            finally:
                for gw in gws:
                    gw.stop()
        elif system == "mqtt2influxdb":
            assert self.m2i is not None
            conf = tmp / f"m2i-{tag}.yaml"
            conf.write_text(m2i_config(broker, self.influx, db))
            log = open(tmp / f"m2i-{tag}.log", "ab")
            proc = subprocess.Popen([str(self.m2i), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                deadline = time.monotonic() + 30
                while "New client connected" not in broker.log_text():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = (tmp / f"m2i-{tag}.log").read_text()[-400:]
                        raise RuntimeError(f"mqtt2influxdb did not connect: {tail}")
                    time.sleep(0.1)
                time.sleep(1.0)  # it subscribes in on_connect
                yield proc
            finally:
                _terminate(proc)
                log.close()
        else:
            raise ValueError(system)

    def trial(self, system: str, rate: int) -> Trial:
        sp = self.spec
        self._n += 1
        tag = f"{self._n}"
        db = f"bench_{self._n}"
        tr = Trial(system, rate)
        store = Influx1Store(self.influx.url, db)
        with Mosquitto() as broker, self._consumers(system, broker, db, tag) as cons:
            pids = [cons.proc.pid] if isinstance(cons, _LineProc) else \
                [g.proc.pid for g in cons] if isinstance(cons, list) else [cons.pid]
            poller = None if system == "raw" else _Poller(Influx1Store(self.influx.url, db, create=False),
                                                          self.probes, sp.poll_s)

            def count() -> int:
                if isinstance(cons, _LineProc) and system == "raw":
                    return cons.count
                try:
                    return store.count()
                except Exception:
                    return -1

            others = {"broker": broker.pid, "influxd": self.influx.pid}
            cpu0 = {"consumer": sum(cpu_s(p) for p in pids), **{k: cpu_s(v) for k, v in others.items()},
                    "loadgen": children_cpu_s()}
            load = self._load(broker, rate, tag)
            tr.published, tr.achieved_rate = load["acked"], load["achieved_rate"]
            tr.values_per_msg = load["values"] / max(1, load["published"])
            tr.stored_at_end = count()
            deadline = load["t_all_acked"] + sp.settle_s
            n = tr.stored_at_end
            while n < tr.published and time.time() < deadline:
                time.sleep(0.1)
                n = count()
            tr.stored_settled = n
            last_n, last_t, t_drain = n, time.monotonic(), time.monotonic() + sp.drain_s
            while n < tr.published:
                time.sleep(0.25)
                n = count()
                now = time.monotonic()
                if n != last_n:
                    last_n, last_t = n, now
                elif now - last_t > sp.idle_s:
                    break
                if now > t_drain:
                    tr.drained = False
                    break
            tr.stored_final = n
            tr.lost = max(0, tr.published - n)
            cpu1 = {"consumer": sum(cpu_s(p) for p in pids), **{k: cpu_s(v) for k, v in others.items()},
                    "loadgen": children_cpu_s()}
            tr.cpu_us = {k: round((cpu1[k] - cpu0[k]) * 1e6 / max(1, tr.published), 1) for k in cpu0}
            if poller is not None:
                time.sleep(sp.poll_s * 2)
                poller.stop()
            tr.rss_mb = [round(vm_hwm_mb(p), 1) for p in pids]
            lat: list[float] = []
            probes = load["probes"]
            for pole, seq, t_pub in probes:
                seen = cons.seen.get((pole, seq)) if system == "raw" else poller.seen_at(pole, seq)  # type: ignore
                if seen is not None:
                    lat.append((seen - t_pub) * 1000)
            tr.probes, tr.probes_seen = len(probes), len(lat)
            tr.p50_ms, tr.p99_ms = _percentile(lat, 0.50), _percentile(lat, 0.99)
        ok_rate = tr.achieved_rate >= 0.97 * rate
        tr.sustained = ok_rate and tr.stored_settled >= tr.published > 0 and tr.published == load["published"]
        if not ok_rate:
            tr.note = f"load generator reached only {tr.achieved_rate:.0f} msg/s"
        if system == "mqtt2influxdb" and tr.stored_final > tr.published:
            tr.note = "more points than messages?"
        with contextlib.suppress(Exception):
            self.influx.drop_database(db)
        store.close()
        p99 = f"{tr.p99_ms:.0f}" if tr.p99_ms is not None else "-"
        self.log(f"{system} @ {rate} msg/s: published={tr.published} achieved={tr.achieved_rate:.0f}/s "
                 f"at_end={tr.stored_at_end} settled={tr.stored_settled} final={tr.stored_final} "
                 f"{'OK' if tr.sustained else 'FAIL'} p99={p99} ms rss={tr.rss_mb} {tr.note}")
        return tr

    def _load(self, broker: Mosquitto, rate: int, tag: str) -> dict[str, Any]:
        """Run the load generator(s) to completion; two processes above ONE_LOADGEN_MAX, merged."""
        sp = self.spec
        n = 1 if rate <= ONE_LOADGEN_MAX else 2
        procs, outs = [], []
        for k in range(n):
            out = self.workdir / f"load-{tag}-{k}.json"
            outs.append(out)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", "--port", str(broker.port), "--rate", str(rate),
                 "--seconds", str(sp.hold_s), "--poles", str(sp.poles), "--districts", str(sp.districts),
                 "--probe-every", str(sp.probe_every), "--tag", f"{tag}-{k}", "--shard", f"{k}/{n}",
                 "--out", str(out)], stdout=subprocess.DEVNULL))
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"load generator exited {p.returncode}")
        loads = [json.loads(o.read_text()) for o in outs]
        merged = dict(loads[0])
        for key in ("published", "acked", "refused", "values", "achieved_rate", "max_outstanding"):
            merged[key] = sum(x[key] for x in loads)
        merged["t_all_acked"] = max(x["t_all_acked"] for x in loads)
        merged["probes"] = [pr for x in loads for pr in x["probes"]]
        return merged

    def search(self, system: str, start: int | None = None) -> SystemResult:
        """Climb the ladder from ``start``; if the first rate fails, step down until one holds."""
        sp = self.spec
        res = SystemResult(system)
        ladder = list(sp.ladder)
        first = start if start is not None else sp.start.get(system, ladder[0])
        i = min(range(len(ladder)), key=lambda j: abs(ladder[j] - first))
        direction = 0
        while 0 <= i < len(ladder) and len(res.trials) < sp.max_trials:
            tr = self.trial(system, ladder[i])
            res.trials.append(tr)
            if tr.note.startswith("load generator"):
                res.note = "bounded by the load generator"
                break
            if direction == 0:
                direction = 1 if tr.sustained else -1
            if (direction == 1 and not tr.sustained) or (direction == -1 and tr.sustained):
                break
            i += direction
        return res


# --- the simulator's own capability --------------------------------------------------------------------
def sim_capability(seconds: float) -> dict[str, float]:
    """Multiplexed generation + publish from one process, as fast as the broker acknowledges."""
    with Mosquitto() as broker:
        r = subprocess.run([sys.executable, "-m", "bench.loadgen", "--port", str(broker.port), "--rate", "0",
                            "--seconds", str(seconds), "--poles", "10000"], check=True, capture_output=True, text=True)
    return dict(json.loads(r.stdout))


def agents_capability(ladder: tuple[int, ...], connect_s: float = 60.0, steady_s: float = 20.0) -> tuple[int, str]:
    """Per-device mode: how many of ``n`` real edge agents (edge.agent.EdgeAgent: own MQTT client id, birth,
    Last Will and SQLite outbox each, all on one edge.loop.EdgeLoop, as ``lampwatch-sim run --mode
    per-device`` runs them) one process connects within ``connect_s`` and keeps publishing at 1 sample/s
    each (report interval 10 s at clock speed 10) for ``steady_s``. An agent counts when it is connected
    at the end and the broker acknowledged samples of it during the steady window. The ladder stops at
    the first size that does not fully hold."""
    best, note = 0, "no agents run"
    for n in ladder:
        with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="lampwatch-bench-agents-") as d:
            budget = connect_s + steady_s + 120
            try:
                r = subprocess.run([sys.executable, "-m", "bench.bench_gateway", "agents", "--port", str(broker.port),
                                    "--n", str(n), "--connect-s", str(connect_s), "--steady-s", str(steady_s),
                                    "--dir", d], capture_output=True, text=True, timeout=budget)
            except subprocess.TimeoutExpired:
                return best, f"{n} agents: no answer within {budget:.0f} s"
        try:
            d = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = (r.stderr or "?").strip().splitlines() or ["?"]
            return best, f"{n} agents: process failed: {tail[-1][:150]}"
        note = (f"{d['publishing']}/{n} agents connected and publishing; all {d['connected_first']} connected "
                f"{d['connect_s']:.1f} s after start (created+started in {d['start_s']:.1f} s); steady "
                f"{d['acked_s']:.0f} samples/s acked, cpu {d['cpu_pct']:.0f} %, rss {d['rss_mb']:.0f} MB")
        best = max(best, int(d["publishing"]))
        if d["publishing"] < n:
            break
    return best, note


def run_agents(port: int, n: int, connect_s: float, steady_s: float, workdir: str) -> None:
    """In a process of its own: ``n`` agents on one EdgeLoop (report interval 10 s on a clock 10x real
    time: 1 sample/s per agent), wait until all are connected (at most ``connect_s``), then measure
    ``steady_s``; print one JSON line and exit at once (stopping is not what is measured)."""
    from edge.agent import EdgeAgent
    from edge.clock import ScaledClock
    from edge.loop import EdgeLoop
    from simulator.drills.edge_drills import _agent_cfg
    from simulator.run import raise_fd_limit

    raise_fd_limit(4 * n + 256)
    t0 = time.monotonic()
    loop = EdgeLoop(ScaledClock(10.0)).start()
    agents = [EdgeAgent(_agent_cfg(f"a-{i:05d}", port, Path(workdir), 10.0, outbox_sync="off"), loop=loop)
              for i in range(n)]
    for a in agents:
        a.start()
    start_s = time.monotonic() - t0
    deadline = t0 + connect_s
    while time.monotonic() < deadline and sum(a.connected for a in agents) < n:
        time.sleep(0.1)
    connect_s_taken = time.monotonic() - t0
    connected_first = sum(a.connected for a in agents)
    acked0 = [a.counters().get("acked", 0) for a in agents]
    cpu0, w0 = time.process_time(), time.monotonic()
    time.sleep(steady_s)
    cpu1, w1 = time.process_time(), time.monotonic()
    acked1 = [a.counters().get("acked", 0) for a in agents]
    publishing = sum(1 for a, x0, x1 in zip(agents, acked0, acked1, strict=True) if a.connected and x1 > x0)
    res = {"n": n, "start_s": start_s, "connected_first": connected_first, "connect_s": connect_s_taken,
           "publishing": publishing, "connected": sum(a.connected for a in agents),
           "acked_s": (sum(acked1) - sum(acked0)) / (w1 - w0), "cpu_pct": 100 * (cpu1 - cpu0) / (w1 - w0),
           "rss_mb": vm_rss_mb(os.getpid()), "backlog": sum(a.backlog() for a in agents),
           "threads": threading.active_count()}
    print(json.dumps(res), flush=True)
    os._exit(0)


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the whole benchmark ---------------------------------------------------------------------------------
def run(spec: Spec | None = None) -> dict[str, Any]:
    sp = spec or Spec()
    results: dict[str, SystemResult] = {}
    with tempfile.TemporaryDirectory(prefix="lampwatch-bench-") as tmp, InfluxDB1() as influx:
        b = Bench(sp, influx, Path(tmp))
        for system in sp.systems:
            if system == "mqtt2influxdb":
                b.m2i, note = m2i_venv()
                if b.m2i is None:
                    results[system] = SystemResult(system, note=note)
                    continue
                res = b.search(system)
                res.note = "; ".join(x for x in (note, res.note, "subscribes QoS 0, stamps arrival time (1 s)") if x)
                results[system] = res
                continue
            start = None
            if system == "gateway-2" and "gateway-1" in results and results["gateway-1"].best is not None:
                start = int(results["gateway-1"].msgs_s)
            results[system] = b.search(system, start)
    sim = sim_capability(sp.sim_s) if sp.sim_s else {"msgs_s": 0.0}
    agents, agents_note = agents_capability(sp.agents) if sp.agents else (0, "skipped")
    return summarise(results, sim, agents, agents_note)


def summarise(results: dict[str, SystemResult], sim: dict[str, float], agents: int, agents_note: str) -> dict[str, Any]:
    g1, g2 = results.get("gateway-1"), results.get("gateway-2")
    gw = max((g for g in (g1, g2) if g is not None), key=lambda g: (g.msgs_s, -len(g.system)), default=None)
    best = gw.best if gw else None
    raw = results["raw"].msgs_s if "raw" in results else 0.0
    naive = results["naive"].msgs_s if "naive" in results else 0.0
    gw_rate = gw.msgs_s if gw else 0.0
    lost = sum(t.lost for g in (g1, g2) if g is not None for t in g.trials if t.drained)

    def us(res: SystemResult | None) -> float:
        b = res.best if res is not None else None
        return b.cpu_us.get("consumer", 0.0) if b else 0.0

    gw_us, raw_us = us(g1), us(results.get("raw"))
    return {
        "gw_us_per_msg": gw_us, "raw_us_per_msg": raw_us, "cpu_ratio": gw_us / raw_us if raw_us else 0.0,
        "two_proc_ratio": (g2.msgs_s / g1.msgs_s) if (g1 and g2 and g1.msgs_s) else 0.0,
        "gateway_msgs_s": gw_rate, "gateway_mode": gw.system if gw else "-",
        "gateway_1_msgs_s": g1.msgs_s if g1 else 0.0, "gateway_2_msgs_s": g2.msgs_s if g2 else 0.0,
        "raw_msgs_s": raw, "naive_msgs_s": naive,
        "ratio_raw": gw_rate / raw if raw else 0.0,
        "ratio_raw_one_process": (g1.msgs_s / raw) if (g1 and raw) else 0.0,
        "ratio_naive": gw_rate / naive if naive else 0.0,
        "p99_ms": best.p99_ms if best and best.p99_ms is not None else -1.0,
        "p50_ms": best.p50_ms if best and best.p50_ms is not None else -1.0,
        "lost": lost,
        "sim_msgs_s": sim.get("msgs_s", 0.0), "sim_values_s": sim.get("values_s", 0.0),
        "agents": agents, "agents_note": agents_note,
        "systems": {k: {"msgs_s": v.msgs_s, "note": v.note, "trials": [asdict(t) for t in v.trials]}
                    for k, v in results.items()},
    }


def table(r: dict[str, Any]) -> Table:
    t = Table(title="lampwatch ingest: highest offered rate sustained with zero loss (real Mosquitto + InfluxDB 1.6.7)")
    for col in ("system", "msgs/s", "values/s", "p50 ms", "p99 ms", "RSS MB", "CPU us/msg: consumer broker "
                "influxd loadgen", "rates tried", "note"):
        t.add_column(col, overflow="fold")
    for name, s in r["systems"].items():
        trials = s["trials"]
        ok = [x for x in trials if x["sustained"]]
        b = max(ok, key=lambda x: x["rate"]) if ok else None
        tried = " ".join(f"{x['rate'] // 1000 if x['rate'] >= 1000 else x['rate']}{'k' if x['rate'] >= 1000 else ''}"
                         f"{'✓' if x['sustained'] else '✗'}" for x in trials)
        fail = next((x for x in trials if not x["sustained"]), None)
        note = s["note"]
        if fail is not None and not fail["note"]:
            note = "; ".join(x for x in (note, f"at {fail['rate']}: {fail['stored_settled']}/{fail['published']} in "
                                         f"settle, {fail['stored_final']} after drain"
                                         f"{'' if fail['drained'] else ' (still draining)'}") if x)
        elif fail is not None:
            note = "; ".join(x for x in (note, fail["note"]) if x)
        if name == r["gateway_mode"]:
            note = "; ".join(x for x in ("<- gateway result", note) if x)

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        t.add_row(name, f"{s['msgs_s']:.0f}", f"{s['msgs_s'] * b['values_per_msg']:.0f}" if b else "0",
                  ms(b["p50_ms"]) if b else "-", ms(b["p99_ms"]) if b else "-",
                  "+".join(f"{m:.0f}" for m in b["rss_mb"]) if b else "-",
                  " ".join(f"{b['cpu_us'].get(k, 0):.0f}" for k in ("consumer", "broker", "influxd", "loadgen"))
                  if b else "-", tried or "-", note)
    t.add_row("simulator", f"{r['sim_msgs_s']:.0f}", f"{r['sim_values_s']:.0f}", "-", "-", "-", "-", "-",
              f"multiplexed generate+publish, one process, unpaced; agents={r['agents']}: {r['agents_note']}")
    return t


def lines(r: dict[str, Any]) -> list[str]:
    return [f"sim: msgs_s={r['sim_msgs_s']:.0f} agents={r['agents']}",
            f"bench: gateway_msgs_s={r['gateway_msgs_s']:.0f} raw_msgs_s={r['raw_msgs_s']:.0f} "
            f"naive_msgs_s={r['naive_msgs_s']:.0f} ratio_raw={r['ratio_raw']:.2f} ratio_naive={r['ratio_naive']:.1f} "
            f"gw_us_per_msg={r['gw_us_per_msg']:.0f} raw_us_per_msg={r['raw_us_per_msg']:.0f} "
            f"cpu_ratio={r['cpu_ratio']:.2f} two_proc_msgs_s={r['gateway_2_msgs_s']:.0f} "
            f"p99_ms={r['p99_ms']:.0f} lost={r['lost']}"]


def report(r: dict[str, Any]) -> None:
    Console(width=200).print(table(r))
    for line in lines(r):
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_gateway")
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("bench")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--systems", default="")
    c = sub.add_parser("consume")
    c.add_argument("kind", choices=("raw", "naive"))
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--client-id", required=True)
    c.add_argument("--influx-url", default="")
    c.add_argument("--db", default="")
    c.add_argument("--probe-every", type=int, default=200)
    c.add_argument("--poles", type=int, default=100_000)
    g = sub.add_parser("agents")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--connect-s", type=float, default=60.0)
    g.add_argument("--steady-s", type=float, default=20.0)
    g.add_argument("--dir", required=True)
    a = ap.parse_args(argv if argv is not None else (sys.argv[1:] or ["bench"]))
    if a.cmd == "consume":
        consume(a.kind, a.host, a.port, a.client_id, a.influx_url, a.db, set(probe_poles(a.poles, a.probe_every)))
    elif a.cmd == "agents":
        run_agents(a.port, a.n, a.connect_s, a.steady_s, a.dir)
    else:
        sp = quick_spec() if a.quick else Spec()
        if a.systems:
            sp.systems = tuple(a.systems.split(","))
        report(run(sp))


if __name__ == "__main__":
    main()
