"""The edge agent: wiring, command handling and status. One reading's way out::

    sampler thread   (edge.loop) EdgeAgent.tick -> Sampler.step (drivers, safety check) ->
                     Outbox.append (durable), then EdgeLoop.wake (a crossing is published at once)
    network thread   (edge.loop) MqttLink.step (connect, keepalive, backoff) -> Forwarder.pump
                     (outbox -> publish window) -> MqttLink.publish; PUBACK -> EdgeAgent.on_published
                     -> Forwarder.settle (outbox ack)
    commands         cmd topic -> EdgeAgent.on_message -> edge.commands.handle -> CommandAck on cmd/ack
    status           retained birth / online on connect, Last Will "offline/will", "offline/shutdown"
                     published by the clean stop

Without ``loop=`` the agent makes an :class:`edge.loop.EdgeLoop` of its own (a real pole: the loop
with one agent); with one (the simulator's per-device mode) it runs on that shared loop. The code
that runs is the same.

Sequence numbers come from the outbox (persisted, monotonic across restarts); the boot id is new for
every process start and travels with the samples it produced.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence

from contract import topics
from contract.catalog import BY_NAME, CRITICAL
from edge import __version__
from edge.clock import Clock, SystemClock
from edge.commands import Result, handle
from edge.config import CommandSource, EdgeConfig, FileSource, ModbusSource, SimulatedSource
from edge.drivers import CommandDriver, Driver, FileDriver, Model, SimulatedDriver, ValueSource, plugin_driver
from edge.forwarder import Forwarder
from edge.link import LinkSettings, MqttLink
from edge.loop import EdgeLoop, Member
from edge.outbox import Outbox
from edge.safety import SafetyMonitor
from edge.sampler import Sampler
from edge.wire import status_payload

log = logging.getLogger("lampwatch.edge")


def build_drivers(cfg: EdgeConfig, model: Model | None = None) -> dict[str, Driver]:
    """metric -> driver, from the configuration (``model`` replaces the simulated drivers' model)."""
    made: list[Driver] = []
    for i, spec in enumerate(cfg.drivers):
        if isinstance(spec, SimulatedSource):
            names = spec.metrics if spec.metrics is not None else list(BY_NAME)
            seed = spec.seed if spec.seed is not None else zlib.crc32(f"{cfg.pole}/{i}".encode())
            made.append(SimulatedDriver(names, model, seed=seed))
        elif isinstance(spec, CommandSource):
            mp = {n: ValueSource(s.path, s.scale, s.offset) for n, s in spec.metrics.items()}
            made.append(CommandDriver(spec.argv, mp, timeout_s=spec.timeout_s))
        elif isinstance(spec, FileSource):
            made.append(FileDriver({n: ValueSource(s.path, s.scale, s.offset) for n, s in spec.metrics.items()}))
        elif isinstance(spec, ModbusSource):
            from edge.modbus import ModbusDriver  # pymodbus is imported only by poles that use it

            made.append(ModbusDriver(spec))
        else:  # plugins (edge.drivers.load_plugin): imported only when a pole uses them
            made.append(plugin_driver(spec))
    return {n: made[i] for n, i in cfg.assignment().items()}


class EdgeAgent:
    """One pole's agent. ``start()`` returns at once (the broker may be down: samples queue on disk).

    ``loop``: run on a shared :class:`edge.loop.EdgeLoop` (the agent then samples on the loop's clock)
    instead of a loop of its own."""

    def __init__(self, cfg: EdgeConfig, *, clock: Clock | None = None,
                 drivers: Mapping[str, Driver] | None = None, model: Model | None = None,
                 rng: random.Random | None = None, loop: EdgeLoop | None = None) -> None:
        if loop is not None and clock is not None and clock is not loop.clock:
            raise ValueError("an agent on a shared EdgeLoop samples on the loop's clock: pass no clock")
        self.cfg = cfg
        self._own_loop = loop is None
        self.loop = loop if loop is not None else EdgeLoop(clock or SystemClock(), name=f"edge-{cfg.pole}")
        self.clock: Clock = self.loop.clock
        self.boot_id = uuid.uuid4().hex
        self.pole, self.district = cfg.pole, cfg.district
        self.t_telemetry = topics.telemetry(cfg.district, cfg.pole)
        self.t_status = topics.status(cfg.district, cfg.pole)
        self.t_cmd = topics.cmd(cfg.district, cfg.pole)
        self.t_ack = topics.cmd_ack(cfg.district, cfg.pole)
        self.drivers = dict(drivers) if drivers is not None else build_drivers(cfg, model)
        self.sensors = tuple(n for n in cfg.sensors if n in self.drivers)
        self.safety = SafetyMonitor([n for n in CRITICAL if n in self.sensors],
                                    tilt_baseline=cfg.tilt_baseline_deg, overrides=cfg.thresholds)
        self.counts: Counter[str] = Counter()
        self.outbox: Outbox | None = None
        self.sampler: Sampler | None = None
        self.link: MqttLink | None = None
        self.forwarder: Forwarder | None = None
        self._member: Member | None = None
        self._other_mids: dict[int, str] = {}  # status / acks: mid -> what, for refusal logs
        self._born = False
        self._stop = threading.Event()
        self._stopped = False
        self._tick_lock = threading.Lock()  # held while the loop's sampler ticks this agent
        self._next_evict = 0.0
        self._started_mono = 0.0
        self._rng = rng or random.Random()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        self.outbox = Outbox(cfg.outbox_file, max_bytes=cfg.outbox_max_bytes, max_age_s=cfg.outbox_max_age_s,
                             sync=cfg.outbox_sync)
        if self.outbox.depth:
            log.info("outbox holds %d samples from before this start; they go first", self.outbox.depth)
        self.sampler = Sampler(self.sensors, self.drivers, {n: cfg.interval_of(n) for n in self.sensors},
                               safety=self.safety, safety_interval_s=cfg.safety_interval_s,
                               now=self.clock.time())
        pw = cfg.mqtt_password.get_secret_value() if cfg.mqtt_password is not None else None
        settings = LinkSettings(
            host=cfg.mqtt_host, port=cfg.mqtt_port, client_id=cfg.pole, keepalive_s=cfg.mqtt_keepalive_s,
            session_expiry_s=cfg.mqtt_session_expiry_s, username=cfg.mqtt_username, password=pw,
            tls=cfg.use_tls, tls_ca=str(cfg.mqtt_tls_ca) if cfg.mqtt_tls_ca else None,
            tls_cert=str(cfg.mqtt_tls_cert) if cfg.mqtt_tls_cert else None,
            tls_key=str(cfg.mqtt_tls_key) if cfg.mqtt_tls_key else None, connect_timeout_s=cfg.connect_timeout_s,
            backoff_min_s=cfg.backoff_min_s, backoff_max_s=cfg.backoff_max_s,
            max_inflight=cfg.inflight_window + 16, brokers=cfg.broker_list, mqtt_version=cfg.mqtt_version)
        self.link = MqttLink(settings, self, rng=self._rng)
        self.forwarder = Forwarder(self.outbox, self.link.publish, pole=self.pole, boot_id=self.boot_id,
                                   topic=self.t_telemetry, window=cfg.inflight_window,
                                   max_samples=cfg.max_message_samples, max_message_bytes=cfg.max_message_bytes)
        self._started_mono = time.monotonic()
        if self._own_loop:
            self.loop.start()
        self._member = self.loop.add(self.pole, self.link, pump=self.forwarder.pump, tick=self.tick)
        log.info("edge agent %s started (boot %s, %d sensors, outbox %s)", self.pole, self.boot_id,
                 len(self.sensors), cfg.outbox_file)

    def stop(self, flush_timeout_s: float = 5.0, status_timeout_s: float = 3.0) -> None:
        """Stop sampling, let the outbox drain (while connected, up to ``flush_timeout_s``), publish the
        retained offline status (reason "shutdown") and wait up to ``status_timeout_s`` for its ack,
        disconnect cleanly (no Last Will) and close the outbox. Idempotent.

        The status has a budget of its own: a backlog that used the whole flush budget must not leave the
        status one second on a loaded machine (a clean shutdown has no Last Will, so a lost status leaves
        the pole's retained "online" standing until the gateway's silence rule says otherwise)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        with self._tick_lock:  # the loop's sampler is done with us once we hold it
            pass
        if self.link is not None and self._member is not None:
            deadline = time.monotonic() + flush_timeout_s
            while time.monotonic() < deadline and self.link.connected and self.backlog() > 0:
                self.loop.wake(self._member)
                time.sleep(0.02)
            final = (self.t_status, self._status("offline", reason="shutdown"))
            self.loop.close(self._member, final, timeout_s=max(status_timeout_s, deadline - time.monotonic()))
        if self._own_loop:
            self.loop.stop()
        for d in {id(d): d for d in self.drivers.values()}.values():
            d.close()
        if self.outbox is not None:
            self.outbox.close()
        log.info("edge agent %s stopped: %s", self.pole, self.summary())

    def __enter__(self) -> EdgeAgent:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- observation (any thread) ----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    def backlog(self) -> int:
        return self.outbox.depth if self.outbox is not None else 0

    def wait_connected(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected:
                return True
            time.sleep(0.02)
        return self.connected

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait until every sample produced so far has been acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.backlog() == 0:
                return True
            if self._member is not None:
                self.loop.wake(self._member)
            time.sleep(0.02)
        return self.backlog() == 0

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.counts)
        if self.sampler is not None:
            out.update(self.sampler.counts)
        if self.link is not None:
            out.update(self.link.counts)
        if self.outbox is not None:
            out.update(backlog=self.outbox.depth, outbox_bytes=self.outbox.bytes,
                       evicted=self.outbox.evicted_session, evicted_total=self.outbox.evicted_total,
                       next_seq=self.outbox.next_seq)
        if self.forwarder is not None:
            out.update(self.forwarder.counts)
        out["inflight"] = self.forwarder.inflight if self.forwarder is not None else 0
        out["connected"] = int(self.connected)
        return out

    def summary(self) -> str:
        c = self.counters()
        keys = ("produced", "acked", "backlog", "evicted", "denied", "refused_publishes", "crossings", "connects",
                "disconnects")
        return " ".join(f"{k}={int(c.get(k, 0))}" for k in keys)

    # --- sampler thread --------------------------------------------------------------------------
    def tick(self, now: float) -> float | None:
        """One sampling tick at device time ``now`` (the loop's sampler thread): the next due device
        time, None once stopped. A failed tick (said and counted) is retried a second later."""
        with self._tick_lock:
            if self._stop.is_set() or self.sampler is None:
                return None
            ok = self._sample_once(now)
            due = self.sampler.next_due()
            return due if ok else max(due, now + 1.0)

    def _sample_once(self, now: float) -> bool:
        """One tick: sample what is due, store it, wake the link; False if it failed (said and counted)."""
        assert self.sampler is not None and self.outbox is not None
        try:
            tick = self.sampler.step(now)
            if tick is not None:
                self.outbox.append(int(now * 1000), tick.values, self.boot_id)
                self.counts["produced"] += 1
                if tick.crossings:
                    self.counts["fast_path"] += 1
                if self._member is not None:
                    self.loop.wake(self._member)
            if now >= self._next_evict:
                self._next_evict = now + 60.0
                if n := self.outbox.evict_expired(int(now * 1000)):
                    log.warning("outbox: evicted %d samples older than %.0f s", n, self.cfg.outbox_max_age_s)
        except Exception as exc:  # disk full, driver bug: keep sampling, say so
            self.counts["sample_errors"] += 1
            log.error("sampling failed: %s", exc)
            return False
        return True

    def _wake_sampler(self) -> None:
        if self._member is not None:
            self.loop.resample(self._member)

    # --- network thread (LinkHandler) -----------------------------------------------------------------
    def will(self) -> tuple[str, bytes]:
        return self.t_status, self._status("offline", reason="will")

    def on_connected(self, session_present: bool) -> None:
        assert self.link is not None
        self.link.subscribe(self.t_cmd, qos=1)
        state = "online" if self._born else "birth"
        self._born = True
        mid = self.link.publish(self.t_status, self._status(state), qos=1, retain=True)
        if mid is not None:
            self._other_mids[mid] = f"status {state}"

    def on_disconnected(self, reason: str) -> None:
        pass  # in-flight messages stay with paho, which re-sends them after the reconnect

    def on_published(self, mid: int, reason_code: int, reason: str) -> None:
        assert self.forwarder is not None
        if reason_code >= 0x80:
            self.counts["refused_publishes"] += 1
            self.counts[f"refused_rc_{reason_code}"] += 1
        if self.forwarder.settle(mid, reason_code, reason):
            return
        what = self._other_mids.pop(mid, None)
        if what is not None and reason_code >= 0x80:
            log.error("broker refused %s on pole %s: %s (reason code %d)", what, self.pole, reason, reason_code)

    def on_message(self, topic: str, payload: bytes) -> None:
        assert self.link is not None
        if topic != self.t_cmd:
            return
        ack = handle(payload, self, pole=self.pole, now_ms=int(self.clock.time() * 1000))
        self.counts["commands_ok" if ack.ok else "commands_rejected"] += 1
        if not ack.ok:
            log.warning("command %r rejected: %s", ack.id, ack.reason)
        mid = self.link.publish(self.t_ack, ack.model_dump_json(exclude_none=True).encode(), qos=1)
        if mid is not None:
            self._other_mids[mid] = "command ack"

    def _status(self, state: str, reason: str | None = None) -> bytes:
        interval = self.sampler.interval() if self.sampler is not None else self.cfg.report_interval_s
        return status_payload(pole=self.pole, district=self.district, state=state,
                              ts_ms=int(self.clock.time() * 1000), boot=self.boot_id, agent_version=__version__,
                              firmware=self.cfg.firmware, sensors=self.sensors, location=self.cfg.location,
                              interval_s=interval, reason=reason, rated_power_w=self.cfg.rated_power_w,
                              nominal_voltage_v=self.cfg.nominal_voltage_v,
                              tilt_baseline_deg=self.cfg.tilt_baseline_deg)

    # --- commands (network thread; edge.commands.CommandTarget) ----------------------------------
    def set_interval(self, interval_s: float, metric: str | None) -> Result:
        assert self.sampler is not None and self.link is not None
        self.sampler.set_interval(interval_s, metric, self.clock.time())
        self._wake_sampler()
        if metric is None:  # the reporting interval changed: say so in the retained presence
            mid = self.link.publish(self.t_status, self._status("online"), qos=1, retain=True)
            if mid is not None:
                self._other_mids[mid] = "status online"
        return {"interval_s": interval_s, "metric": metric or "*"}

    def sample_now(self) -> Result:
        assert self.sampler is not None
        self.sampler.request_now()
        self._wake_sampler()
        return {"queued": True}

    def set_thresholds(self, thresholds: dict[str, float]) -> Result:
        for name in thresholds:  # validate all before applying any
            if name not in self.safety.rules:
                raise ValueError(f"{name} is not checked on this pole (checked: {', '.join(self.safety.rules)})")
            m = BY_NAME[name]
            if not m.lo <= thresholds[name] <= m.hi:
                raise ValueError(f"{name} threshold {thresholds[name]} outside [{m.lo}, {m.hi}]")
        for name, value in thresholds.items():
            self.safety.set_threshold(name, value)
        self._wake_sampler()
        return {k: float(v) for k, v in thresholds.items()}

    def ping(self) -> Result:
        return {"uptime_s": round(time.monotonic() - self._started_mono, 3), "backlog": float(self.backlog()),
                "boot": self.boot_id, "version": __version__}


def agents_summary(agents: Sequence[EdgeAgent]) -> dict[str, float]:
    total: Counter[str] = Counter()
    for a in agents:
        total.update({k: v for k, v in a.counters().items()})
    return dict(total)
