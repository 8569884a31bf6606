"""``lampwatch-sim run`` and ``lampwatch-sim scenario``: a city publishing against a broker.

Two ways to publish a city:

* **multiplexed** (:func:`run_multiplexed`): one :class:`simulator.publisher.Publisher` connection
  sends every pole's messages from a :class:`simulator.stream.TelemetryStream` (signal and delivery
  faults, hostile traffic). Cheap: tens of thousands of poles from one process.
* **per device** (:func:`run_per_device`): every pole is a real :class:`edge.agent.EdgeAgent` (its own
  MQTT client id, retained birth, Last Will, on-disk outbox, persisted seq), sampling the city's
  signal model through a shared cache on an accelerated :class:`edge.clock.ScaledClock`. Only signal
  faults apply here (the agents do their own delivery). All agents share one
  :class:`edge.loop.EdgeLoop` (the loop a real pole runs with one agent: one network thread driving
  every agent's link through a selector, one sampler thread), so thousands run in one process on the
  code a pole runs; connections are paced by the loop.

Pacing: a tick (one sample per pole) is ``step`` of simulated time. ``speed`` simulated seconds per
real second gives a tick every ``step / speed`` real seconds; ``rate`` messages per second instead
gives a tick every ``poles / rate`` seconds; ``speed = 0`` publishes as fast as the broker acknowledges.
Device time never runs ahead of the wall clock: a time-boxed run ends at the present, an open-ended
accelerated run starts a day back and waits for real time once it gets there. A scenario is moved
by whole weeks (time of day and weekday kept) so that it ends before now: its faults and labels move
with it, and the gateway accepts its device times.

:func:`run_scenario` is the whole system on embedded defaults (broker, gateway, SQLite store) for one
scenario, as fast as it goes, writing ``labels.csv``, ``lampwatch.sqlite`` and ``run.json`` to a folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from contract.catalog import INDEX
from contract.cli import quiet_logs
from contract.errors import BrokerError, ConfigError
from simulator.city import City, CityConfig
from simulator.faults import SIGNAL_KINDS, Fault, Label, random_faults, write_labels
from simulator.hostile import hostile_messages
from simulator.publisher import Publisher
from simulator.scenario import Scenario, load_scenario
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream, birth_messages

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
MAX_OUTSTANDING = 20_000  # unacknowledged publishes before the publisher waits


@dataclass
class RunStats:
    published: int = 0  # telemetry messages (multiplexed) or samples (per device) the broker acknowledged
    hostile: int = 0
    faults: int = 0
    seconds: float = 0.0
    births: int = 0
    interrupted: bool = False
    sim_start_ms: int = 0
    sim_end_ms: int = 0  # device time reached (exclusive)
    throughput: list[tuple[float, int]] = field(default_factory=list)  # (real s, published so far)

    @property
    def msgs_s(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"run: published={self.published} hostile={self.hostile} msgs_s={self.msgs_s:.1f} "
                f"faults={self.faults} seconds={self.seconds:.1f}")


# --- time ---------------------------------------------------------------------------------------------
def tick_interval_s(step_ms: int, poles: int, speed: float, rate: float | None) -> float:
    """Real seconds between ticks (0: as fast as the broker acknowledges)."""
    if rate:
        return poles / rate
    return step_ms / 1000.0 / speed if speed > 0 else 0.0


def sim_speed(step_ms: int, interval_s: float) -> float:
    return step_ms / 1000.0 / interval_s if interval_s > 0 else math.inf


def shift_to_past(sc: Scenario, now_ms: int) -> Scenario:
    """The scenario moved by whole weeks so that it ends at or before ``now_ms`` (no move if it does)."""
    if sc.end_ms <= now_ms:
        weeks = (now_ms - sc.end_ms) // WEEK_MS
    else:
        weeks = -(-(sc.end_ms - now_ms) // WEEK_MS) * -1
    off = int(weeks) * WEEK_MS
    if off == 0:
        return sc
    return replace(sc, start_ms=sc.start_ms + off,
                   faults=tuple(replace(f, start_ms=f.start_ms + off, end_ms=f.end_ms + off) for f in sc.faults),
                   events=tuple(replace(e, start_ms=e.start_ms + off, end_ms=e.end_ms + off) for e in sc.events))


def clip_labels(labels: Sequence[Label], end_ms: int) -> list[Label]:
    """Labels of what was actually run: faults that started before ``end_ms``, ending there at the latest."""
    return [lb._replace(end_ms=min(lb.end_ms, end_ms)) for lb in labels if lb.start_ms < end_ms]


def resolve_scenario(name_or_file: str) -> Scenario:
    p = Path(name_or_file)
    if p.suffix and not p.exists():
        raise ConfigError(f"scenario file {p} not found")
    return load_scenario(name_or_file)


@dataclass(frozen=True, slots=True)
class CityPlan:
    """What a run publishes: the city, its signals and faults, and the window of device time."""

    city: City
    model: SignalModel
    faults: tuple[Fault, ...]
    start_ms: int
    step_ms: int
    end_ms: int | None  # None: open-ended
    seed: int
    name: str

    def stream(self) -> TelemetryStream:
        return TelemetryStream(self.city, self.model, self.faults, self.start_ms, self.step_ms, self.seed)


def plan_city(*, poles: int, seed: int, step_ms: int, fault_rate: float, sim_span_ms: int | None,
              now_ms: int, scenario: str | None = None, signal_only: bool = False,
              back_ms: int = DAY_MS) -> CityPlan:
    """A random city (``poles``, ``seed``, ``fault_rate`` faults per pole-day) or a scenario, placed in
    time: ``sim_span_ms`` of device time ending now, or (open-ended, ``None``) starting ``back_ms`` ago
    (faults then fall in the day from the start)."""
    if scenario is not None:
        sc = shift_to_past(resolve_scenario(scenario), now_ms)
        run = sc.build()
        end = sc.end_ms if sim_span_ms is None else min(sc.end_ms, sc.start_ms + sim_span_ms)
        faults = tuple(f for f in sc.faults if not signal_only or f.kind in SIGNAL_KINDS)
        return CityPlan(run.city, run.model, faults, sc.start_ms, sc.step_ms, end, sc.seed, sc.name)
    city = City(CityConfig(seed=seed, poles=poles, districts=max(1, min(8, poles // 10))))
    start = now_ms - (sim_span_ms if sim_span_ms is not None else back_ms)
    fault_end = now_ms if sim_span_ms is not None else max(now_ms, start + DAY_MS)
    fl = tuple(random_faults(city, seed, start, fault_end, rate=fault_rate,
                             kinds=SIGNAL_KINDS if signal_only else None)) if fault_rate > 0 else ()
    return CityPlan(city, SignalModel(city, seed), fl, start, step_ms, None if sim_span_ms is None else now_ms,
                    seed, f"city-{poles}-seed{seed}")


# --- progress -------------------------------------------------------------------------------------------
def _progress(console: Console, total: float | None) -> Progress:
    cols: list[Any] = [SpinnerColumn(), TextColumn("[bold]{task.description}")]
    if total is not None:
        cols.append(BarColumn())
    cols += [TimeElapsedColumn(), TextColumn("{task.fields[stats]}")]
    return Progress(*cols, console=console, transient=False, refresh_per_second=4)


#: a live progress view keeps the screen clean: these loggers are raised to ERROR while a run lasts
_quiet_logs = quiet_logs("amqtt", "transitions", "lampwatch")


# --- multiplexed -------------------------------------------------------------------------------------------
@_quiet_logs
def run_multiplexed(host: str, port: int, plan: CityPlan, *, mqtt_version: int = 5, speed: float = 1.0,
                    rate: float | None = None, duration_s: float | None = None, hostile_pct: float = 0.0,
                    labels_out: Path | None = None, console: Console | None = None,
                    client_id: str = "lampwatch-sim-run", stop: threading.Event | None = None,
                    on_tick: Callable[[RunStats], None] | None = None,
                    stream: TelemetryStream | None = None) -> RunStats:
    """Publish ``plan`` through one connection; births first. Ends after ``duration_s`` real seconds, at
    the plan's end, on ``stop`` or on Ctrl-C (cleanly: what was sent is flushed, the labels written)."""
    from simulator.demo import REFUSED_KINDS

    console = console or Console(stderr=True)
    stream = stream or plan.stream()
    n = len(plan.city)
    interval = tick_interval_s(plan.step_ms, n, speed, rate)
    total_ticks = None if plan.end_ms is None else max(0, -(-(plan.end_ms - plan.start_ms) // plan.step_ms))
    rng = np.random.default_rng([plan.seed, 0x4057])
    st = RunStats(sim_start_ms=plan.start_ms, sim_end_ms=plan.start_ms)
    pub = Publisher(host, port, client_id, mqtt_version=mqtt_version).connect()
    t0 = time.monotonic()
    try:
        for topic, payload in birth_messages(stream, plan.start_ms):
            pub.publish(topic, payload, retain=True)
            st.births += 1
        bar_total = float(total_ticks) if total_ticks is not None else (
            duration_s / interval if duration_s and interval > 0 else None)
        with _progress(console, bar_total) as prog:
            task = prog.add_task(f"{plan.name}: {n} poles", total=bar_total, stats="")
            next_tick = time.monotonic()
            try:
                while True:
                    el = time.monotonic() - t0
                    if duration_s is not None and el >= duration_s:
                        break
                    if total_ticks is not None and stream.ticks_done >= total_ticks:
                        break
                    if stop is not None and stop.is_set():
                        break
                    if stream.now_ms > time.time() * 1000:  # never ahead of the wall clock
                        time.sleep(0.1)
                        continue
                    t_sim = stream.now_ms
                    msgs = stream.tick()
                    if pub.outstanding > MAX_OUTSTANDING:
                        pub.wait_below(MAX_OUTSTANDING // 2, timeout_s=120)
                    for topic, payload in msgs:
                        pub.publish(topic, payload)
                    st.published += len(msgs)
                    if hostile_pct > 0:
                        k = int(rng.binomial(n, hostile_pct / 100.0))
                        for topic, payload, _kind in hostile_messages(rng, k, plan.city, now_ms=t_sim,
                                                                      clock_ms=int(time.time() * 1000),
                                                                      kinds=REFUSED_KINDS, first=st.hostile):
                            pub.publish(topic, payload)
                            st.hostile += 1
                    st.sim_end_ms = stream.now_ms
                    st.seconds = time.monotonic() - t0
                    st.throughput.append((round(st.seconds, 3), st.published))
                    if on_tick is not None:
                        on_tick(st)
                    prog.update(task, advance=1, stats=_stats(st, stream, pub))
                    if interval > 0:
                        next_tick += interval
                        delay = next_tick - time.monotonic()
                        if delay > 0:
                            if stop is not None:
                                stop.wait(delay)
                            else:
                                time.sleep(delay)
            except KeyboardInterrupt:
                st.interrupted = True
                console.print("interrupted: flushing what was published…")
            for topic, payload in stream.flush_held():
                pub.publish(topic, payload)
                st.published += 1
            with contextlib.suppress(BrokerError, KeyboardInterrupt):
                pub.flush(timeout_s=30 if st.interrupted else 120)
            prog.update(task, stats=_stats(st, stream, pub))
    finally:
        pub.close()
        st.seconds = time.monotonic() - t0
    labels = clip_labels([f.label for f in plan.faults], st.sim_end_ms)
    st.faults = len(labels)
    if labels_out is not None:
        write_labels(labels_out, labels)
    return st


def _stats(st: RunStats, stream: TelemetryStream, pub: Publisher) -> str:
    sim = time.strftime("%Y-%m-%d %H:%M", time.gmtime(stream.now_ms / 1000))
    return (f"sim {sim}  sent {st.published}  hostile {st.hostile}  {st.msgs_s:,.0f} msg/s  "
            f"unacked {pub.outstanding}")


# --- per device --------------------------------------------------------------------------------------------
class FleetCache:
    """The city's signal model sampled once per step for the whole fleet, shared by every agent."""

    def __init__(self, plan: CityPlan, keep: int = 8) -> None:
        from simulator.faults import FaultSet

        self.plan = plan
        self._fs = FaultSet(plan.faults, plan.city)
        self._cache: dict[int, np.ndarray] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def at(self, t_ms: int) -> np.ndarray:
        p = self.plan
        tq = p.start_ms + max(0, (t_ms - p.start_ms) // p.step_ms) * p.step_ms
        with self._lock:
            got = self._cache.get(tq)
            if got is None:
                got = p.model.sample(tq, self._fs)
                self._cache[tq] = got
                if len(self._cache) > self._keep:
                    del self._cache[min(self._cache)]
            return got


class PoleDriver:
    """An edge driver reading one pole's row of the fleet cache."""

    def __init__(self, cache: FleetCache, index: int) -> None:
        self.cache, self.index = cache, index
        self.metrics: tuple[str, ...] = tuple(cache.plan.city.poles[index].sensors)

    def read(self, names: Sequence[str], t_ms: int) -> dict[str, float]:
        row = self.cache.at(t_ms)[self.index]
        out: dict[str, float] = {}
        for n in names:
            v = float(row[INDEX[n]])
            if not math.isnan(v):
                out[n] = v
        return out

    def close(self) -> None:
        pass


def spread(brokers: Sequence[tuple[str, int]], i: int) -> list[tuple[str, int]]:
    """Agent ``i``'s broker order: the list rotated by ``i`` (first choice ``i mod n``, then the rest)."""
    k = i % len(brokers) if brokers else 0
    return [*brokers[k:], *brokers[:k]]


@_quiet_logs
def run_per_device(host: str, port: int, plan: CityPlan, *, workdir: Path, speed: float = 1.0,
                   duration_s: float | None = None, hostile_pct: float = 0.0, labels_out: Path | None = None,
                   console: Console | None = None, stop: threading.Event | None = None,
                   credentials: dict[str, str] | None = None, brokers: Sequence[tuple[str, int]] = (),
                   mqtt_version: int = 5) -> RunStats:
    """Every pole a real edge agent (own client id, birth, Last Will, outbox) on a scaled clock.

    With ``brokers`` (a cluster's nodes) pole ``i`` gets the list rotated by ``i`` (:func:`spread`): the
    fleet spreads evenly over the nodes, and each agent fails over along its own order.

    With ``credentials`` (pole id -> password, as ``lampwatch-ingest credentials`` writes them) every
    agent logs in as its own pole, so this runs against a production broker with per-pole ACLs; the
    agents' births then carry each pole's installation record and no shared inventory connection
    (which the ACL would refuse) is used."""
    from contract.models import Location
    from edge.agent import EdgeAgent
    from edge.clock import ScaledClock
    from edge.config import EdgeConfig, SimulatedSource
    from edge.loop import EdgeLoop
    from simulator.demo import REFUSED_KINDS

    console = console or Console(stderr=True)
    if speed <= 0:
        raise ConfigError("per-device mode needs a --speed > 0 (agents sample on a clock)")
    n = len(plan.city)
    step_s = plan.step_ms / 1000.0
    cache = FleetCache(plan)
    workdir.mkdir(parents=True, exist_ok=True)
    st = RunStats(sim_start_ms=plan.start_ms, sim_end_ms=plan.start_ms)
    # the city's inventory records first (rated power, nominal voltage): the agents' births lack them
    if credentials is not None:
        missing = [p.pole_id for p in plan.city.poles if p.pole_id not in credentials]
        if missing:
            raise ConfigError(f"no credentials for {len(missing)} poles (first: {missing[0]}): generate them with "
                              f"lampwatch-ingest credentials --poles {n}")
        if hostile_pct:
            raise ConfigError("--hostile-pct needs a connection allowed to publish for any pole: not with "
                              "--credentials")
    inv = None
    if credentials is None:
        inv = Publisher(host, port, "lampwatch-sim-inventory", mqtt_version=mqtt_version).connect()
        for topic, payload in birth_messages(plan.stream(), plan.start_ms):
            inv.publish(topic, payload, retain=True)
            st.births += 1
    clock = ScaledClock(speed, origin=plan.start_ms / 1000.0)
    raise_fd_limit(4 * n + 256)  # per agent: its socket, the outbox file, its WAL and shared-memory index
    agent_loop = EdgeLoop(clock, name="sim-agents").start()
    agents: list[EdgeAgent] = []
    t0 = time.monotonic()
    try:
        template: dict[str, Any] | None = None
        for p in plan.city.poles:
            fields: dict[str, Any] = dict(
                pole=p.pole_id, district=p.district, outbox_path=workdir / f"edge-{p.pole_id}.sqlite",
                location=Location(lat=p.lat, lon=p.lon), tilt_baseline_deg=p.tilt_baseline_deg,
                rated_power_w=p.rated_power_w, nominal_voltage_v=p.nominal_voltage_v,
                mqtt_username=p.pole_id if credentials else None,
                mqtt_password=credentials[p.pole_id] if credentials else None,
                drivers=[SimulatedSource(metrics=list(p.sensors))], mqtt_version=mqtt_version,
                mqtt_brokers=[f"{h}:{port_}" for h, port_ in spread(brokers, p.index)])
            if template is None:  # the first one through the settings sources (LAMPWATCH_EDGE_* apply) ...
                cfg = EdgeConfig(mqtt_host=host, mqtt_port=port, report_interval_s=step_s,
                                 safety_interval_s=min(3600.0, step_s), outbox_sync="off", firmware="lampwatch-sim",
                                 backoff_max_s=5.0, **fields)
                template = cfg.model_dump()
            else:  # ... the others validated from it (4x cheaper than re-reading the environment)
                cfg = EdgeConfig.model_validate({**template, **fields})
            drv = PoleDriver(cache, p.index)
            agents.append(EdgeAgent(cfg, drivers=dict.fromkeys(p.sensors, drv), loop=agent_loop))
        rng = np.random.default_rng([plan.seed, 0x4057])
        with _progress(console, duration_s) as prog:
            task = prog.add_task(f"{plan.name}: {n} edge agents", total=duration_s, stats="starting agents")
            # opening an outbox waits on the disk (the GIL is released): a few at a time
            with ThreadPoolExecutor(max_workers=8) as ex:
                list(ex.map(lambda a: a.start(), agents))
            last = time.monotonic()
            try:
                while True:
                    el = time.monotonic() - t0
                    if duration_s is not None and el >= duration_s:
                        break
                    if plan.end_ms is not None and clock.time() * 1000 >= plan.end_ms:
                        break
                    if stop is not None and stop.is_set():
                        break
                    time.sleep(min(0.25, max(0.01, (duration_s or 1e9) - el)))
                    now = time.monotonic()
                    if hostile_pct > 0 and inv is not None:
                        k = int(rng.binomial(max(1, round(n * (now - last) * speed / step_s)), hostile_pct / 100))
                        t_dev = int(clock.time() * 1000)
                        for topic, payload, _kind in hostile_messages(rng, k, plan.city, now_ms=t_dev,
                                                                      clock_ms=int(time.time() * 1000),
                                                                      kinds=REFUSED_KINDS, first=st.hostile):
                            inv.publish(topic, payload)
                            st.hostile += 1
                    last = now
                    c = _agents_counts(agents)
                    st.published, st.seconds = int(c["acked"]), time.monotonic() - t0
                    st.throughput.append((round(st.seconds, 3), st.published))
                    prog.update(task, completed=min(st.seconds, duration_s or st.seconds),
                                stats=f"connected {int(c['connected'])}/{n}  acked {st.published}  "
                                      f"backlog {int(c['backlog'])}  {st.msgs_s:,.0f} samples/s")
            except KeyboardInterrupt:
                st.interrupted = True
                console.print("interrupted: stopping the agents…")
            st.sim_end_ms = int(clock.time() * 1000)
    finally:
        stop_agents(agents, flush_timeout_s=3.0)
        agent_loop.stop()
        if inv is not None:
            with contextlib.suppress(BrokerError):
                inv.flush(timeout_s=10)
            inv.close()
    st.published = int(_agents_counts(agents)["acked"])
    st.seconds = time.monotonic() - t0
    labels = clip_labels([f.label for f in plan.faults], st.sim_end_ms)
    st.faults = len(labels)
    if labels_out is not None:
        write_labels(labels_out, labels)
    return st


def stop_agents(agents: Sequence[Any], flush_timeout_s: float = 3.0) -> None:
    """Stop agents concurrently (each waits for its backlog and its offline status to be acknowledged)."""
    started = [a for a in agents if a.link is not None]
    if started:
        with ThreadPoolExecutor(max_workers=min(256, len(started))) as ex:
            list(ex.map(lambda a: a.stop(flush_timeout_s=flush_timeout_s), started))


def raise_fd_limit(need: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard limit when ``need`` descriptors would not fit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target != resource.RLIM_INFINITY and target < need:
            logging.getLogger("lampwatch.sim").warning(
                "%d agents need about %d file descriptors; the limit is %d", need // 4, need, target)


def _agents_counts(agents: Sequence[Any]) -> dict[str, float]:
    out = {"acked": 0.0, "connected": 0.0, "backlog": 0.0}
    for a in agents:
        c = a.counters()
        for k in out:
            out[k] += float(c.get(k, 0))
    return out


# --- a scenario on embedded defaults ----------------------------------------------------------------------
@dataclass
class ScenarioResult:
    name: str
    out: Path
    published: int  # samples the gateway should accept
    stored: int
    rejected: int
    expected_rejects: int
    alerts: int
    faults: int
    seconds: float
    broker: str
    step_ms: int
    poles: int
    start_ms: int
    end_ms: int

    @property
    def pole_days(self) -> float:
        return self.poles * (self.end_ms - self.start_ms) / DAY_MS

    def line(self) -> str:
        return (f"scenario: name={self.name} published={self.published} stored={self.stored} "
                f"rejected={self.rejected} alerts={self.alerts} faults={self.faults} seconds={self.seconds:.1f}")


@_quiet_logs
def run_scenario(scenario: str, out: Path, *, broker: str = "auto", speed: float = 0.0,
                 until_ms: int | None = None, console: Console | None = None) -> ScenarioResult:
    """Run a scenario end to end on embedded defaults; write labels.csv, lampwatch.sqlite, run.json."""
    from simulator.demo import embedded_gateway, start_broker

    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("lampwatch.sqlite", "lampwatch.sqlite-wal", "lampwatch.sqlite-shm"):
        (out / stale).unlink(missing_ok=True)
    for old_state in out.glob("alarms-*.json*"):
        old_state.unlink()
    now_ms = int(time.time() * 1000)
    plan = plan_city(poles=0, seed=0, step_ms=0, fault_rate=0, sim_span_ms=until_ms, now_ms=now_ms,
                     scenario=scenario)
    t0 = time.monotonic()
    with start_broker(broker) as (host, port, version, desc), \
            embedded_gateway(host, port, version, out, client_id="lampwatch-sim-scenario",
                             sqlite_only=True) as egw:
        console.print(f"[dim]scenario {plan.name}: broker {desc}, store sqlite {out / 'lampwatch.sqlite'}[/dim]",
                      highlight=False)
        s = plan.stream()
        st = run_multiplexed(host, port, plan, mqtt_version=version, speed=speed, console=console,
                             client_id="lampwatch-sim-scenario-pub", labels_out=out / "labels.csv", stream=s)
        sent = st.published + st.births
        deadline = time.monotonic() + 300
        last, last_change = -1.0, time.monotonic()
        with _progress(console, float(sent)) as prog:
            task = prog.add_task("gateway draining", total=float(sent), stats="")
            while time.monotonic() < deadline:
                c = egw.gw.counters()
                acked = c.get("acked", 0.0)
                prog.update(task, completed=min(acked, sent),
                            stats=f"stored {int(c.get('samples_accepted', 0))}  "
                                  f"rejected {int(c.get('samples_rejected', 0))}")
                if acked != last:
                    last, last_change = acked, time.monotonic()
                if acked >= sent or time.monotonic() - last_change > 3.0:
                    break
                time.sleep(0.1)
        egw.stop()
        c = egw.gw.counters()
        stored = egw.store.count("telemetry")
    seconds = time.monotonic() - t0
    res = ScenarioResult(plan.name, out, s.published_samples, stored, int(c.get("samples_rejected", 0)),
                         s.expected_rejects, int(c.get("alarms_raised", 0)), st.faults, seconds, desc,
                         plan.step_ms, len(plan.city), plan.start_ms, st.sim_end_ms)
    meta = {
        "scenario": plan.name, "start_ms": plan.start_ms, "end_ms": st.sim_end_ms, "step_ms": plan.step_ms,
        "seed": plan.seed, "broker": desc, "seconds": round(seconds, 3),
        "counters": {"published_samples": s.published_samples, "published_messages": s.published_messages,
                     "expected_rejects": s.expected_rejects, "duplicates": s.duplicates, "dropped": s.dropped,
                     "stored": stored, "rejected": res.rejected, "alerts": res.alerts, "hostile": st.hostile},
        "poles": [{"pole": p.pole_id, "district": p.district, "lat": p.lat, "lon": p.lon} for p in plan.city.poles],
        "throughput": st.throughput[:: max(1, len(st.throughput) // 500)],
    }
    (out / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return res
