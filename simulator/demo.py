"""``make demo``: the whole system on embedded defaults, no servers needed.

Broker: the real Mosquitto when a ``mosquitto`` binary is installed (started through the harness),
otherwise the embedded amqtt broker. Store: the embedded SQLite file unless an InfluxDB URL is
configured (``LAMPWATCH_GATEWAY_INFLUX_URL``). A fleet of simulated poles publishes through the
multiplexed publisher, with a seeded fault mix and a trickle of hostile payloads; the real gateway
validates, stores, dead-letters and raises alarms; a live view shows it all. The run ends with

    demo: published=<n> stored=<n> rejected=<n> alerts=<n> lost=<n>

``stored`` is counted by querying the store itself; ``lost = published - stored - rejected``.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from contract.cli import quiet_logs
from contract.errors import BrokerError
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from ingest.stores import StoreConfig, describe, open_store
from simulator.city import City, CityConfig
from simulator.embedded import EmbeddedBroker
from simulator.faults import Fault, random_faults
from simulator.hostile import ACCEPTED_KINDS, HOSTILE_KINDS, hostile_messages, routed_to_gateway
from simulator.publisher import Publisher
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream, birth_messages
from testbed.servers import Alertmanager, Mosquitto, ServerMissing

DAY_MS = 86_400_000
REFUSED_KINDS = tuple(k for k in HOSTILE_KINDS if k not in ACCEPTED_KINDS)


@dataclass
class DemoResult:
    published: int
    stored: int
    rejected: int  # samples refused by the gateway (each dead-lettered with its reason)
    alerts: int
    duplicates: int
    broker: str
    store: str
    hostile: int = 0  # hostile messages sent (counted in published: each must come back as one rejection)
    replayed: int = 0  # true replays sent (not counted in published: each must come back as one duplicate)
    # hostile messages on a topic no gateway subscribes to (an extra level, another root): the broker
    # routes them nowhere, so they are neither in published nor expected back (hostile.routed_to_gateway).
    # Counting them as published made a default demo end on lost=1 once in a while: a tick with 7+ hostile
    # messages reached the topic-injection kind, half of whose topics the gateway never receives.
    unroutable: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # hostile messages sent, by kind (unroutable included)

    @property
    def lost(self) -> int:
        return self.published - self.stored - self.rejected

    def line(self) -> str:
        return (f"demo: published={self.published} stored={self.stored} rejected={self.rejected} "
                f"alerts={self.alerts} lost={self.lost}")


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM inside the block takes effect at its end, as KeyboardInterrupt: the demo's
    counts are made right after each publish, and an interrupt between the two made the summary line off
    by one. Only the main thread can take signals; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    # a signal the process ignores stays ignored, and one whose handler Python did not set is left alone
    old = {s: h for s in (signal.SIGINT, signal.SIGTERM)
           if (h := signal.getsignal(s)) is not None and h is not signal.SIG_IGN}
    for s in old:
        signal.signal(s, lambda n, _f: got.append(n))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        raise KeyboardInterrupt


@contextlib.contextmanager
def start_broker(kind: str) -> Iterator[tuple[str, int, int, str]]:
    """(host, port, mqtt_version, description) of a running broker: ``auto`` (Mosquitto through the
    harness if installed, else the embedded amqtt broker), ``mosquitto`` or ``embedded``."""
    if kind in ("auto", "mosquitto"):
        try:
            m = Mosquitto()
        except ServerMissing:
            if kind == "mosquitto":
                raise
        else:
            with m:
                yield m.host, m.port, 5, f"mosquitto {m.host}:{m.port}"
            return
    with EmbeddedBroker() as b:
        yield b.host, b.port, 311, f"embedded amqtt {b.host}:{b.port}"



class EmbeddedGateway:
    """A started gateway (with detection) around an open store; ``stop()`` is idempotent."""

    def __init__(self, gw: Gateway, store: Any, store_cfg: StoreConfig) -> None:
        self.gw, self.store, self.store_cfg = gw, store, store_cfg
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.gw.stop()


@contextlib.contextmanager
def embedded_gateway(host: str, port: int, version: int, workdir: Path, *, client_id: str = "lampwatch-demo-gw",
                     sqlite_only: bool = False, **overrides: Any) -> Iterator[EmbeddedGateway]:
    """The real gateway (``gateway.app.build_with_store``) on ``workdir/lampwatch.sqlite``, or on the
    InfluxDB the environment names unless ``sqlite_only``; stopped and its store closed on exit."""
    env = GatewaySettings()
    fields = {} if sqlite_only else env.store_fields()
    if sqlite_only:
        fields["store"] = "sqlite"
    store_cfg = StoreConfig(**{**fields, "sqlite_path": str(workdir / "lampwatch.sqlite")})
    settings = GatewaySettings(mqtt_host=host, mqtt_port=port, mqtt_version=version, state_dir=str(workdir),
                               client_id=client_id, **{"selfmetrics_interval_s": 2.0, **overrides},
                               **store_cfg.model_dump())
    store = open_store(store_cfg)
    from gateway.app import build_with_store

    eg = EmbeddedGateway(build_with_store(settings, store), store, store_cfg)
    eg.gw.start()
    try:
        yield eg
    finally:
        eg.stop()
        store.close()


@contextlib.contextmanager
def start_alertmanager() -> Iterator[str | None]:
    """A real Alertmanager (through the harness) for the demo's notifications, if one is installed."""
    try:
        am = Alertmanager()
    except ServerMissing:
        yield None
        return
    with am:
        yield am.url


def operator_view(gw: Gateway, c: dict[str, float], am_url: str | None, rows: int = 8) -> Group:
    """What an operator would see: the active alarms, worst first, and the notifications sent."""
    stage: Any = getattr(gw.on_outcome, "stage", gw.on_outcome)
    active = stage.active() if stage is not None else []
    rank = {"critical": 0, "warning": 1, "info": 2}
    active.sort(key=lambda a: (rank.get(a.severity, 3), a.raised_at))
    notes = (f"notifications to Alertmanager {am_url}: sent={int(c.get('notify_sent', 0))} "
             f"queued={int(c.get('notify_queued', 0))} dropped={int(c.get('notify_dropped', 0))}"
             if am_url else "notifications: off (install prometheus-alertmanager to see them sent)")
    t = Table(title=f"active alarms: {len(active)} (worst first)", title_justify="left")
    for col in ("pole", "district", "kind", "severity", "since", "acknowledged"):
        t.add_column(col)
    for a in active[:rows]:
        t.add_row(a.pole, a.district, a.kind, a.severity, time.strftime("%m-%d %H:%M", time.gmtime(a.raised_at / 1000)),
                  a.acked_by or "no")
    if len(active) > rows:
        t.add_row(f"... {len(active) - rows} more", "", "", "", "", "")
    return Group(Text(notes, no_wrap=True, overflow="ignore"), t)


@quiet_logs("lampwatch", "amqtt", "transitions")
def run_demo(*, poles: int = 200, duration: float | None = None, seed: int = 42, speed: float = 60.0,
             hostile_pct: float = 1.0, fault_rate: float = 3.0, broker: str = "auto",
             workdir: Path | None = None, console: Console | None = None) -> DemoResult:
    """Run the demo; ``duration`` None runs until Ctrl-C. One tick per real second = ``speed`` s of
    simulated time, starting one simulated day ago so device times stay in the gateway's window."""
    console = console or Console()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="lampwatch-demo-"))
    step_ms = int(1000 * speed)
    now_ms = int(time.time() * 1000)
    # a time-boxed run ends at the present; an open-ended one starts a day back and, once it
    # reaches the present, waits for real time (device clocks may never run ahead of the gateway's)
    start_ms = now_ms - (int(duration * step_ms) if duration else DAY_MS)
    city = City(CityConfig(seed=seed, poles=poles, districts=max(1, min(6, poles // 10))))
    faults = random_faults(city, seed, start_ms, now_ms, rate=fault_rate,
                           kinds=("leakage", "tilt_lean", "knockdown", "flood", "overheat", "door_forced",
                                  "lamp_failure", "voltage_sag", "voltage_surge"))
    # and, so every demo shows the safety path, a leak and a knocked-down pole a third of the way in
    t_fault = start_ms + (now_ms - start_ms) // 3
    t_end = now_ms + 2 * step_ms  # the leak's ramp completes within the run
    faults += [Fault.make("leakage", city.poles[0].pole_id, t_fault, t_end),
               Fault.make("knockdown", city.poles[-1].pole_id, t_fault, t_end)]
    stream = TelemetryStream(city, SignalModel(city, seed), faults, start_ms=start_ms, step_ms=step_ms,
                             seed=seed)
    rng = np.random.default_rng(seed)
    published = hostile_sent = unroutable = replayed = 0
    kinds_sent: dict[str, int] = {}
    # env vars may point the demo at an InfluxDB
    with start_broker(broker) as (host, port, version, broker_desc), start_alertmanager() as am_url, \
            embedded_gateway(host, port, version, workdir, alertmanager_url=am_url) as egw:
        gw, store, store_cfg = egw.gw, egw.store, egw.store_cfg
        pub = Publisher(host, port, "lampwatch-demo-sim", mqtt_version=version).connect()
        for topic, payload in birth_messages(stream, start_ms):
            pub.publish(topic, payload, retain=True)
        t0 = time.monotonic()
        next_tick = t0

        def sim_ms() -> int:
            return start_ms + stream.ticks_done * step_ms

        def view() -> Group:
            c = gw.counters()
            el = max(1e-9, time.monotonic() - t0)
            t = Table(title=f"lampwatch demo: {poles} poles\nbroker {broker_desc}\nstore "
                            f"{describe(store_cfg)}", title_justify="left")
            for col in ("time", "sim clock", "sent", "msg/s", "stored", "rejected", "dups", "alerts",
                        "spool"):
                t.add_column(col, justify="right")
            sim_t = time.strftime("%H:%M", time.gmtime(sim_ms() / 1000))
            t.add_row(f"{el:.0f} s", sim_t, str(published), f"{published / el:.0f}",
                      str(int(c.get("samples_accepted", 0))), str(int(c.get("samples_rejected", 0))),
                      str(int(c.get("duplicates", 0))), str(int(c.get("alarms_raised", 0))),
                      str(int(c.get("spool_points", 0))))
            return Group(t, operator_view(gw, c, am_url))

        try:
            with Live(view(), console=console, refresh_per_second=4, transient=False) as live:
                while duration is None or time.monotonic() - t0 < duration:
                    if sim_ms() > time.time() * 1000:
                        time.sleep(0.2)
                        live.update(view())
                        continue
                    t_sim = sim_ms()
                    sent = stream.tick()
                    with held_interrupts():  # a message is never published without being counted
                        for topic, payload in sent:
                            pub.publish(topic, payload)
                            published += 1
                        n_hostile = int(rng.binomial(poles, hostile_pct / 100.0))
                        for topic, payload, kind in hostile_messages(rng, n_hostile, city, now_ms=t_sim,
                                                                     clock_ms=int(time.time() * 1000),
                                                                     kinds=REFUSED_KINDS,
                                                                     first=hostile_sent + unroutable):
                            pub.publish(topic, payload)
                            kinds_sent[kind] = kinds_sent.get(kind, 0) + 1
                            if routed_to_gateway(topic):
                                hostile_sent += 1
                            else:
                                unroutable += 1
                        # true replays (the same bytes again, as a flaky link re-sends): dropped as duplicates
                        for i in rng.choice(len(sent), size=min(len(sent), n_hostile), replace=False):
                            pub.publish(*sent[int(i)])
                            replayed += 1
                    live.update(view())
                    next_tick += 1.0
                    time.sleep(max(0.0, next_tick - time.monotonic()))
                pub.flush(timeout_s=120)
                deadline = time.monotonic() + 120
                while gw.counters().get("acked", 0) < pub.sent - unroutable and time.monotonic() < deadline:
                    live.update(view())
                    time.sleep(0.1)
                live.update(view())
        except KeyboardInterrupt:
            console.print("interrupted: flushing what was published…")
            with contextlib.suppress(BrokerError):
                pub.flush(timeout_s=30)
            deadline = time.monotonic() + 30
            while gw.counters().get("acked", 0) < pub.sent - unroutable and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            console.print()
            pub.close()
            egw.stop()
        c = gw.counters()
        stored = store.count("telemetry")
        alerts = int(c.get("alarms_raised", 0))
    # replays are not new samples: they are not counted as published, and must not be stored again
    rejected = int(c.get("samples_rejected", 0))
    return DemoResult(published + hostile_sent, stored, rejected, alerts, int(c.get("duplicates", 0)),
                      broker_desc, describe(store_cfg), hostile_sent, replayed, unroutable, kinds_sent)
