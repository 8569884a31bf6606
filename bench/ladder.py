"""The rate ladder: one trial of one system at one offered rate (servers, consumers, load, counting, CPU per
process, latency), and the climb from a start rate until a rate fails."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.latency import Poller, percentile
from bench.loadgen import probe_poles
from bench.m2i import m2i_config
from bench.procs import LineProc, cpu_s, terminate, thread_cpu_s, vm_hwm_mb
from ingest.influx1 import Influx1Store
from simulator.city import City, CityConfig
from testbed.gateway import GatewayProcess, wait_gateway_online
from testbed.servers import InfluxDB1, Mosquitto

LADDER = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 10_000, 12_000, 14_000, 16_000, 20_000, 24_000,
          28_000, 32_000)
#: above this offered rate the load comes from two load-generator processes (one tops out near here)
ONE_LOADGEN_MAX = 10_000
#: the gateways' full state save cadence in a trial, the learned rows included. The defaults, 30 s (the
#: pole table) and 300 s (the learned rows), are longer than a trial (the first interval, 10 s, then the
#: 8 s hold), so no trial saw a save; at 15 s for both one full save with the learned rows lands in each
#: trial's hold: its memory is in the RSS column and its CPU in the gateway's, more often than the
#: defaults cost a running gateway (an upper bound: the learned rows are most of a save's CPU)
DETECT_SAVE_EVERY_S = 15.0
SYSTEMS = ("raw", "naive", "gateway-1", "gateway-2", "mqtt2influxdb")
#: also runnable (--systems): the raw counter on the gateway's buffered socket (gateway.mqttsock)
EXTRA_SYSTEMS = ("raw-buffered",)
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
    max_trials: int = 9  # per system: enough for next_rung to bracket any rate on the ladder from any start
    systems: tuple[str, ...] = SYSTEMS
    sim_s: float = 5.0  # unpaced simulator capability run
    agents: tuple[int, ...] = (2000,)  # per-device agents: how many of n hold (0: skip)
    quiet: bool = False
    rates: tuple[int, ...] = ()  # a targeted run: exactly these rates, each once, no ladder search
    # Steady state (every system but raw, which keeps no state and writes nothing): the city of a trial has
    # rate x report_s poles, so each pole reports once per report_s of wall time, as a real city at that
    # rate does; its first interval (every pole once: every series and per-pole state new) is published
    # first at the same rate and must be stored before the measured hold_s starts. Its CPU is reported
    # apart ("first interval"). Without it (steady=False) every trial is a 100,000-pole city's first
    # interval, the worst case for the store (series creation) and the gateway (state growth).
    steady: bool = True
    report_s: float = 10.0
    latency_at80: bool = True  # after gateway-1's ladder, one more trial at 80 % of its best rate
    pyspy_dir: str | None = None  # record each gateway process with py-spy (collapsed stacks) during the load


def quick_spec() -> Spec:
    return Spec(poles=5_000, hold_s=3.0, drain_s=15.0, ladder=(250, 1000, 2000), latency_at80=False,
                start={"raw": 2000, "naive": 250, "gateway-1": 1000, "gateway-2": 1000, "mqtt2influxdb": 250},
                max_trials=1, systems=("raw", "naive", "gateway-1", "gateway-2"), sim_s=2.0, agents=(50,))


def threads_text(us: dict[str, float]) -> str:
    """The gateway's named threads' CPU per message (``lw-*``, gateway.osthread), e.g. ``threads us/msg:
    pipeline 61 mqtt 25 output 18 saver 12``; empty for a consumer that names none."""
    named = [(k.removeprefix("lw-"), v) for k, v in us.items() if k.startswith("lw-") and v >= 0.5]
    return ("threads us/msg: " + " ".join(f"{k} {v:.0f}" for k, v in named) + " ") if named else ""


def next_rung(seen: list[tuple[int, bool]], n: int) -> int | None:
    """The ladder index to try next after ``seen`` ((index, held) in the order tried), or None when the
    highest rung held is found: the one just below the lowest rung that failed (or the ladder's top).

    Gallop while every rung held (steps 1, 2, 4, ... rungs up, so a fast system reaches the ladder's top
    in a few trials: a linear climb from 4,000 msg/s stopped at 16,000 after its 7 trials while the
    bare client still held, capping ``ratio_raw``); step down while every rung failed; once bracketed,
    bisect between the highest held and the lowest failed. Pure: ``tests/bench/test_bench_tools.py``."""
    held = [i for i, ok in seen if ok]
    failed = [i for i, ok in seen if not ok]
    last = seen[-1][0]
    if not failed:  # climbing
        if last >= n - 1:
            return None
        return min(n - 1, last + 2 ** (len(seen) - 1))
    lo_fail = min(failed)
    if not held:  # every rate failed so far: step down
        return lo_fail - 1 if lo_fail > 0 else None
    hi_ok = max(i for i in held if i < lo_fail) if any(i < lo_fail for i in held) else None
    if hi_ok is None:  # held only above a failure (noise): trust the failure, look below it
        return lo_fail - 1 if lo_fail > 0 and (lo_fail - 1) not in dict(seen) else None
    if lo_fail - hi_ok <= 1:
        return None
    return (hi_ok + lo_fail) // 2


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
    # the consumer's share by thread (the gateway names its threads, gateway.osthread), same window and divisor
    thread_us: dict[str, float] = field(default_factory=dict)
    poles: int = 0  # the trial's city
    # steady state: the first interval (poles messages at the same rate, before the measured load)
    first_cpu_us: dict[str, float] = field(default_factory=dict)
    first_held: bool | None = None  # stored within settle_s of its last PUBACK (None: not a steady trial)
    note: str = ""


@dataclass
class SystemResult:
    system: str
    trials: list[Trial] = field(default_factory=list)
    note: str = ""
    at80: Trial | None = None  # gateway-1: a trial at 80 % of its highest rate held, for the latency there

    @property
    def best(self) -> Trial | None:
        ok = [t for t in self.trials if t.sustained]
        return max(ok, key=lambda t: t.rate) if ok else None

    @property
    def msgs_s(self) -> float:
        b = self.best
        return float(b.rate) if b else 0.0


class Bench:
    def __init__(self, spec: Spec, influx: InfluxDB1, workdir: Path) -> None:
        self.spec, self.influx, self.workdir = spec, influx, workdir
        self.city_districts = City(CityConfig(seed=7, poles=min(spec.poles, 2000),
                                              districts=spec.districts)).districts
        self.m2i: Path | None = None
        self._n = 0

    def log(self, text: str) -> None:
        if not self.spec.quiet:
            err.print(f"[dim]bench:[/] {text}", highlight=False)

    @contextlib.contextmanager
    def _consumers(self, system: str, broker: Mosquitto, db: str, tag: str, poles: int) -> Iterator[Any]:
        """Start the system's consumer process(es); yield an object with .count() / .pids / .seen."""
        tmp = self.workdir
        url = self.influx.url
        if system in ("raw", "raw-buffered", "naive"):
            lp = LineProc([sys.executable, "-m", "bench.bench_gateway", "consume", system, "--port", str(broker.port),
                            "--client-id", f"bench-{system}-{tag}", "--influx-url", url, "--db", db,
                            "--probe-every", str(self.spec.probe_every), "--poles", str(poles)],
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
                                        client_id=cid, districts=part, selfmetrics_interval_s=5,
                                        detect_save_every_s=DETECT_SAVE_EVERY_S,
                                        detect_learned_save_every_s=DETECT_SAVE_EVERY_S)
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
                terminate(proc)
                log.close()
        else:
            raise ValueError(system)

    def trial(self, system: str, rate: int) -> Trial:
        sp = self.spec
        self._n += 1
        tag = f"{self._n}"
        db = f"bench_{self._n}"
        tr = Trial(system, rate)
        raw = system.startswith("raw")
        steady = sp.steady and not raw
        tr.poles = max(1, int(rate * sp.report_s)) if steady else sp.poles
        probes_of = probe_poles(tr.poles, sp.probe_every)
        store = Influx1Store(self.influx.url, db)
        with Mosquitto() as broker, self._consumers(system, broker, db, tag, tr.poles) as cons:
            pids = [cons.proc.pid] if isinstance(cons, LineProc) else \
                [g.proc.pid for g in cons] if isinstance(cons, list) else [cons.pid]

            def count() -> int:
                if isinstance(cons, LineProc) and raw:
                    return cons.count
                try:
                    return store.count()
                except Exception:
                    return -1

            others = {"broker": broker.pid, "influxd": self.influx.pid}

            def cpu() -> dict[str, float]:
                return {"consumer": sum(cpu_s(p) for p in pids), **{k: cpu_s(v) for k, v in others.items()}}

            go = self.workdir / f"go-{tag}"
            c_first = cpu()
            procs, outs = self._start_load(broker, rate, tag, tr.poles, warm=steady, go=go,
                                           births=system.startswith("gateway"))
            base = 0
            if steady:
                first = self._first_interval(procs, outs, count, tr)
                if first is None:  # not absorbed: the trial fails here; the measured load never starts
                    for p in procs:
                        terminate(p)
                    return self._end(tr, store, db)
                base = first["published"]
                tr.first_cpu_us = {k: round((v - c_first[k]) * 1e6 / max(1, base), 1) for k, v in cpu().items()}
                tr.first_cpu_us["loadgen"] = round(first["cpu_s"] * 1e6 / max(1, base), 1)
            poller = None if raw else Poller(Influx1Store(self.influx.url, db, create=False), probes_of, sp.poll_s)
            def threads() -> dict[str, float]:
                out: dict[str, float] = {}
                for p in pids:
                    for k, v in thread_cpu_s(p).items():
                        out[k] = out.get(k, 0.0) + v
                return out

            cpu0, thr0 = cpu(), threads()
            spies = self._pyspy(system, pids, rate, tag)
            go.touch()
            load = self._finish_load(procs, outs)
            for spy in spies:  # SIGINT: py-spy writes its file and exits
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    terminate(spy)
            tr.published, tr.achieved_rate = load["acked"], load["achieved_rate"]
            tr.values_per_msg = load["values"] / max(1, load["published"])
            tr.stored_at_end = count() - base
            deadline = load["t_all_acked"] + sp.settle_s
            n = tr.stored_at_end
            while n < tr.published and time.time() < deadline:
                time.sleep(0.1)
                n = count() - base
            tr.stored_settled = n
            n = self._drain(n, tr.published, lambda: count() - base, tr)
            tr.stored_final = n
            tr.lost = max(0, tr.published - n)
            cpu1, thr1 = cpu(), threads()
            tr.cpu_us = {k: round((cpu1[k] - cpu0[k]) * 1e6 / max(1, tr.published), 1) for k in cpu0}
            tr.thread_us = {k: round((v - thr0.get(k, 0.0)) * 1e6 / max(1, tr.published), 1)
                            for k, v in sorted(thr1.items(), key=lambda kv: -kv[1]) if v - thr0.get(k, 0.0) > 0}
            tr.cpu_us["loadgen"] = round(load["cpu_s"] * 1e6 / max(1, tr.published), 1)
            if poller is not None:
                time.sleep(sp.poll_s * 2)
                poller.stop()
            tr.rss_mb = [round(vm_hwm_mb(p), 1) for p in pids]
            lat: list[float] = []
            probes = load["probes"]
            for pole, seq, t_pub in probes:
                seen = cons.seen.get((pole, seq)) if raw else poller.seen_at(pole, seq)  # type: ignore
                if seen is not None:
                    lat.append((seen - t_pub) * 1000)
            tr.probes, tr.probes_seen = len(probes), len(lat)
            tr.p50_ms, tr.p99_ms = percentile(lat, 0.50), percentile(lat, 0.99)
        ok_rate = tr.achieved_rate >= 0.97 * rate
        tr.sustained = ok_rate and tr.stored_settled >= tr.published > 0 and tr.published == load["published"]
        if not ok_rate:
            tr.note = f"load generator reached only {tr.achieved_rate:.0f} msg/s"
        if system == "mqtt2influxdb" and tr.stored_final > tr.published:
            tr.note = "more points than messages?"
        return self._end(tr, store, db)

    def _drain(self, n: int, want: int, count: Any, tr: Trial) -> int:
        """After the settle: keep counting while the consumer makes progress (idle_s), at most drain_s."""
        sp = self.spec
        last_n, last_t, t_drain = n, time.monotonic(), time.monotonic() + sp.drain_s
        while n < want:
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
        return int(n)

    def _first_interval(self, procs: list[subprocess.Popen[bytes]], outs: list[Path], count: Any,
                        tr: Trial) -> dict[str, Any] | None:
        """Wait for the load generators' warm phase and for the consumer to store all of it. Returns the
        warm phase's merged figures, or None (trial failed, note set) if it was not absorbed."""
        sp = self.spec
        ready = [o.with_suffix(".ready") for o in outs]
        while not all(r.exists() for r in ready):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("load generator exited in its warm phase")
            time.sleep(0.05)
        parts = [json.loads(r.read_text()) for r in ready]
        warm = {"published": sum(x["published"] for x in parts), "cpu_s": sum(x["cpu_s"] for x in parts),
                "t_all_acked": max(x["t_all_acked"] for x in parts)}
        n, deadline = count(), warm["t_all_acked"] + sp.settle_s
        while n < warm["published"] and time.time() < deadline:
            time.sleep(0.1)
            n = count()
        tr.first_held = n >= warm["published"]
        if not tr.first_held:
            n = self._drain(n, warm["published"], count, tr)
        if n < warm["published"]:
            tr.note = f"first interval not absorbed: {n}/{warm['published']} stored"
            tr.stored_final = 0
            return None
        return warm

    def _end(self, tr: Trial, store: Influx1Store, db: str) -> Trial:
        with contextlib.suppress(Exception):
            self.influx.drop_database(db)
        store.close()
        p99 = f"{tr.p99_ms:.0f}" if tr.p99_ms is not None else "-"
        first = "" if tr.first_held is None else f" first_interval={'held' if tr.first_held else 'late'}"
        self.log(f"{tr.system} @ {tr.rate} msg/s: poles={tr.poles}{first} published={tr.published} "
                 f"achieved={tr.achieved_rate:.0f}/s at_end={tr.stored_at_end} settled={tr.stored_settled} "
                 f"final={tr.stored_final} {'OK' if tr.sustained else 'FAIL'} p99={p99} ms rss={tr.rss_mb} "
                 f"{threads_text(tr.thread_us)}{tr.note}")
        return tr

    def _start_load(self, broker: Mosquitto, rate: int, tag: str, poles: int, *, warm: bool,
                    go: Path, births: bool = False) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
        """Start the load generator(s): two processes above ONE_LOADGEN_MAX. With ``warm``, each publishes
        the city's first interval, writes ``<out>.ready`` and waits for ``go`` before the measured load.
        With ``births`` (the lampwatch gateways: the only consumers that read them), each pole's birth
        goes first, as a real city's agents send them (``bench/loadgen.py``)."""
        sp = self.spec
        n = 1 if rate <= ONE_LOADGEN_MAX else 2
        procs, outs = [], []
        for k in range(n):
            out = self.workdir / f"load-{tag}-{k}.json"
            outs.append(out)
            extra = ["--warm-ticks", "1", "--ready", str(out.with_suffix(".ready")), "--go", str(go)] if warm else []
            extra += ["--births"] if births else []
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", "--port", str(broker.port), "--rate", str(rate),
                 "--seconds", str(sp.hold_s), "--poles", str(poles), "--districts", str(sp.districts),
                 "--probe-every", str(sp.probe_every), "--tag", f"{tag}-{k}", "--shard", f"{k}/{n}",
                 "--out", str(out), *extra], stdout=subprocess.DEVNULL))
        return procs, outs

    def _finish_load(self, procs: list[subprocess.Popen[bytes]], outs: list[Path]) -> dict[str, Any]:
        """Wait for the load generators to finish; their results merged."""
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"load generator exited {p.returncode}")
        loads = [json.loads(o.read_text()) for o in outs]
        merged = dict(loads[0])
        for key in ("published", "acked", "refused", "values", "achieved_rate", "max_outstanding", "cpu_s"):
            merged[key] = sum(x[key] for x in loads)
        merged["t_all_acked"] = max(x["t_all_acked"] for x in loads)
        merged["probes"] = [pr for x in loads for pr in x["probes"]]
        return merged

    def _pyspy(self, system: str, pids: list[int], rate: int, tag: str) -> list[subprocess.Popen[bytes]]:
        """py-spy ``record`` of each gateway process for the load's duration (``--nonblocking``: it never
        pauses the process, so the CPU figures stay the gateway's own). Collapsed stacks, one file a pid."""
        sp = self.spec
        if not sp.pyspy_dir or not system.startswith("gateway"):
            return []
        out = Path(sp.pyspy_dir)
        out.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("py-spy")
        return [subprocess.Popen([str(exe) if exe.exists() else "py-spy", "record", "--pid", str(pid), "--rate", "100",
                                  "--nonblocking", "--threads", "--format", "raw",
                                  "-o", str(out / f"{system}-{rate}-{tag}-{pid}.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                for pid in pids]

    def search(self, system: str, start: int | None = None) -> SystemResult:
        """Find the highest rung held from ``start`` (:func:`next_rung`: gallop up, bisect once bracketed,
        step down if the first rate fails). With ``spec.rates`` (a targeted run), try exactly those rates."""
        sp = self.spec
        res = SystemResult(system)
        if sp.rates:
            res.trials = [self.trial(system, r) for r in sp.rates]
            return res
        ladder = list(sp.ladder)
        first = start if start is not None else sp.start.get(system, ladder[0])
        i: int | None = min(range(len(ladder)), key=lambda j: abs(ladder[j] - first))
        seen: list[tuple[int, bool]] = []
        while i is not None and len(res.trials) < sp.max_trials:
            tr = self.trial(system, ladder[i])
            res.trials.append(tr)
            if tr.note.startswith("load generator"):  # not offered: a failed rung, the search goes below it
                res.note = f"the load generator could not offer {ladder[i]}"
            seen.append((i, tr.sustained and not tr.note.startswith("load generator")))
            i = next_rung(seen, len(ladder))
        if res.best is not None and res.best.rate == ladder[-1]:
            top = f"held the ladder's top ({ladder[-1]}): the limit is higher"
            res.note = "; ".join(x for x in (res.note, top) if x)
        elif i is not None and not res.note:
            res.note = f"stopped after {sp.max_trials} trials, not bracketed"
        if system == "gateway-1" and sp.latency_at80 and res.best is not None:
            # the latency target is set at 80 % of the highest rate held, rarely a ladder step
            res.at80 = self.trial(system, max(100, round(0.8 * res.best.rate / 100) * 100))
        return res

